//! Secrets: a string that never shows itself, and where secrets come from.

use std::fmt;
use std::sync::Arc;

/// A secret value. `Debug` and `Display` never show it. Shared (`Arc`) so
/// that injecting it into a request costs no copy.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(Arc<str>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> SecretString {
        SecretString(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The secret as a shared string, for header values.
    pub fn expose_shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where secrets come from: the host's environment, files (sidecar only).
pub trait SecretSource {
    /// An environment variable of the process (for proxy-wasm: of the VM).
    fn env(&self, name: &str) -> Option<String>;
    /// A file's contents; `Err` explains why it is unavailable.
    fn file(&self, path: &str) -> Result<String, String>;
}
