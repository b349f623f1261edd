//! The fleet's shared store: Redis or Valkey. Every instance configured with
//! the same server and key prefix acts as one gate: a login state is used
//! once across the fleet, one instance refreshes a session while the others
//! wait for its successor record, and a sign-out reaches every instance.
//!
//! What is stored (all with a TTL, none readable as a credential):
//! - `{prefix}r:{hex key}`: the core's records (`oidc_edge::RecordKey`: login
//!   states, refresh locks, successors, the JWKS cooldown). Keys are keyed
//!   digests; a successor's value is the sealed (encrypted) cookie.
//! - `{prefix}revocations`: a stream of revocations (digests and times),
//!   capped, which every instance follows.
//!
//! When the server does not answer, operations answer `Unavailable` and the
//! core goes on without them where that is safe; `/readyz` and the
//! `oidc_edge_store_up` gauge say so, and a warning is logged at most every
//! 10 seconds. The connection manager reconnects by itself.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use oidc_edge::revocation::Revocation;
use oidc_edge::{RecordKey, StoreAnswer, StoreOp, StoreWrite};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamMaxlen, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, IntoConnectionInfo, RedisError};
use tokio::sync::Mutex;

use crate::log::{self, Level};
use crate::settings::RedisConfig;

/// Revocations kept in the stream at most (each instance also keeps them
/// in memory until the sessions they name expire).
const STREAM_MAX: usize = 100_000;

/// After a failed connection attempt, operations answer "unavailable" at
/// once for this long instead of each waiting for another attempt.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

pub struct RedisStore {
    client: Client,
    manager: Mutex<Option<ConnectionManager>>,
    /// When the last connection attempt failed: requests do not queue up
    /// behind a new attempt for a second after one.
    failed_at: std::sync::Mutex<Option<Instant>>,
    prefix: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// `UNKNOWN` until the first answer or failure, then `UP` or `DOWN`.
    state: AtomicU8,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl RedisStore {
    /// A store for `config`; connects on first use.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, String> {
        let mut info = config.url.as_str().into_connection_info().map_err(|e| format!("store.url: {e}"))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = Client::open(info).map_err(|e| format!("store.url: {e}"))?;
        Ok(RedisStore {
            client,
            manager: Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
            prefix: config.key_prefix.clone(),
            connect_timeout: Duration::from_millis(u64::from(config.connect_timeout_ms)),
            command_timeout: Duration::from_millis(u64::from(config.command_timeout_ms)),
            state: AtomicU8::new(UNKNOWN),
        })
    }

