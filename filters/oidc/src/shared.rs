//! Cross-worker state in the host's shared data: the provider metadata, the
//! fetch schedule, and claims (single-use `state`, the JWKS refetch cooldown).
//! Writes use compare-and-swap so two workers never both win a claim.

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
const MAX_CLAIMS_PER_SHARD: usize = 4096;
const ENTRY: usize = 16 + 8;

/// Claims kept in sharded shared-data entries of (digest, expiry) pairs.
pub struct HostShared<'a> {
    pub ctx: &'a dyn Context,
    pub prefix: &'a str,
}

impl SharedState for HostShared<'_> {
    fn claim(&mut self, key: &[u8], until: u64, now: u64) -> bool {
        let digest = shared_key(b"claim", key);
        let shard_key = format!("{}{}", self.prefix, digest[0] % SHARDS);
        for _ in 0..16 {
            let (data, cas) = self.ctx.get_shared_data(&shard_key);
            let data = data.unwrap_or_default();
            let mut kept: Vec<u8> = Vec::with_capacity(data.len() + ENTRY);
            for entry in data.chunks_exact(ENTRY) {
                let mut exp = [0u8; 8];
                exp.copy_from_slice(&entry[16..]);
                let expiry = u64::from_be_bytes(exp);
                if expiry <= now {
                    continue;
                }
                if entry[..16] == digest {
                    return false;
                }
                kept.extend_from_slice(entry);
            }
            if kept.len() / ENTRY >= MAX_CLAIMS_PER_SHARD {
                log::warn!("oidc-edge: too many concurrent claims; refusing (fail closed)");
                return false;
            }
            kept.extend_from_slice(&digest);
            kept.extend_from_slice(&until.to_be_bytes());
            match self.ctx.set_shared_data(&shard_key, Some(&kept), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    log::warn!("oidc-edge: shared data unavailable ({status:?}); refusing claim");
                    return false;
                }
            }
        }
        false
    }
}
