//! Structured logs: one JSON object per line on stderr,
//! `{"ts":…,"level":…,"msg":…, fields…}`, emitted through `tracing` and
//! written by a `tracing-subscriber` formatter. Callers pass only names,
//! reasons, hosts and paths without query strings — never a cookie, token,
//! code or secret.
//!
//! Fields are named at run time (`&[(&str, Value)]`), which `tracing`'s
//! static field sets cannot express: they travel as one `fields` value (the
//! object's JSON) and the formatter puts them back beside `msg`, so every
//! line stays a flat object that `jq` or a log shipper reads as it is.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warn = 0,
    Info = 1,
    Debug = 2,
}

impl Level {
    fn filter(self) -> LevelFilter {
        match self {
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
        }
    }
}

/// The name the event's dynamic fields travel under.
const FIELDS: &str = "fields";

type FilterHandle = reload::Handle<LevelFilter, Registry>;

/// Installs the process-wide subscriber once (level `info` until
/// [`set_level`]), and returns the handle that changes its level.
fn subscriber() -> &'static FilterHandle {
    static HANDLE: OnceLock<FilterHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (filter, handle) = reload::Layer::new(LevelFilter::INFO);
        let format = tracing_subscriber::fmt::layer().event_format(JsonLines).with_writer(std::io::stderr);
        // Fails only if something else installed one first (a test harness):
        // that one then receives the events.
        let _ = tracing::subscriber::set_global_default(Registry::default().with(filter).with(format));
        handle
    })
}

pub fn set_level(level: crate::settings::LogLevel) {
    let l = match level {
        crate::settings::LogLevel::Warn => Level::Warn,
        crate::settings::LogLevel::Info => Level::Info,
        crate::settings::LogLevel::Debug => Level::Debug,
    };
    // Fails only when the subscriber is gone, and then nothing logs anyway.
    let _ = subscriber().modify(|f| *f = l.filter());
}

pub fn enabled(level: Level) -> bool {
    match level {
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
    }
}

/// The dynamic fields as a JSON object, rendered only if the line is written.
struct Fields<'a>(&'a [(&'a str, Value)]);

impl fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map: Map<String, Value> = self.0.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        write!(f, "{}", Value::Object(map))
    }
}

/// Writes `{"ts":…,"level":…,"msg":…, fields…}` if `level` is enabled.
pub fn event(level: Level, msg: &str, fields: &[(&str, Value)]) {
    let fields = tracing::field::display(Fields(fields));
    match level {
        Level::Warn => tracing::warn!(fields, "{msg}"),
        Level::Info => tracing::info!(fields, "{msg}"),
        Level::Debug => tracing::debug!(fields, "{msg}"),
    }
}

/// Like [`event`], at most one line every 10 s for all such lines together
/// (with how many were left out): for lines an outsider can trigger at will.
pub fn event_limited(level: Level, msg: &str, fields: &[(&str, Value)]) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let next = NEXT.load(Ordering::Relaxed);
    if now < next || NEXT.compare_exchange(next, now + 10, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut all = fields.to_vec();
    all.push(("suppressed_since_last", SUPPRESSED.swap(0, Ordering::Relaxed).into()));
    event(level, msg, &all);
}

/// The line's fields in the order recorded: `msg`, then the rest.
#[derive(Default)]
struct Collect {
    msg: String,
    fields: Vec<(String, Value)>,
}

impl Collect {
    fn put(&mut self, name: &str, value: Value) {
        match name {
            "message" => self.msg = value.as_str().map_or_else(|| value.to_string(), str::to_owned),
            FIELDS => match value.as_str().and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok()) {
                Some(map) => self.fields.extend(map),
                None => self.fields.push((name.to_owned(), value)),
            },
            _ => self.fields.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.into());
    }
}

/// The line format. Events from other crates (none log through `tracing`
/// today) get the same shape plus their `target`.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &tracing::Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let level = match *meta.level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        let mut c = Collect::default();
        event.record(&mut c);
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{{\"ts\":{},\"level\":\"{level}\",\"msg\":{}", json!((ts * 1000.0).round() / 1000.0), Value::String(c.msg));
        if !meta.target().starts_with(env!("CARGO_CRATE_NAME")) {
            let _ = write!(line, ",\"target\":{}", Value::String(meta.target().to_owned()));
        }
        for (name, value) in c.fields {
            if !matches!(name.as_str(), "ts" | "level" | "msg" | "target") {
                let _ = write!(line, ",{}:{value}", Value::String(name));
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::{json, Value};
    use tracing_subscriber::layer::SubscriberExt;

    use super::{event, JsonLines, Level};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines written while `f` runs, at `level`.
    fn lines(level: tracing_subscriber::filter::LevelFilter, f: impl FnOnce()) -> Vec<Value> {
        let buf = Buffer::default();
        let out = buf.clone();
        let format = tracing_subscriber::fmt::layer().event_format(JsonLines).with_writer(move || out.clone());
        let subscriber = tracing_subscriber::Registry::default().with(level).with(format);
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_line_is_one_flat_json_object() {
        let got = lines(tracing_subscriber::filter::LevelFilter::INFO, || {
            event(Level::Warn, "identity provider metadata not loaded", &[("reason", "unreachable: \"x\"\n".into()), ("retry_in_s", 2.into())]);
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "identity provider metadata not loaded");
        assert_eq!(line["reason"], "unreachable: \"x\"\n");
        assert_eq!(line["retry_in_s"], 2);
        assert!(line["ts"].as_f64().is_some_and(|t| t > 1.6e9));
        assert_eq!(line.as_object().map(|o| o.len()), Some(5), "{line}");
    }

    #[test]
    fn the_level_filters_and_fields_cannot_replace_the_fixed_keys() {
        let got = lines(tracing_subscriber::filter::LevelFilter::INFO, || {
            assert!(!super::enabled(Level::Debug) && super::enabled(Level::Info));
            event(Level::Debug, "decision", &[]);
            event(Level::Info, "listening", &[("msg", "other".into()), ("address", json!("127.0.0.1:4180"))]);
        });
        assert_eq!(got, vec![json!({"ts": got[0]["ts"], "level": "info", "msg": "listening", "address": "127.0.0.1:4180"})]);
    }
}
