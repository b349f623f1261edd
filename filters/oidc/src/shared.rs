//! Cross-worker state in the host's shared data: the provider metadata, the
//! fetch schedule, and short-lived records (single-use `state`, the JWKS
//! refetch cooldown, the refresh lock and a refreshed session's successor).

use oidc_edge::engine::shared_key;
use oidc_edge::SharedState;
use proxy_wasm::traits::Context;
use proxy_wasm::types::Status;

/// Shared-data keys of one issuer (several filter configs may share them).
pub struct Keys {
    pub provider: String,
    pub sync: String,
    pub claims: String,
}

impl Keys {
    pub fn for_issuer(issuer: &str) -> Keys {
        let h = shared_key(b"issuer", issuer.as_bytes());
        let tag: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
        Keys {
            provider: format!("oidc-edge/provider-{tag}"),
            sync: format!("oidc-edge/sync-{tag}"),
            claims: format!("oidc-edge/claims-{tag}-"),
        }
    }
}

/// When the next metadata fetch may start, and how many have failed in a row.
#[derive(Clone, Copy, Default)]
pub struct SyncRecord {
    pub next_attempt: u64,
    pub failures: u32,
}

impl SyncRecord {
    pub fn load(ctx: &dyn Context, key: &str) -> (SyncRecord, Option<u32>) {
        let (data, cas) = ctx.get_shared_data(key);
        let record = data
            .filter(|d| d.len() == 12)
            .map(|d| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&d[..8]);
                let mut b = [0u8; 4];
                b.copy_from_slice(&d[8..12]);
                SyncRecord { next_attempt: u64::from_be_bytes(a), failures: u32::from_be_bytes(b) }
            })
            .unwrap_or_default();
        (record, cas)
    }

    /// Stores the record if nobody changed it since `cas` was read.
    pub fn store(&self, ctx: &dyn Context, key: &str, cas: Option<u32>) -> bool {
        let mut bytes = self.next_attempt.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.failures.to_be_bytes());
        ctx.set_shared_data(key, Some(&bytes), cas).is_ok()
    }
}

const SHARDS: u8 = 16;
const MAX_RECORDS_PER_SHARD: usize = 4096;
/// Largest value stored (a sealed session cookie is far below this).
const MAX_VALUE: usize = 4096;

/// Records kept in sharded shared-data entries: each record is
/// `digest (16) | expiry (8) | value length (2) | value`. A shard is rewritten
/// with compare-and-swap, dropping expired records on the way, so two workers
/// never both win a claim and the store cannot grow without bound.
pub struct HostShared<'a> {
    pub ctx: &'a dyn Context,
    pub prefix: &'a str,
}

struct Record<'d> {
    digest: &'d [u8],
    until: u64,
    value: &'d [u8],
}

fn records(data: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 26 {
            return None;
        }
        let mut until = [0u8; 8];
        until.copy_from_slice(&rest[16..24]);
        let len = usize::from(u16::from_be_bytes([rest[24], rest[25]]));
        let end = 26usize.checked_add(len).filter(|&e| e <= rest.len())?;
        let record = Record { digest: &rest[..16], until: u64::from_be_bytes(until), value: &rest[26..end] };
        rest = &rest[end..];
        Some(record)
    })
}

fn push(out: &mut Vec<u8>, digest: &[u8], until: u64, value: &[u8]) {
    out.extend_from_slice(digest);
    out.extend_from_slice(&until.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

enum Write {
    /// Insert only if no live record has this digest.
    IfAbsent,
    /// Insert or replace.
    Always,
}

impl HostShared<'_> {
    /// Creates the shard entries if missing, before traffic arrives: the
    /// host's compare-and-swap only protects entries that already exist.
    pub fn create_shards(ctx: &dyn Context, prefix: &str) {
        for shard in 0..SHARDS {
            let key = format!("{prefix}{shard}");
            if ctx.get_shared_data(&key).1.is_none() {
                let _ = ctx.set_shared_data(&key, Some(&[]), None);
            }
        }
    }

    fn shard_key(&self, digest: &[u8; 16]) -> String {
        format!("{}{}", self.prefix, digest[0] % SHARDS)
    }

    fn write(&mut self, key: &[u8], value: &[u8], until: u64, now: u64, mode: Write) -> bool {
        if value.len() > MAX_VALUE {
            return false;
        }
        let digest = shared_key(b"record", key);
        let shard_key = self.shard_key(&digest);
        for _ in 0..16 {
            let (data, cas) = self.ctx.get_shared_data(&shard_key);
            let data = data.unwrap_or_default();
            let mut kept = Vec::with_capacity(data.len() + 26 + value.len());
            let mut count = 0;
            for r in records(&data).filter(|r| r.until > now) {
                if r.digest == digest {
                    if matches!(mode, Write::IfAbsent) {
                        return false;
                    }
                    continue;
                }
                push(&mut kept, r.digest, r.until, r.value);
                count += 1;
            }
            if count >= MAX_RECORDS_PER_SHARD {
                log::warn!("oidc-edge: shared record store full; refusing (fail closed)");
                return false;
            }
            push(&mut kept, &digest, until, value);
            match self.ctx.set_shared_data(&shard_key, Some(&kept), cas) {
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
    fn claim(&mut self, key: &[u8], until: u64, now: u64) -> bool {
        self.write(key, &[], until, now, Write::IfAbsent)
    }

    fn get(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        let digest = shared_key(b"record", key);
        let (data, _) = self.ctx.get_shared_data(&self.shard_key(&digest));
        let data = data?;
        let found = records(&data).find(|r| r.digest == digest && r.until > now).map(|r| r.value.to_vec());
        found
    }

    fn put(&mut self, key: &[u8], value: &[u8], until: u64, now: u64) -> bool {
        self.write(key, value, until, now, Write::Always)
    }
}
