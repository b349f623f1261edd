//! What the engine returns and what it carries between turns: the step the
//! host performs, the state of a request waiting on an answer, and the
//! environment the driver lends for one call.

use std::sync::Arc;

use super::login::TokenResponse;
use super::refresh::Refresh;
use crate::cache::SessionCache;
use crate::events::Events;
use crate::http::HttpCall;
use crate::pages::Response;
use crate::provider::ProviderSnapshot;
use crate::revocation::{Revocation, Revocations};
use crate::session::LoginState;
use crate::store::{StoreOp, StoreWrite};
use crate::SecureRandom;

/// What the driver lends the engine for one call, and what the engine
/// records during it (moved into the outcome by the driver, never drained
/// by a host).
pub(crate) struct Env<'a> {
    /// Current time, unix seconds.
    pub now: u64,
    /// A CSPRNG (or the filter's keyed DRBG).
    pub rng: &'a mut dyn SecureRandom,
    /// Provider metadata; `None` while it has not been loaded.
    pub provider: Option<&'a ProviderSnapshot>,
    /// This worker's cache of opened sessions.
    pub sessions: &'a mut SessionCache,
    /// This worker's caches of verified bearer tokens (one per audience
    /// set), by the exact token.
    pub tokens: &'a mut [SessionCache],
    /// This worker's signed identity tokens.
    pub signed: &'a mut crate::identity::SignedCache,
    /// The revocations this worker knows.
    pub revocations: &'a Revocations,
    /// Revocations made during this call (sign-out).
    pub revoked: Vec<Revocation>,
    /// What happened, for counters and log lines.
    pub events: Events,
    /// Records to store; nothing waits for them.
    pub writes: Vec<StoreWrite>,
    /// A JWKS fetched during this call, to install and share.
    pub fetched_jwks: Option<Vec<u8>>,
}

/// Continue upstream with these changes. `Debug` names the headers set but
/// not their values (they include injected API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Inbound header names (as received) to remove.
    pub strip: Vec<String>,
    /// Headers to set (overwriting) toward the upstream. Shared strings:
    /// names come from the config, values from the cached session.
    pub set: Vec<(Arc<str>, Arc<str>)>,
    /// A normalized `:path` to forward instead of the received one.
    pub set_path: Option<String>,
    /// `set-cookie` values to add to the upstream's response.
    pub set_cookies: Vec<String>,
}

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allow")
            .field("strip", &self.strip)
            .field("set", &self.set.iter().map(|(n, _)| &**n).collect::<Vec<_>>())
            .field("set_path", &self.set_path)
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}

/// What the host must do next.
#[must_use]
#[derive(Debug)]
pub enum Step {
    /// Forward the request upstream with these changes.
    Allow(Allow),
    /// Answer locally.
    Respond(Response),
    /// Make this call, then hand the response back with `pending`.
    Fetch {
        /// The call.
        call: HttpCall,
        /// Opaque state to pass back.
        pending: Pending,
    },
    /// Perform this store operation, then hand its answer back with
    /// `pending`. Only hosts with an asynchronous store see it: the driver
    /// answers it at once from a synchronous one.
    Store {
        /// The operation.
        op: StoreOp,
        /// Opaque state to pass back.
        pending: Pending,
    },
}

/// Login or refresh state carried across a callout or a store operation.
/// Opaque, and its `Debug` shows nothing: it holds a PKCE verifier and tokens.
pub struct Pending(pub(super) Box<PendingKind>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending([redacted])")
    }
}

/// Where a turn stopped, waiting for an answer.
pub(super) enum PendingKind {
    /// The login `state` claim (single use), before the code exchange.
    StateClaim {
        login: LoginState,
        code: String,
    },
    CodeExchange {
        login: LoginState,
    },
    /// The JWKS refetch cooldown claim, for a token signed with an unknown key.
    JwksCooldown {
        login: LoginState,
        tokens: TokenResponse,
    },
    JwksForLogin {
        login: LoginState,
        tokens: TokenResponse,
    },
    /// Whether another worker already refreshed this session generation.
    Successor(Refresh),
    /// The refresh lock claim.
    RefreshLock(Refresh),
    /// The successor record, read again once the lock is held.
    SuccessorUnderLock(Refresh),
    Refresh(Refresh),
    /// A refresh handed to the fleet coordinator.
    FleetRefresh(Refresh),
    /// A verified back-channel logout waiting on its `jti` claim.
    LogoutToken(crate::revocation::Revocation),
    /// A sign-out's revocations handed to the fleet coordinator; then this
    /// response.
    FleetSignOut(Response),
    Userinfo {
        refresh: Refresh,
        refresh_token: Option<String>,
    },
}

impl Pending {
    pub(super) fn new(kind: PendingKind) -> Pending {
        Pending(Box::new(kind))
    }
}
