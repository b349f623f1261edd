//! Cross-worker state in the host's shared data: the provider metadata, the
//! fetch schedule, and the core's short-lived records (`oidc_edge::store`),
//! each pool in shards of its own, so the pools are bounded apart as in the
//! sidecar's store.

use oidc_edge::engine::shared_key;
use oidc_edge::fleet::PollSchedule;
use oidc_edge::provider::Schedule;
use oidc_edge::records::{self, Write};
use oidc_edge::revocation::Revocation;
use oidc_edge::{Pool, RecordKey, SharedState};
use proxy_wasm::traits::Context;
use proxy_wasm::types::Status;

/// Shared-data keys of one issuer (several filter configs may share them).
pub struct Keys {
    pub provider: String,
    pub sync: String,
    pub claims: String,
    pub revoked: String,
    /// Rewritten (a counter) whenever `revoked` changes: a request reads this
    /// small entry, not the list, to know whether a sign-out happened.
    pub revoked_changed: String,
    /// When the memory holding `revoked` began (see [`revocations_began`]).
    pub revocations_began: String,
    pub fleet: String,
}

impl Keys {
    pub fn for_issuer(issuer: &str) -> Keys {
        let h = shared_key(b"issuer", issuer.as_bytes());
        let tag: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
        Keys {
            provider: format!("oidc-edge/provider-{tag}"),
            sync: format!("oidc-edge/sync-{tag}"),
            claims: format!("oidc-edge/claims-{tag}-"),
            revoked: format!("oidc-edge/revoked-{tag}"),
            revoked_changed: format!("oidc-edge/revoked-changed-{tag}"),
            revocations_began: format!("oidc-edge/revocations-began-{tag}"),
            fleet: format!("oidc-edge/fleet-{tag}"),
        }
    }
}

/// The provider-load schedule shared by all workers, and its version for
/// compare-and-swap.
pub fn load_schedule(ctx: &dyn Context, key: &str) -> (Schedule, Option<u32>) {
    let (data, cas) = ctx.get_shared_data(key);
    (data.map_or_else(Schedule::default, |d| Schedule::decode(&d)), cas)
}

/// Stores the schedule if nobody changed it since `cas` was read (`None`:
/// whatever it holds).
pub fn store_schedule(ctx: &dyn Context, key: &str, schedule: Schedule, cas: Option<u32>) -> bool {
    match cas {
        Some(_) => ctx.set_shared_data(key, Some(&schedule.encode()), cas).is_ok(),
        None => overwrite(ctx, key, &schedule.encode()),
    }
}

