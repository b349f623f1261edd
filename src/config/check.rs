//! Checks shared by every section: secrets, durations, paths, header
//! names, URLs, cookie secrets. Each error names its field and the fix.

use std::fmt;
use std::sync::Arc;

use super::raw::{RawDuration, RawHeaderNames, RawSecret};
use super::FieldIssue;
use crate::encoding::{b64_any_decode, split_url};
use crate::headers::HeaderNames;
use crate::secret::SecretSource;

/// Parses a duration: seconds as a number, or `90s`, `15m`, `12h`, `7d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    // `humantime` also takes `1h 30m`, `2days`, `1w`, `1.5h`; never a sign,
    // and never less than whole seconds.
    let d = humantime::parse_duration(t).ok()?;
    (d.subsec_nanos() == 0).then_some(d.as_secs())
}

/// Collects every error and warning of a configuration, each naming its
/// field. Front ends check their own sections with it, so their errors read
/// like the core's and arrive in the same list.
pub struct Checker<'a> {
    pub(super) errors: Vec<FieldIssue>,
    pub(super) warnings: Vec<FieldIssue>,
    secrets: &'a dyn SecretSource,
}

impl<'a> Checker<'a> {
    pub(super) fn new(secrets: &'a dyn SecretSource) -> Checker<'a> {
        Checker { errors: Vec::new(), warnings: Vec::new(), secrets }
    }

    /// Records an error about `field`.
    pub fn err(&mut self, field: &str, msg: impl fmt::Display) {
        self.errors.push(FieldIssue::new(field, msg));
    }

    /// Records a setting that works but should change.
    pub fn warn(&mut self, field: &str, msg: impl fmt::Display) {
        self.warnings.push(FieldIssue::new(field, msg));
    }

    /// Reads a secret; `None` (with an error) if it is unavailable or empty.
    pub fn secret(&mut self, field: &str, raw: &RawSecret) -> Option<String> {
        let value = match raw {
            RawSecret::Inline(v) => v.clone(),
            RawSecret::Env { env } => match self.secrets.env(env) {
                Some(v) => v,
                None => {
                    self.err(
                        field,
                        format!(
                            "environment variable {env} is not set or not visible; set it, and with Envoy list it in \
                         vm_config.environment_variables.host_env_keys"
                        ),
                    );
                    return None;
                }
            },
            RawSecret::File { file } => match self.secrets.file(file) {
                Ok(v) => v.trim_end_matches(['\r', '\n']).to_owned(),
                Err(why) => {
                    self.err(field, format!("cannot read {file}: {why}"));
                    return None;
                }
            },
        };
        if value.is_empty() {
            self.err(field, "is empty");
            return None;
        }
        Some(value)
    }

    /// Reads a duration of at least `min` seconds.
    pub fn duration(&mut self, field: &str, raw: Option<&RawDuration>, default: u64, min: u64) -> u64 {
        let value = match raw {
            None => return default,
            Some(RawDuration::Seconds(s)) => Some(*s),
            Some(RawDuration::Text(t)) => parse_duration(t),
        };
        match value {
            Some(v) if v >= min => v,
            Some(v) => {
                self.err(field, format!("{v}s is too short; use at least {min}s"));
                default
            }
            None => {
                self.err(field, "is not a duration; write seconds (3600) or 90s, 15m, 12h, 7d");
                default
            }
        }
    }

    pub(super) fn path(&mut self, field: &str, raw: Option<&String>, default: &str) -> String {
        let p = raw.map_or(default, String::as_str);
        let bad_char = p.bytes().any(|b| b.is_ascii_control() || matches!(b, b'?' | b'#' | b'\\' | b';' | b' ' | b','));
        if !p.starts_with('/') || p.starts_with("//") || bad_char || p.contains("/.") {
            self.err(field, format!("{p:?} must be an absolute path like {default}"));
        }
        p.to_owned()
    }

    /// Address ranges (`10.0.0.0/8`, `192.168.1.5`, `fd00::/8`).
    pub(super) fn networks(&mut self, field: &str, list: &[String]) -> Vec<crate::net::IpNet> {
        let mut out = Vec::new();
        for text in list {
            match crate::net::IpNet::parse(text) {
                Some(n) => out.push(n),
                None => self.err(field, format!("{text:?} is not an address range; write e.g. 192.168.1.0/24 or 10.0.0.5")),
            }
        }
        out
    }

    pub(super) fn header_name(&mut self, field: &str, name: &str) {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            self.err(field, format!("{name:?} is not a valid HTTP header name"));
        }
        if matches!(name.to_ascii_lowercase().as_str(), "cookie" | "host" | "content-length" | "transfer-encoding") || name.starts_with(':') {
            self.err(field, format!("{name:?} cannot be injected or stripped"));
        }
    }

    pub(super) fn header_names(&mut self, field: &str, raw: &RawHeaderNames, base: &HeaderNames) -> HeaderNames {
        let mut pick = |sub: &str, v: &Option<String>, b: &Option<Arc<str>>| match v {
            None => b.clone(),
            Some(s) if s.is_empty() => None,
            Some(s) => {
                self.header_name(&format!("{field}.{sub}"), s);
                Some(Arc::from(s.as_str()))
            }
        };
        HeaderNames {
            user: pick("user", &raw.user, &base.user),
            email: pick("email", &raw.email, &base.email),
            groups: pick("groups", &raw.groups, &base.groups),
            name: pick("name", &raw.name, &base.name),
        }
    }

    pub(super) fn url(&mut self, field: &str, url: &str) {
        if split_url(url).is_none() {
            self.err(field, format!("{url:?} must be an absolute http(s) URL"));
        }
    }
}

pub(super) fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// A cookie secret is 16, 24 or 32 raw bytes, or base64 of that many
/// (the oauth2-proxy convention, so existing secrets can be reused).
pub fn decode_cookie_secret(value: &str) -> Option<Vec<u8>> {
    let ok = |n: usize| matches!(n, 16 | 24 | 32);
    if let Some(bytes) = b64_any_decode(value).filter(|b| ok(b.len())) {
        return Some(bytes);
    }
    ok(value.len()).then(|| value.as_bytes().to_vec())
}

/// A secret taken as raw characters (not base64 of 16/24/32 bytes) made only
/// of printable ASCII other than hex digits: oauth2-proxy accepted such
/// strings, and people typed them. Hex (`openssl rand -hex 16`) is random.
pub fn looks_human_made(value: &str) -> bool {
    let raw = b64_any_decode(value).is_none_or(|b| !matches!(b.len(), 16 | 24 | 32));
    raw && matches!(value.len(), 16 | 24 | 32)
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !value.bytes().all(|b| b.is_ascii_hexdigit())
}