    /// Whether the last operation got an answer.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let mut slot = self.manager.lock().await;
        if let Some(m) = slot.as_ref() {
            return Some(m.clone());
        }
        let recently_failed = |at: &Option<Instant>| at.is_some_and(|t| t.elapsed() < RECONNECT_PAUSE);
        if recently_failed(&self.failed_at.lock().unwrap_or_else(|p| p.into_inner())) {
            return None;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match tokio::time::timeout(self.connect_timeout * 2, ConnectionManager::new_with_config(self.client.clone(), config)).await {
            Ok(Ok(m)) => {
                *slot = Some(m.clone());
                Some(m)
            }
            Ok(Err(e)) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                self.failed(&describe(&e))
            }
            Err(_) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                self.failed("connecting timed out")
            }
        }
    }

    fn failed<T>(&self, why: &str) -> Option<T> {
        if self.state.swap(DOWN, Ordering::Relaxed) != DOWN {
            log::event(
                Level::Warn,
                "shared store unreachable",
                &[("reason", why.into()), ("effect", "sessions and logins go on; refreshes wait; sign-outs reach only this instance".into())],
            );
        } else {
            log::event_limited(Level::Warn, "shared store still unreachable", &[("reason", why.into())]);
        }
        None
    }

    fn answered(&self) {
        if self.state.swap(UP, Ordering::Relaxed) != UP {
            log::event(Level::Info, "shared store reachable", &[]);
        }
    }

    /// Runs one command with the command timeout; `None` if it got no answer.
    async fn run<T, F, Fut>(&self, command: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.command_timeout, command(conn)).await {
            Ok(Ok(v)) => {
                self.answered();
                Some(v)
            }
            Ok(Err(e)) => self.failed(&describe(&e)),
            Err(_) => self.failed("command timed out"),
        }
    }

    fn key(&self, key: &RecordKey) -> String {
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}r:{hex}", self.prefix)
    }

    fn stream(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// Performs what the core asked.
    pub async fn perform(&self, op: &StoreOp, now: u64) -> StoreAnswer {
        match op {
            StoreOp::Read(key) => {
                let key = self.key(key);
                match self.run(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await }).await {
                    Some(value) => StoreAnswer::Read(value),
                    None => StoreAnswer::Unavailable,
                }
            }
            StoreOp::Claim { key, until } => {
                let Some(ms) = ttl_ms(*until, now) else { return StoreAnswer::Claimed(false) };
                let key = self.key(key);
                let set = |mut c: ConnectionManager| async move {
                    redis::cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(ms).query_async::<Option<String>>(&mut c).await
                };
                match self.run(set).await {
                    Some(reply) => StoreAnswer::Claimed(reply.is_some()),
                    None => StoreAnswer::Unavailable,
                }
            }
        }
    }

    /// Stores a record, or removes it when it ends now (a released lock); a
    /// failure leaves it as it was, which the core tolerates (another
    /// instance sees no successor and refreshes later; a lock expires).
    pub async fn write(&self, write: &StoreWrite, now: u64) {
        let key = self.key(&write.key);
        let Some(ms) = ttl_ms(write.until, now) else {
            let _ = self.run(|mut c| async move { c.del::<_, ()>(key).await }).await;
            return;
        };
        let value = write.value.clone();
        let _ = self.run(|mut c| async move { c.pset_ex::<_, _, ()>(key, value, ms).await }).await;
    }

    /// Tells every instance about revocations made here.
    pub async fn publish(&self, revoked: &[Revocation]) -> bool {
        let stream = self.stream();
        let records: Vec<Vec<u8>> = revoked
            .iter()
            .map(|r| {
                let mut bytes = Vec::new();
                r.encode(&mut bytes);
                bytes
            })
            .collect();
        let add = |mut c: ConnectionManager| async move {
            let mut pipe = redis::pipe();
            for r in records {
                pipe.xadd_maxlen(&stream, StreamMaxlen::Approx(STREAM_MAX), "*", &[("r", r)]).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        };
        self.run(add).await.is_some()
    }

    /// Revocations added to the stream after `last_id` (`0` for all), and
    /// the id to read from next time; `None` if the store did not answer.
    pub async fn revocations_after(&self, last_id: &str) -> Option<(Vec<Revocation>, String)> {
        let stream = self.stream();
        let from = last_id.to_owned();
        let read = |mut c: ConnectionManager| async move {
            let options = StreamReadOptions::default().count(1000);
            c.xread_options::<_, _, Option<StreamReadReply>>(&[stream], &[from], &options).await
        };
        let reply = self.run(read).await?;
        let mut next = last_id.to_owned();
        let mut found = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                if let Some(redis::Value::BulkString(bytes)) = entry.map.get("r") {
                    found.extend(Revocation::decode_all(bytes));
                }
                next = entry.id;
            }
        }
        Some((found, next))
    }

    /// Answers whether the server is there (for the follower's idle turns).
    pub async fn ping(&self) -> bool {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await.is_some()
    }
}

/// An error and, where the fix is in the configuration, the fix.
fn describe(e: &RedisError) -> String {
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => {
            format!("{e}; check store.username and store.password (the ACL user's, not the URL's)")
        }
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            format!("{e}; the ACL user needs GET SET PSETEX DEL XADD XREAD PING on the prefix's keys")
        }
        _ => e.to_string(),
    }
}

/// Milliseconds from `now` to `until`; `None` when already past.
fn ttl_ms(until: u64, now: u64) -> Option<u64> {
    until.checked_sub(now).filter(|s| *s > 0).map(|s| s * 1000)
}
