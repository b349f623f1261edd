//! `oidc-edge`: the sidecar for proxies that cannot load the wasm filter
//! (nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`), and
//! the operator's command line. Same core, same config schema, same cookies
//! as the filter.

mod app;
mod doctor;
mod health;
mod idp;
mod log;
mod metrics;
mod migrate;
mod random;
mod render;
mod render_filter;
mod server;
mod settings;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use oidc_edge::config::{IdpCalls, SecretSource};
use oidc_edge::provider::Schedule;
use oidc_edge::Config;
use settings::SidecarConfig;

/// The version and the commit it was built from (build.rs; "unknown" when
/// built outside a git checkout).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("OIDC_EDGE_GIT_COMMIT"), ")");

/// Single sign-on at the proxy: the sidecar for nginx auth_request, Caddy
/// forward_auth and Traefik forwardAuth, and the operator's command line.
#[derive(Debug, Parser)]
#[command(name = "oidc-edge", version = VERSION, propagate_version = true)]
#[command(after_help = "Without a command, `serve` runs.")]
struct Cli {
    /// The configuration file: YAML, or JSON when it ends in .json.
    #[arg(short, long, value_name = "FILE", env = "OIDC_EDGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Serve,
    /// Validate the configuration, print a summary and its warnings, and exit.
    Check,
    /// Write the proxy's snippets for this configuration: the sidecar's
    /// (nginx, caddy, traefik) or the filter's (envoy, nginx-wasm).
    Render {
        /// The proxy to write snippets for.
        proxy: Proxy,
        /// The directory to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Where the proxy reaches the sidecar [default: sidecar.listen, with 127.0.0.1 for an unspecified address].
        #[arg(long, value_name = "HOST:PORT")]
        sidecar: Option<String>,
        /// envoy, nginx-wasm: the filter's .wasm as the proxy reads it.
        #[arg(long, value_name = "PATH", default_value = render_filter::INSTALLED_WASM)]
        wasm: String,
        /// envoy: the listener of the complete envoy.yaml.
        #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:8080")]
        listen: String,
        /// envoy: the service behind the complete envoy.yaml.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
        upstream: String,
        /// envoy: Envoy's admin interface in envoy.yaml [default: none].
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// nginx-wasm: the DNS server that resolves the provider's name (Docker: 127.0.0.11).
        #[arg(long, value_name = "IP", default_value = "127.0.0.53")]
        resolver: String,
        /// envoy, nginx-wasm: the CAs the provider's certificate must chain to (a private CA's PEM file).
        #[arg(long, value_name = "PEM", default_value = render_filter::CA_BUNDLE)]
        ca_file: String,
    },
    /// Check the configuration live against its provider: discovery, issuer,
    /// keys, clock, client secret, redirect URIs, groups, cookies, trusted
    /// proxies; one line each with the fix, exit 1 on any failure.
    Doctor {
        /// A URL people reach the gate at, e.g. https://app.example.com (repeatable) [default: the routes' exact hosts].
        #[arg(long = "host", value_name = "URL")]
        hosts: Vec<String>,
        /// Groups of your largest user, for the cookie-size check.
        #[arg(long, value_name = "N", default_value_t = 30)]
        groups: usize,
        /// A directory `oidc-edge render` wrote: check that it still matches the configuration.
        #[arg(long, value_name = "DIR")]
        snippets: Option<PathBuf>,
        /// The --sidecar the snippets were rendered with.
        #[arg(long, value_name = "HOST:PORT")]
        sidecar: Option<String>,
        /// The report as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Write one oidc-edge configuration from the oauth2-proxy containers it
    /// replaces (compose files with OAUTH2_PROXY_* variables or flags, their
    /// env files, oauth2-proxy .cfg/.toml files), with a report of what did
    /// not carry over.
    Migrate {
        /// What to migrate from.
        from: MigrateFrom,
        /// docker-compose files and oauth2-proxy config files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR", default_value = "oidc-edge-migrated")]
        out: PathBuf,
        /// The proxy to write snippets for.
        #[arg(long, value_name = "PROXY", default_value = "caddy")]
        proxy: Proxy,
    },
    /// Exit 0 when a running sidecar's /healthz answers 200 (container health checks).
    Health {
        /// The sidecar's address [default: sidecar.listen from the configuration].
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
    },
    /// Print a new cookie secret (base64 of 32 random bytes).
    Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MigrateFrom {
    /// oauth2-proxy (one container per service, or a shared one).
    #[value(name = "oauth2-proxy")]
    Oauth2Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proxy {
    Nginx,
    Caddy,
    Traefik,
    /// Envoy with the filter (no sidecar).
    Envoy,
    /// nginx with ngx_wasm_module and the filter (no sidecar).
    NginxWasm,
}

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

/// The configuration file as a value, before any check (YAML or JSON).
fn load_raw(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: not valid YAML: {e}", path.display()))
}

/// The sidecar's snippets: the configuration loads with its secrets, as
/// `serve` would (a proxy token is written into them).
fn render_sidecar((config, settings): &(Config, SidecarConfig), proxy: Proxy, sidecar: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let sidecar = render::sidecar_address(settings, sidecar);
    match proxy {
        Proxy::Nginx => render::nginx(config, settings, &sidecar),
        Proxy::Caddy => render::caddy(config, settings, &sidecar),
        _ => render::traefik(config, settings, &sidecar),
    }
}

/// The filter's part: names of secrets only, so their values need not be
/// at hand where the proxy's configuration is built.
fn render_filter_files(path: &Path, proxy: Proxy, filter: &render_filter::FilterOptions) -> Result<Vec<(String, String)>, String> {
    let raw = load_raw(path)?;
    let files = match proxy {
        Proxy::Envoy => render_filter::envoy(&raw, filter),
        _ => render_filter::nginx_wasm(&raw, filter),
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.pointer("/provider/callouts").and_then(serde_json::Value::as_object).is_none_or(serde_json::Map::is_empty) {
        eprintln!(
            "render: only the issuer's host is mapped for the filter's calls; if the provider's token, JWKS or userinfo endpoints \
             live on other hosts, list them in provider.callouts (`oidc-edge doctor` checks)"
        );
    }
    Ok(files)
}

/// Writes `files` under `out` (each name may hold a subdirectory) and
/// prints each path; `command` names the failure.
fn write_files(command: &str, out: &Path, files: Result<Vec<(String, String)>, String>) -> ExitCode {
    let files = match files {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{command}: {e}");
            return ExitCode::from(1);
        }
    };
    for (name, text) in files {
        let path = out.join(name);
        let dir = path.parent().unwrap_or(out);
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("{command}: cannot create {}: {e}", dir.display());
            return ExitCode::from(1);
        }
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("{command}: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a usage error
            // names the argument and exits 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Secret => secret_command(),
        Command::Check => with_config(cli.config, check_command),
        Command::Render {
            proxy: proxy @ (Proxy::Envoy | Proxy::NginxWasm),
            out,
            wasm,
            listen,
            upstream,
            admin,
            resolver,
            ca_file,
            ..
        } => {
            let Some(path) = cli.config else {
                eprintln!("no config file: pass --config FILE or set OIDC_EDGE_CONFIG (see oidc-edge --help)");
                return ExitCode::from(2);
            };
            let filter = render_filter::FilterOptions { wasm, listen, upstream, admin, resolver, ca_file };
            write_files("render", &out, render_filter_files(&path, proxy, &filter))
        }
        Command::Render { proxy, out, sidecar, .. } => {
            with_config(cli.config, |_, config| write_files("render", &out, render_sidecar(&config, proxy, sidecar.as_deref())))
        }
        Command::Doctor { hosts, groups, snippets, sidecar, json } => {
            let Some(path) = cli.config else {
                eprintln!("no config file: pass --config FILE or set OIDC_EDGE_CONFIG (see oidc-edge --help)");
                return ExitCode::from(2);
            };
            let secrets = ProcessSecrets { base: path.parent().map(Path::to_path_buf).unwrap_or_default() };
            let opts = doctor::Options { hosts, groups, snippets, sidecar, json };
            doctor::run(&path, load_config(&path), load_raw(&path).ok(), &secrets, &opts)
        }
        Command::Migrate { from: MigrateFrom::Oauth2Proxy, files, out, proxy } => migrate::run(&files, &out, proxy),
        Command::Health { address: Some(address) } => health::run(&address),
        Command::Health { address: None } => with_config(cli.config, |_, (_, settings)| health::run(&render::sidecar_address(&settings, None))),
        Command::Serve => with_config(cli.config, |_, config| serve_command(config)),
    }
}

/// Runs `f` with the loaded configuration: 2 without a config file, 1 when
/// it does not load (the error names the file and the field).
fn with_config(path: Option<PathBuf>, f: impl FnOnce(&Path, (Config, SidecarConfig)) -> ExitCode) -> ExitCode {
    let Some(path) = path else {
        eprintln!("no config file: pass --config FILE or set OIDC_EDGE_CONFIG (see oidc-edge --help)");
        return ExitCode::from(2);
    };
    match load_config(&path) {
        Ok(loaded) => f(&path, loaded),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn secret_command() -> ExitCode {
    let mut bytes = [0u8; 32];
    oidc_edge::SecureRandom::fill(&mut random::OsRandom, &mut bytes);
    use base64::Engine as _;
    println!("{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    ExitCode::SUCCESS
}

fn check_command(path: &Path, (config, settings): (Config, SidecarConfig)) -> ExitCode {
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
    ExitCode::SUCCESS
}

fn serve_command((config, settings): (Config, SidecarConfig)) -> ExitCode {
    log::set_level(settings.log_level);
    // rediss:// connections take the process's default TLS provider; the
    // provider client (idp.rs) names ring itself. Fails only if already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    for warning in &config.warnings {
        log::event(
            log::Level::Warn,
            "configuration warning",
            &[("field", warning.field.as_str().into()), ("detail", warning.message.as_str().into())],
        );
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
            log::event(
                log::Level::Warn,
                "cannot listen",
                &[
                    ("address", listen.to_string().into()),
                    ("reason", e.to_string().into()),
                    ("hint", "change sidecar.listen or stop what uses the port".into()),
                ],
            );
            return ExitCode::from(1);
        }
    };
    if settings.proxy_token.is_none() {
        log::event(
            log::Level::Info,
            "sidecar.proxy_token is not set",
            &[(
                "hint",
                "decisions are then answered to any trusted peer's request: fine with the rendered snippets, which never \
             route them to browsers; set it to refuse decisions a hand-written route might expose"
                    .into(),
            )],
        );
    }
    let redis = match &settings.store {
        settings::StoreConfig::Memory => None,
        settings::StoreConfig::Redis(redis) => match store::RedisStore::new(redis) {
            Ok(store) => {
                log::event(
                    log::Level::Info,
                    "shared store",
                    &[("url", redis.url.as_str().into()), ("key_prefix", redis.key_prefix.as_str().into())],
                );
                Some(store)
            }
            Err(e) => {
                log::event(log::Level::Warn, "cannot use the shared store", &[("reason", e.into())]);
                return ExitCode::from(1);
            }
        },
    };
    let fleet = redis.is_some();
    let app = Arc::new(app::App::new(config, settings, redis));
    tokio::spawn(keep_provider_loaded(Arc::clone(&app)));
    if fleet {
        tokio::spawn(follow_revocations(Arc::clone(&app)));
    }
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

/// Learns the revocations other instances publish (sign-outs), once a
/// second: within a few seconds every instance of a fleet refuses a
/// signed-out cookie. Also notices the store coming back.
async fn follow_revocations(app: Arc<app::App>) {
    let Some(redis) = app.redis.as_ref() else { return };
    // From the start of the stream: revocations made before this instance
    // started still apply (each until its session would have expired).
    let mut last_id = "0".to_owned();
    loop {
        match redis.revocations_after(&last_id).await {
            Some((revoked, next)) => {
                app.learn(&revoked);
                let caught_up = next == last_id;
                last_id = next;
                if !caught_up {
                    continue;
                }
            }
            None => {
                let _ = redis.ping().await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, Proxy};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_and_config_goes_anywhere() {
        let cli = Cli::try_parse_from(["oidc-edge", "-c", "a.yaml"]).unwrap();
        assert!(cli.command.is_none() && cli.config.as_deref() == Some("a.yaml".as_ref()));
        let cli = Cli::try_parse_from(["oidc-edge", "check", "--config=b.json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Check)) && cli.config.as_deref() == Some("b.json".as_ref()));
        let cli =
            Cli::try_parse_from(["oidc-edge", "--config", "c.yaml", "render", "traefik", "--out", "d", "--sidecar", "10.0.0.1:4180"]).unwrap();
        match cli.command {
            Some(Command::Render { proxy, out, sidecar, .. }) => {
                assert_eq!((proxy, out.to_str(), sidecar.as_deref()), (Proxy::Traefik, Some("d"), Some("10.0.0.1:4180")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors_name_the_fix() {
        let e = Cli::try_parse_from(["oidc-edge", "render", "apache", "--out", "d"]).unwrap_err();
        assert!(e.use_stderr() && e.to_string().contains("nginx, caddy, traefik, envoy, nginx-wasm"), "{e}");
        let e = Cli::try_parse_from(["oidc-edge", "render", "nginx"]).unwrap_err();
        assert!(e.to_string().contains("--out"), "{e}");
        let e = Cli::try_parse_from(["oidc-edge", "frobnicate"]).unwrap_err();
        assert!(e.use_stderr(), "{e}");
        let e = Cli::try_parse_from(["oidc-edge", "--version"]).unwrap_err();
        assert!(!e.use_stderr() && e.to_string().contains("commit "), "{e}");
    }
}
