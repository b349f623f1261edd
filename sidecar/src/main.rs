//! `oidc-edge`: the sidecar for proxies that cannot load the wasm filter
//! (nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`), and
//! the operator's command line. Same core, same config schema, same cookies
//! as the filter.

mod app;
mod idp;
mod log;
mod random;
mod render;
mod server;
mod settings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use oidc_edge::config::{IdpCalls, SecretSource};
use oidc_edge::provider::Schedule;
use oidc_edge::Config;
use settings::SidecarConfig;

const USAGE: &str = "\
usage: oidc-edge serve  --config FILE   run the sidecar (YAML or JSON config)
       oidc-edge check  --config FILE   validate a config and exit
       oidc-edge render nginx|caddy|traefik --config FILE --out DIR [--sidecar HOST:PORT]
                                        write the proxy's snippets for this config
       oidc-edge secret                 print a new cookie secret (base64 of 32 random bytes)

The config file may also come from OIDC_EDGE_CONFIG.";

/// Secrets from the environment and from files; relative file paths are
/// relative to the config file (as with SOPS- or Vault-rendered secrets
/// beside it).
struct ProcessSecrets {
    base: PathBuf,
}

impl SecretSource for ProcessSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &str) -> Result<String, String> {
        let p = self.base.join(path);
        std::fs::read_to_string(&p).map_err(|e| e.to_string())
    }
}

/// Reads a YAML or JSON config: both go through the core's one parser, so
/// every error names its field the same way for the filter and the sidecar.
fn load_config(path: &Path) -> Result<(Config, SidecarConfig), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let secrets = ProcessSecrets { base: path.parent().map(Path::to_path_buf).unwrap_or_default() };
    let parsed = if is_json {
        Config::parse_with::<SidecarConfig>(&text, &secrets, IdpCalls::Direct)
    } else {
        Config::parse_yaml_with::<SidecarConfig>(&text, &secrets, IdpCalls::Direct)
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

/// The value of `--name VALUE` or `--name=VALUE`.
fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

fn config_path(args: &[String]) -> Option<PathBuf> {
    option(args, "--config").or_else(|| option(args, "-c")).map(PathBuf::from).or_else(|| std::env::var_os("OIDC_EDGE_CONFIG").map(PathBuf::from))
}

fn render_command(args: &[String], config: &Config, settings: &SidecarConfig) -> ExitCode {
    let proxy = args.get(1).map(String::as_str).unwrap_or("");
    let Some(out) = option(args, "--out") else {
        eprintln!("render: pass --out DIR\n{USAGE}");
        return ExitCode::from(2);
    };
    let sidecar = render::sidecar_address(settings, option(args, "--sidecar"));
    let files = match proxy {
        "nginx" => render::nginx(config, settings, &sidecar),
        "caddy" => render::caddy(config, settings, &sidecar),
        "traefik" => render::traefik(config, settings, &sidecar),
        other => {
            eprintln!("render: {other:?} is not a proxy this renders for; use nginx, caddy or traefik\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let files = match files {
        Ok(f) => f,
        Err(e) => {
            eprintln!("render: {e}");
            return ExitCode::from(1);
        }
    };
    let dir = Path::new(out);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("render: cannot create {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    for (name, text) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("render: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    match command {
        "secret" => {
            let mut bytes = [0u8; 32];
            oidc_edge::SecureRandom::fill(&mut random::OsRandom, &mut bytes);
            use base64::Engine as _;
            println!("{}", base64::engine::general_purpose::STANDARD.encode(bytes));
            return ExitCode::SUCCESS;
        }
        "serve" | "check" | "render" => {}
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(path) = config_path(&args) else {
        eprintln!("no config file: pass --config FILE or set OIDC_EDGE_CONFIG\n{USAGE}");
        return ExitCode::from(2);
    };
    let (config, settings) = match load_config(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if command == "render" {
        return render_command(&args, &config, &settings);
    }
    if command == "check" {
        println!(
            "{}: valid ({} routes; listens on {}; issuer {})",
            path.display(),
            config.routes.iter().count(),
            settings.listen,
            config.provider.issuer
        );
        for warning in &config.warnings {
            println!("warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    log::set_level(settings.log_level);
    for warning in &config.warnings {
        log::event(log::Level::Warn, "configuration warning", &[("field", warning.field.as_str().into()), ("detail", warning.message.as_str().into())]);
    }
    // One thread: a decision is a map lookup and a few header copies, and
    // one core answers tens of thousands per second with a small footprint.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config, settings))
}

async fn serve(config: Config, settings: SidecarConfig) -> ExitCode {
    let listen = settings.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            log::event(log::Level::Warn, "cannot listen", &[
                ("address", listen.to_string().into()),
                ("reason", e.to_string().into()),
                ("hint", "change sidecar.listen or stop what uses the port".into()),
            ]);
            return ExitCode::from(1);
        }
    };
    if settings.proxy_token.is_none() {
        log::event(log::Level::Info, "sidecar.proxy_token is not set", &[(
            "hint",
            "decisions are then answered to any trusted peer's request: fine with the rendered snippets, which never \
             route them to browsers; set it to refuse decisions a hand-written route might expose"
                .into(),
        )]);
    }
    let app = Arc::new(app::App::new(config, settings));
    tokio::spawn(keep_provider_loaded(Arc::clone(&app)));
    log::event(log::Level::Info, "listening", &[("address", listen.to_string().into())]);
    tokio::select! {
        () = server::accept_loop(listener, app) => ExitCode::from(1),
        () = shutdown_signal() => {
            log::event(log::Level::Info, "stopping", &[]);
            ExitCode::SUCCESS
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Loads discovery and JWKS at start and every hour; while the IdP is
/// unreachable, retries after 2, 4, 8, 10, 10 … seconds, sooner (at most
/// once a second) when a request needs the metadata.
async fn keep_provider_loaded(app: Arc<app::App>) {
    let mut schedule = Schedule::default();
    loop {
        if schedule.due(app.loaded_at(), app::now()) {
            schedule = app.load_provider(schedule).await;
        }
        let wait = Duration::from_secs(schedule.next_attempt.saturating_sub(app::now()).max(1));
        let loaded = app.ready();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = app.wake_loader.notified(), if !loaded => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                schedule.next_attempt = 0;
            }
        }
    }
}