/// Replaces an entry whatever it holds. ngx_wasm_module takes "no CAS" (0)
/// to mean "only if absent", unlike Envoy: read the version, write with it,
/// and try again if another worker wrote in between.
pub fn overwrite(ctx: &dyn Context, key: &str, value: &[u8]) -> bool {
    for _ in 0..8 {
        let (_, cas) = ctx.get_shared_data(key);
        match ctx.set_shared_data(key, Some(value), cas) {
            Ok(()) => return true,
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// When the shared memory that holds this proxy's revocations began: set by
/// the first worker that asks, read by the others and by the VMs of a new
/// configuration, and gone exactly when the revocations are (a restart, or
/// nginx emptying shared memory on reload). A sign-out made before it may
/// be unknown here.
pub fn revocations_began(ctx: &dyn Context, key: &str, now: u64) -> u64 {
    let read = || ctx.get_shared_data(key).0.and_then(|d| <[u8; 8]>::try_from(d.as_slice()).ok()).map(u64::from_be_bytes);
    if let Some(t) = read() {
        return t;
    }
    // Envoy writes unconditionally without a CAS, ngx_wasm_module only if
    // absent: either way every worker then reads the same time.
    let _ = ctx.set_shared_data(key, Some(&now.to_be_bytes()), None);
    read().unwrap_or(now)
}

/// Revocations shared by the workers, at most this many (the oldest go
/// first); each worker copies the list when it changes.
const MAX_REVOCATIONS: usize = 10_000;

/// Adds revocations to the list every worker reads, dropping expired ones
/// and the ones it has (a coordinator's full list after a resync).
/// Compare-and-swap, retried: two workers signing users out at once both land.
pub fn append_revocations(ctx: &dyn Context, keys: &Keys, new: &[Revocation], now: u64) -> bool {
    let key = keys.revoked.as_str();
    for _ in 0..8 {
        let (data, cas) = ctx.get_shared_data(key);
        let mut list = data.map(|d| Revocation::decode_all(&d)).unwrap_or_default();
        let known: std::collections::HashSet<_> = list.iter().map(|r| r.revoked).collect();
        let mut fresh = new.iter().filter(|r| r.until > now && !known.contains(&r.revoked)).peekable();
        if fresh.peek().is_none() {
            return true;
        }
        let fresh: Vec<Revocation> = fresh.copied().collect();
        list.retain(|r| r.until > now);
        list.extend_from_slice(&fresh);
        if list.len() > MAX_REVOCATIONS {
            list.sort_by_key(|r| r.until);
            list.drain(..list.len() - MAX_REVOCATIONS);
        }
        let mut bytes = Vec::with_capacity(list.len() * oidc_edge::revocation::RECORD);
        for r in &list {
            r.encode(&mut bytes);
        }
        match ctx.set_shared_data(key, Some(&bytes), cas) {
            Ok(()) => return mark_changed(ctx, &keys.revoked_changed),
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// When this instance polls its fleet coordinator next, and from where.
pub fn poll_schedule(ctx: &dyn Context, key: &str) -> (PollSchedule, Option<u32>) {
    let (data, cas) = ctx.get_shared_data(key);
    (data.map_or_else(PollSchedule::default, |d| PollSchedule::decode(&d)), cas)
}

/// Stores the poll schedule if nobody changed it since `cas` was read
/// (`None`: unconditionally).
pub fn store_poll_schedule(ctx: &dyn Context, key: &str, schedule: &PollSchedule, cas: Option<u32>) -> bool {
    match cas {
        Some(_) => ctx.set_shared_data(key, Some(&schedule.encode()), cas).is_ok(),
        None => overwrite(ctx, key, &schedule.encode()),
    }
}

/// Bumps the change marker. Its value changes too (a counter): a host may
/// not treat an empty or repeated value as a change.
fn mark_changed(ctx: &dyn Context, key: &str) -> bool {
    let (data, _) = ctx.get_shared_data(key);
    let count = data.and_then(|d| d.get(..8).and_then(|b| b.try_into().ok())).map_or(0, u64::from_le_bytes);
    overwrite(ctx, key, &count.wrapping_add(1).to_le_bytes())
}

/// The shared revocations if they changed since `seen` (their version).
pub fn changed_revocations(ctx: &dyn Context, key: &str, seen: Option<u32>) -> Option<(Vec<Revocation>, Option<u32>)> {
    let (data, cas) = ctx.get_shared_data(key);
    if cas.is_none() || cas == seen {
        return None;
    }
    Some((data.map(|d| Revocation::decode_all(&d)).unwrap_or_default(), cas))
}

const SHARDS: u8 = 16;
const MAX_RECORDS_PER_SHARD: usize = 4096;

/// Short-lived records in sharded shared-data entries (format and rules in
/// `oidc_edge::records`). A shard is rewritten with compare-and-swap, so two
/// workers never both win a claim.
pub struct HostShared<'a> {
    pub ctx: &'a dyn Context,
    pub prefix: &'a str,
}

impl HostShared<'_> {
    /// Creates the shard entries if missing, before traffic arrives: the
    /// host's compare-and-swap only protects entries that already exist.
    pub fn create_shards(ctx: &dyn Context, prefix: &str) {
        for pool in Pool::ALL {
            for shard in 0..SHARDS {
                let key = shard_name(prefix, pool, shard);
                if ctx.get_shared_data(&key).1.is_none() {
                    let _ = ctx.set_shared_data(&key, Some(&[]), None);
                }
            }
        }
    }

    /// The record's digest and the shard entry that holds it.
    fn locate(&self, key: &RecordKey) -> ([u8; 16], String) {
        let digest = shared_key(b"record", &key.to_bytes());
        let name = shard_name(self.prefix, key.pool(), digest[0] % SHARDS);
        (digest, name)
    }

    fn write(&mut self, key: &RecordKey, value: &[u8], until: u64, now: u64, mode: Write) -> bool {
        let (digest, shard_key) = self.locate(key);
        for _ in 0..16 {
            let (data, cas) = self.ctx.get_shared_data(&shard_key);
            let data = data.unwrap_or_default();
            let Some((next, evicted)) = records::write(&data, &digest, value, until, now, mode, MAX_RECORDS_PER_SHARD) else {
                return false;
            };
            if evicted {
                log::warn!("oidc-edge: shared {} records full; evicted the one closest to expiry", key.pool().name());
            }
            match self.ctx.set_shared_data(&shard_key, Some(&next), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    log::warn!("oidc-edge: shared data unavailable ({status:?}); refusing");
                    return false;
                }
            }
        }
        false
    }
}

impl SharedState for HostShared<'_> {
    fn claim(&mut self, key: &RecordKey, until: u64, now: u64) -> bool {
        self.write(key, &[], until, now, Write::IfAbsent)
    }

    fn get(&mut self, key: &RecordKey, now: u64) -> Option<Vec<u8>> {
        let (digest, shard_key) = self.locate(key);
        let (data, _) = self.ctx.get_shared_data(&shard_key);
        records::lookup(&data?, &digest, now)
    }

    fn put(&mut self, key: &RecordKey, value: &[u8], until: u64, now: u64) -> bool {
        self.write(key, value, until, now, Write::Always)
    }
}

fn shard_name(prefix: &str, pool: Pool, shard: u8) -> String {
    format!("{prefix}{}-{shard}", pool.name())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use proxy_wasm::types::Bytes;

    use super::*;

    /// Shared data as proxy-wasm hosts keep it: entries with a version that a
    /// compare-and-swap must match. `interfere` makes the next N writes lose
    /// their CAS, as when another worker writes first.
    #[derive(Default)]
    struct FakeHost {
        data: RefCell<HashMap<String, (Bytes, u32)>>,
        interfere: RefCell<u32>,
    }

    impl Context for FakeHost {
        fn get_shared_data(&self, key: &str) -> (Option<Bytes>, Option<u32>) {
            match self.data.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set_shared_data(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), Status> {
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, c)| *c);
            let mut interfere = self.interfere.borrow_mut();
            if *interfere > 0 {
                *interfere -= 1;
                if let Some((_, c)) = data.get_mut(key) {
                    *c += 1;
                }
                return Err(Status::CasMismatch);
            }
            // As ngx_wasm_module: no CAS (0) only for an absent entry
            // (Envoy would overwrite; code that works here works there).
            if cas.unwrap_or(0) != current.unwrap_or(0) {
                return Err(Status::CasMismatch);
            }
            let next = current.unwrap_or(0) + 1;
            data.insert(key.to_owned(), (value.unwrap_or_default().to_vec(), next));
            Ok(())
        }
    }

    fn store(host: &FakeHost) -> HostShared<'_> {
        HostShared::create_shards(host, "t-");
        HostShared { ctx: host, prefix: "t-" }
    }

    #[test]
    fn claims_are_single_use_across_workers_sharing_the_data() {
        let host = FakeHost::default();
        let key = RecordKey::LoginState([1; 16]);
        assert!(store(&host).claim(&key, 100, 10));
        assert!(!store(&host).claim(&key, 100, 20), "a second worker's claim of the same state fails");
        let successor = RecordKey::Successor([2; 16]);
        assert!(store(&host).put(&successor, b"ok:c", 100, 10));
        assert_eq!(store(&host).get(&successor, 50), Some(b"ok:c".to_vec()));
        assert_eq!(store(&host).get(&successor, 100), None, "expired");
    }

    #[test]
    fn a_lost_compare_and_swap_is_retried_and_never_double_claims() {
        let host = FakeHost::default();
        let key = RecordKey::RefreshLock([3; 16]);
        *host.interfere.borrow_mut() = 3;
        assert!(store(&host).claim(&key, 100, 10), "retried past three lost races");
        *host.interfere.borrow_mut() = 1000;
        assert!(!store(&host).claim(&RecordKey::RefreshLock([4; 16]), 100, 10), "gives up, refusing (fail closed)");
        *host.interfere.borrow_mut() = 0;
        assert!(!store(&host).claim(&key, 100, 20), "the first claim holds");
    }

    #[test]
    fn login_states_never_touch_the_session_pool() {
        let host = FakeHost::default();
        let lock = RecordKey::RefreshLock([5; 16]);
        assert!(store(&host).claim(&lock, 1000, 10));
        let sessions_before: Vec<_> = (0..SHARDS).map(|s| host.get_shared_data(&shard_name("t-", Pool::Sessions, s))).collect();
        for i in 0..2000u32 {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&i.to_be_bytes());
            assert!(store(&host).claim(&RecordKey::LoginState(d), 600, 10));
        }
        let sessions_after: Vec<_> = (0..SHARDS).map(|s| host.get_shared_data(&shard_name("t-", Pool::Sessions, s))).collect();
        assert_eq!(sessions_before, sessions_after, "a login-state flood rewrote a session shard");
        assert!(!store(&host).claim(&lock, 1000, 11), "the refresh lock is still held");
    }

    #[test]
    fn revocations_from_every_worker_land_and_expire() {
        use oidc_edge::revocation::Revoked;
        let host = FakeHost::default();
        let keys = Keys::for_issuer("https://id.example.com");
        let r = keys.revoked.as_str();
        let marker = |host: &FakeHost| host.get_shared_data(&keys.revoked_changed).1;
        let rev = |k: u8, until: u64| Revocation { revoked: Revoked::Session([k; 16]), until };
        assert!(changed_revocations(&host, r, None).is_none(), "nothing shared yet");
        assert!(append_revocations(&host, &keys, &[rev(1, 100)], 10));
        let first = marker(&host);
        assert!(first.is_some(), "the change marker is set");
        *host.interfere.borrow_mut() = 2;
        assert!(append_revocations(&host, &keys, &[rev(2, 50)], 10), "a lost race is retried");
        assert_ne!(marker(&host), first);
        let Some((list, version)) = changed_revocations(&host, r, None) else { panic!("nothing shared") };
        assert_eq!(list, vec![rev(1, 100), rev(2, 50)]);
        assert!(changed_revocations(&host, r, version).is_none(), "unchanged since last look");
        let unchanged = marker(&host);
        assert!(append_revocations(&host, &keys, &[rev(1, 100)], 20), "known ones are not added again");
        assert_eq!(marker(&host), unchanged);
        assert!(append_revocations(&host, &keys, &[rev(3, 200)], 60));
        let Some((list, _)) = changed_revocations(&host, r, version) else { panic!("the change is not seen") };
        assert_eq!(list, vec![rev(1, 100), rev(3, 200)], "the expired one is gone");
    }
}
