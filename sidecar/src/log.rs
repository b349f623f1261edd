//! Structured logs: one JSON object per line on stderr. Callers pass only
//! names, reasons, hosts and paths without query strings — never a cookie,
//! token, code or secret.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Warn = 0,
    Info = 1,
    Debug = 2,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: crate::settings::LogLevel) {
    let l = match level {
        crate::settings::LogLevel::Warn => Level::Warn,
        crate::settings::LogLevel::Info => Level::Info,
        crate::settings::LogLevel::Debug => Level::Debug,
    };
    MAX_LEVEL.store(l as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes `{"ts":…,"level":…,"msg":…, fields…}` if `level` is enabled.
pub fn event(level: Level, msg: &str, fields: &[(&str, serde_json::Value)]) {
    if !enabled(level) {
        return;
    }
    let mut obj = serde_json::Map::new();
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    obj.insert("ts".into(), serde_json::json!((ts * 1000.0).round() / 1000.0));
    let name = match level {
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    obj.insert("level".into(), name.into());
    obj.insert("msg".into(), msg.into());
    for (k, v) in fields {
        obj.insert((*k).into(), v.clone());
    }
    eprintln!("{}", serde_json::Value::Object(obj));
}

/// Like [`event`], at most one line every 10 s for all such lines together
/// (with how many were left out): for lines an outsider can trigger at will.
pub fn event_limited(level: Level, msg: &str, fields: &[(&str, serde_json::Value)]) {
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
