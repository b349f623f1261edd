//! The one entry point of every front end. A host turns a request into a
//! [`RequestHead`], lends the clock, randomness and (when it has a
//! synchronous one) the store for one turn, and gets back one [`Outcome`]
//! that says everything it must do: forward with these header changes,
//! answer locally, make this call, perform this store operation, store these
//! records, count these events, log these lines, share these provider
//! documents. The driver owns what a worker keeps between turns: the
//! engine, the cache of opened sessions and the provider metadata.

use std::sync::Arc;

use crate::cache::SessionCache;
use crate::config::Config;
use crate::engine::{Engine, Env, Pending, Step};
use crate::events::{Counter, Events, Severity};
use crate::http::HttpResponse;
use crate::provider::{ProviderError, ProviderSnapshot, SharedProvider};
use crate::request::RequestHead;
use crate::revocation::{Revocation, Revocations};
use crate::store::{SharedState, StoreAnswer, StoreWrite};
use crate::SecureRandom;

/// What a host lends the driver for one turn.
pub struct Lend<'a> {
    /// Current time, unix seconds.
    pub now: u64,
    /// A CSPRNG (or the filter's keyed DRBG).
    pub rng: &'a mut dyn SecureRandom,
    /// A store the driver may call synchronously (proxy-wasm shared data, the
    /// in-memory store): store operations are then answered within the turn
    /// and writes performed, so [`Step::Store`] never reaches the host. `None`
    /// for a networked store: the host performs them and hands answers back.
    pub store: Option<&'a mut dyn SharedState>,
}

/// The answer to what a [`Step`] asked for.
#[derive(Debug)]
pub enum Answer {
    /// The response to a [`Step::Fetch`].
    Http(HttpResponse),
    /// The answer to a [`Step::Store`].
    Store(StoreAnswer),
}

/// Everything the host must do after a turn.
#[must_use]
#[derive(Debug)]
pub struct Outcome {
    /// What to do with the request.
    pub step: Step,
    /// What happened: see [`Outcome::counters`] and [`Outcome::log_lines`].
    pub events: Events,
    /// Records to store (empty when the driver had a synchronous store).
    pub writes: Vec<StoreWrite>,
    /// Sessions this turn revoked (sign-out). Already applied in this
    /// driver; a host spreads them to its other workers and instances, which
    /// hand them to [`Driver::learn`].
    pub revoked: Vec<Revocation>,
    /// Provider documents this turn changed (a JWKS refetched for a login
    /// signed with a new key). Already installed in this driver; a host
    /// whose workers share metadata publishes them.
    pub publish: Option<SharedProvider>,
}

impl Outcome {
    /// The counters to increment, one entry per increment.
    pub fn counters(&self) -> impl Iterator<Item = Counter> + '_ {
        self.events.iter().flat_map(|e| e.counters().iter().copied())
    }

    /// The lines to log, with their severity, the same on every front end.
    pub fn log_lines(&self) -> impl Iterator<Item = (Severity, String)> + '_ {
        self.events.iter().filter_map(|e| Some((e.severity(), e.log_line()?)))
    }
}

/// One worker's gate: the engine and what it keeps between turns.
pub struct Driver {
    engine: Engine,
    sessions: SessionCache,
    /// Verified bearer tokens, one cache per audience set (their own bound:
    /// API clients never evict browser sessions).
    tokens: Vec<SessionCache>,
    signed: crate::identity::SignedCache,
    provider: Option<Arc<ProviderSnapshot>>,
    /// The documents the snapshot was built from, to rebuild it when a
    /// login fetches a rotated JWKS.
    docs: Option<SharedProvider>,
    revocations: Revocations,
}

