//! Embeds the git commit the binary is built from, for `oidc-edge --version`:
//! `OIDC_EDGE_GIT_COMMIT` when set (a packager building from a tarball),
//! else `git rev-parse --short HEAD`, else "unknown" (no git, or no .git).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OIDC_EDGE_GIT_COMMIT");
    let commit = std::env::var("OIDC_EDGE_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| git(&["rev-parse", "--short", "HEAD"]));
    // Build again when HEAD moves: HEAD itself, the branch it points to, and
    // packed-refs. Only paths that exist: cargo rebuilds every time for a
    // missing one.
    if commit.is_some() {
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(branch);
        }
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &name]) {
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
    println!("cargo:rustc-env=OIDC_EDGE_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
