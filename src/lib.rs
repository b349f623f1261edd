//! oidc-edge core: OIDC sessions, ID-token verification and per-route policy
//! for reverse proxies, with no I/O of its own.
//!
//! A host (the proxy-wasm filter, the sidecar) turns each request into a
//! [`RequestHead`], calls [`Engine::on_request`] with an [`Env`] holding the
//! clock, a random source and shared state, and performs the returned
//! [`Step`]: forward with header changes, answer locally, or make an HTTP call
//! and hand the answer to [`Engine::on_fetched`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod drbg;
pub mod encoding;
pub mod engine;
pub mod events;
pub mod headers;
pub mod jose;
pub mod net;
pub mod pages;
pub mod path;
pub mod policy;
pub mod provider;
pub mod records;
pub mod redirect;
pub mod seal;
pub mod session;
pub mod store;

#[cfg(test)]
pub(crate) mod testing;

pub use cache::SessionCache;
pub use config::{Config, ConfigErrors, SecretSource};
pub use engine::{Allow, Engine, Env, Pending, RequestHead, Step};
pub use events::Event;
pub use pages::Response;
pub use provider::{HttpCall, HttpResponse, ProviderSnapshot, SharedProvider};
pub use store::{MemoryStore, Pool, RecordKey, SharedState};

/// A cryptographically secure random source. Hosts must provide one: Envoy's
/// WASI `random_get` is; ngx_wasm_module's is not (the filter keys its own DRBG).
pub trait SecureRandom {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}