impl Driver {
    /// A driver for `config`, caching up to `session_capacity` opened sessions.
    pub fn new(config: impl Into<Arc<Config>>, session_capacity: usize) -> Driver {
        let config: Arc<Config> = config.into();
        Driver {
            engine: Engine::new(Arc::clone(&config)),
            sessions: SessionCache::new(session_capacity),
            tokens: (0..config.bearer_caches).map(|_| SessionCache::new(session_capacity)).collect(),
            signed: crate::identity::SignedCache::new(session_capacity),
            provider: None,
            docs: None,
            revocations: Revocations::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The configuration, shared (for a host that reads it without the driver).
    pub fn shared_config(&self) -> Arc<Config> {
        self.engine.shared_config()
    }

    /// The provider metadata in use, once loaded.
    pub fn provider(&self) -> Option<&Arc<ProviderSnapshot>> {
        self.provider.as_ref()
    }

    /// When the metadata in use was fetched.
    pub fn loaded_at(&self) -> Option<u64> {
        self.provider.as_ref().map(|p| p.fetched_at)
    }

    /// Validates and installs provider documents (loaded by this host, or
    /// published by another worker). On error the metadata in use is kept.
    pub fn install(&mut self, docs: SharedProvider) -> Result<(), ProviderError> {
        let snapshot = docs.snapshot(&self.engine.config().provider)?;
        self.provider = Some(Arc::new(snapshot));
        self.docs = Some(docs);
        Ok(())
    }

    /// Drops the provider metadata, as before its first load.
    #[cfg(test)]
    pub(crate) fn forget_provider(&mut self) {
        self.provider = None;
    }

    /// Decides a request.
    pub fn on_request(&mut self, head: &RequestHead<'_>, lend: Lend<'_>) -> Outcome {
        self.turn(lend, |engine, env| engine.on_request(head, env))
    }

    /// Answers the provider's back-channel logout (the POSTed form at
    /// `paths.backchannel_logout`): the revocations come back in
    /// [`Outcome::revoked`], for the host to spread.
    pub fn on_backchannel_logout(&mut self, body: &[u8], lend: Lend<'_>) -> Outcome {
        self.turn(lend, |engine, env| engine.on_backchannel_logout(body, env))
    }

    /// The coordinator's side of a fleet refresh: a filter hands over the
    /// session sealed in `cookie` (the host has checked the fleet key). The
    /// answer is a [`Step::Respond`] in [`crate::fleet`]'s format, after the
    /// same lock, successor and provider steps as a refresh of our own.
    pub fn on_fleet_refresh(&mut self, cookie: &str, lend: Lend<'_>) -> Outcome {
        self.turn(lend, |engine, env| engine.on_fleet_refresh_request(cookie, env))
    }

    /// Continues a request after the host performed what its last step asked.
    pub fn on_answer(&mut self, pending: Pending, answer: Answer, lend: Lend<'_>) -> Outcome {
        self.turn(lend, |engine, env| match answer {
            Answer::Http(response) => engine.on_fetched(pending, response, env),
            Answer::Store(answer) => engine.on_stored(pending, answer, env),
        })
    }

    fn turn(&mut self, lend: Lend<'_>, first: impl FnOnce(&Engine, &mut Env<'_>) -> Step) -> Outcome {
        let Lend { now, rng, store } = lend;
        // Borrowed field by field: the hot path clones nothing.
        let Driver { engine, sessions, tokens, signed, provider, revocations, .. } = self;
        let mut env = Env {
            now,
            rng,
            provider: provider.as_deref(),
            sessions,
            tokens,
            signed,
            revocations,
            revoked: Vec::new(),
            events: Events::new(),
            writes: Vec::new(),
            fetched_jwks: None,
        };
        let mut step = first(engine, &mut env);
        if let Some(store) = store {
            while let Step::Store { op, pending } = step {
                let answer = op.perform(store, now);
                step = engine.on_stored(pending, answer, &mut env);
            }
            for write in env.writes.drain(..) {
                // A write that fails leaves a record missing: another worker
                // then refreshes again or sees no successor, never a wrong one.
                let _ = write.perform(store, now);
            }
        }
        let Env { events, writes, fetched_jwks, revoked, .. } = env;
        self.learn(&revoked, now);
        let publish = fetched_jwks.and_then(|jwks| self.install_jwks(jwks, now));
        Outcome { step, events, writes, revoked, publish }
    }

    /// Says that revocations made before `t` may be unknown to this driver
    /// (its host keeps them in memory, and that memory began at `t`):
    /// sessions last checked before then are refreshed with the provider
    /// before they are served, or sent to sign in again.
    pub fn revocations_known_since(&mut self, t: u64) {
        self.revocations.forgotten_before(t);
    }

    /// Learns revocations made by another worker or instance.
    pub fn learn(&mut self, revoked: &[Revocation], now: u64) {
        for r in revoked {
            self.revocations.add(r, now);
        }
    }

    fn install_jwks(&mut self, jwks: Vec<u8>, now: u64) -> Option<SharedProvider> {
        let docs = SharedProvider { fetched_at: now, discovery: self.docs.as_ref()?.discovery.clone(), jwks };
        self.install(docs.clone()).ok()?;
        Some(docs)
    }

    #[cfg(test)]
    pub(crate) fn sessions(&mut self) -> &mut SessionCache {
        &mut self.sessions
    }

    #[cfg(test)]
    pub(crate) fn provider_slot(&mut self) -> &mut Option<Arc<ProviderSnapshot>> {
        &mut self.provider
    }
}
