//! `oidc-edge doctor`: the live checks of a configuration against its
//! provider, one line each with what is wrong and the fix, so that the
//! common failures (an issuer off by a slash, an unregistered redirect URI,
//! a wrong client secret, a skewed clock, a cookie too big) show before a
//! user meets them.

mod checks;
mod local;

use std::path::Path;
use std::process::ExitCode;

use oidc_edge::config::SecretSource;
use oidc_edge::Config;
use serde_json::{json, Value};

use crate::idp::IdpClient;
use crate::settings::SidecarConfig;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but worth a look; does not fail the run.
    Warn,
    /// Broken: the exit status is 1.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, status: Status::Pass, detail: detail.into(), fix: None }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// What the command line adds to the configuration.
pub struct Options {
    /// Hosts people reach the gate at (`https://app.example.com`), beyond
    /// those the routes name.
    pub hosts: Vec<String>,
    /// Groups of the largest user, for the cookie-size estimate.
    pub groups: usize,
    /// A directory of rendered snippets to compare with the configuration.
    pub snippets: Option<std::path::PathBuf>,
    /// Where the proxy reaches the sidecar, as given to `render`.
    pub sidecar: Option<String>,
    /// The report as JSON.
    pub json: bool,
}

/// Runs every check and prints the report; 1 when any check failed.
pub fn run(
    path: &Path,
    loaded: Result<(Config, SidecarConfig), String>,
    raw: Option<Value>,
    secrets: &dyn SecretSource,
    opts: &Options,
) -> ExitCode {
    let mut report = Vec::new();
    match loaded {
        Err(e) => report.push(Check::fail("configuration", e, "fix the fields named above, then run doctor again")),
        Ok((config, settings)) => {
            report.push(Check::pass("configuration", format!("{} is valid ({} routes)", path.display(), config.routes.iter().count())));
            report.extend(local::checks(&config, &settings, raw.as_ref(), secrets, opts));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(rt) => {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    let client = IdpClient::new();
                    report.extend(rt.block_on(checks::live(&client, &config, opts)));
                }
                Err(e) => report.push(Check::fail("runtime", e.to_string(), "the process could not start its runtime")),
            }
            if let Some(dir) = &opts.snippets {
                report.extend(local::snippets(&config, &settings, raw.as_ref(), dir, opts.sidecar.as_deref()));
            }
        }
    }
    print(&report, opts.json);
    if report.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print(report: &[Check], as_json: bool) {
    if as_json {
        let checks: Vec<Value> = report
            .iter()
            .map(|c| {
                let status = match c.status {
                    Status::Pass => "pass",
                    Status::Warn => "warn",
                    Status::Fail => "fail",
                };
                json!({"check": c.name, "status": status, "detail": c.detail, "fix": c.fix})
            })
            .collect();
        let ok = report.iter().all(|c| c.status != Status::Fail);
        println!("{}", json!({"ok": ok, "checks": checks}));
        return;
    }
    // Details quote what the provider sent; its control characters must not
    // reach the terminal.
    let shown = |text: &str| text.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect::<String>();
    for c in report {
        let mark = match c.status {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        println!("{mark} {}: {}", c.name, shown(&c.detail));
        if let Some(fix) = &c.fix {
            println!("    fix: {}", shown(fix));
        }
    }
    let failed = report.iter().filter(|c| c.status == Status::Fail).count();
    let warned = report.iter().filter(|c| c.status == Status::Warn).count();
    println!("{} checks: {failed} failed, {warned} to look at", report.len());
}

/// How the configured issuer differs from the provider's, in words.
pub fn issuer_difference(configured: &str, discovered: &str) -> String {
    let strip = |s: &str| s.trim_end_matches('/').to_owned();
    let scheme = |s: &str| s.split_once("://").map(|(a, _)| a.to_owned()).unwrap_or_default();
    let host = |s: &str| s.split_once("://").map(|(_, r)| r.split('/').next().unwrap_or("").to_owned()).unwrap_or_default();
    let mut parts = Vec::new();
    if strip(configured) == strip(discovered) {
        parts.push(if configured.ends_with('/') {
            "the configured one ends with '/', the provider's does not".to_owned()
        } else {
            "the provider's ends with '/', the configured one does not".to_owned()
        });
    }
    if scheme(configured) != scheme(discovered) {
        parts.push(format!("the scheme differs ({} here, {} at the provider)", scheme(configured), scheme(discovered)));
    }
    if host(configured) != host(discovered) {
        let how = if host(configured).eq_ignore_ascii_case(&host(discovered)) { " (in letter case only)" } else { "" };
        parts.push(format!("the host differs{how} ({} here, {} at the provider)", host(configured), host(discovered)));
    }
    if parts.is_empty() {
        parts.push("the path differs".to_owned());
    }
    parts.join("; ")
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace().skip(1);
    let day: u64 = it.next()?.parse().ok()?;
    let name = it.next()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"].iter().position(|m| *m == name)?;
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month < 2 { (year - 1, month as i64 + 13) } else { (year, month as i64 + 1) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo - 3) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok().map(|d| d * 86400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_differences_are_named() {
        let d = issuer_difference("https://id.example.com/", "https://id.example.com");
        assert!(d.contains("ends with '/'"), "{d}");
        let d = issuer_difference("http://id.example.com", "https://id.example.com");
        assert!(d.contains("scheme differs (http here, https at the provider)"), "{d}");
        let d = issuer_difference("https://ID.example.com", "https://id.example.com");
        assert!(d.contains("letter case"), "{d}");
        let d = issuer_difference("https://id.example.com/a", "https://id.example.com/b");
        assert_eq!(d, "the path differs");
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Mon, 30 Nov 2026 03:10:00 GMT"), Some(1_796_008_200));
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
