//! oidc-edge core: OIDC sessions, ID-token verification and per-route policy
//! for reverse proxies, with no I/O of its own.
//!
//! A host (the proxy-wasm filter, the sidecar) keeps one [`Driver`] per
//! worker, turns each request into a [`RequestHead`], calls
//! [`Driver::on_request`] lending the clock, a random source and its store,
//! and performs the returned [`Outcome`]: forward with header changes, answer
//! locally, or make an HTTP call (or a store operation) and hand the answer
//! to [`Driver::on_answer`]; count and log its events. Provider metadata is
//! loaded by the [`provider::Load`] state machine, driven the same way.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bearer;
pub mod cache;
pub mod config;
pub mod drbg;
pub mod driver;
pub mod encoding;
pub mod engine;
pub mod events;
pub mod fleet;
pub mod headers;
pub mod http;
pub mod identity;
pub mod jose;
pub mod logout;
pub mod net;
pub mod pages;
pub mod path;
pub mod policy;
pub mod provider;
pub mod records;
pub mod redirect;
pub mod request;
pub mod revocation;
pub mod seal;
pub mod secret;
pub mod session;
pub mod store;

#[cfg(test)]
pub(crate) mod testing;

pub use cache::SessionCache;
pub use config::{Config, ConfigErrors, FieldIssue, SecretSource};
pub use driver::{Answer, Driver, Lend, Outcome};
pub use engine::{Allow, Pending, Step};
pub use events::Event;
pub use http::{HttpCall, HttpResponse};
pub use pages::Response;
pub use provider::{ProviderSnapshot, SharedProvider};
pub use request::RequestHead;
pub use store::{MemoryStore, Pool, RecordKey, SharedState, StoreAnswer, StoreOp, StoreWrite};

/// A cryptographically secure random source. Hosts must provide one: Envoy's
/// WASI `random_get` is; ngx_wasm_module's is not (the filter keys its own DRBG).
pub trait SecureRandom {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}
