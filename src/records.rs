//! The byte format of a shard of shared short-lived records, and the pure
//! update rules for it. Hosts keep shards in their shared memory (proxy-wasm
//! shared data) and rewrite them with compare-and-swap; everything about
//! their content is decided here.
//!
//! A shard is a sequence of `digest (16) | expiry (8) | length (2) | value`.

/// One record of a shard, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'d> {
    /// Keyed digest of the record's key.
    pub digest: &'d [u8],
    /// Expiry, unix seconds.
    pub until: u64,
    /// Value (empty for a claim).
    pub value: &'d [u8],
}

/// The records of a shard; a truncated tail is ignored.
pub fn records(data: &[u8]) -> impl Iterator<Item = Record<'_>> {
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

/// How a write treats an existing live record with the same digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Insert only if there is none (a claim).
    IfAbsent,
    /// Insert or replace.
    Always,
}

/// Largest value a record holds.
pub const MAX_VALUE: usize = 4096;

/// The unexpired value under `digest`.
pub fn lookup(data: &[u8], digest: &[u8; 16], now: u64) -> Option<Vec<u8>> {
    records(data).find(|r| r.digest == digest && r.until > now).map(|r| r.value.to_vec())
}

/// The shard after writing a record, or `None` when the write must not
/// happen (a claim already held, or a value too large). Expired records are
/// dropped on the way. A shard holding `max` live records drops the one
/// closest to expiry rather than refusing: a flood of logins must not be able
/// to block refresh locks (which would stop revocation checks) or new logins.
/// The second value says whether a record was evicted.
pub fn write(data: &[u8], digest: &[u8; 16], value: &[u8], until: u64, now: u64, mode: Write, max: usize) -> Option<(Vec<u8>, bool)> {
    if value.len() > MAX_VALUE {
        return None;
    }
    let live: Vec<Record<'_>> = records(data).filter(|r| r.until > now).collect();
    if mode == Write::IfAbsent && live.iter().any(|r| r.digest == digest) {
        return None;
    }
    let others = live.iter().filter(|r| r.digest != digest).count();
    let evict =
        (others >= max).then(|| live.iter().enumerate().filter(|(_, r)| r.digest != digest).min_by_key(|(_, r)| r.until).map(|(i, _)| i));
    let evict = evict.flatten();
    let mut out = Vec::with_capacity(data.len() + 26 + value.len());
    for (i, r) in live.iter().enumerate() {
        if r.digest != digest && Some(i) != evict {
            push(&mut out, r.digest, r.until, r.value);
        }
    }
    push(&mut out, digest, until, value);
    Some((out, evict.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn claims_are_exclusive_until_they_expire() {
        let (shard, _) = write(&[], &d(1), b"", 100, 10, Write::IfAbsent, 8).unwrap();
        assert_eq!(write(&shard, &d(1), b"", 100, 50, Write::IfAbsent, 8), None);
        assert!(write(&shard, &d(2), b"", 100, 50, Write::IfAbsent, 8).is_some());
        assert!(write(&shard, &d(1), b"", 200, 100, Write::IfAbsent, 8).is_some(), "expired claims free the key");
    }

    #[test]
    fn values_are_replaced_and_expire() {
        let (shard, _) = write(&[], &d(1), b"old", 100, 10, Write::Always, 8).unwrap();
        let (shard, _) = write(&shard, &d(1), b"new", 100, 10, Write::Always, 8).unwrap();
        assert_eq!(lookup(&shard, &d(1), 50).as_deref(), Some(&b"new"[..]));
        assert_eq!(records(&shard).count(), 1);
        assert_eq!(lookup(&shard, &d(1), 100), None);
        let (shard, _) = write(&shard, &d(2), b"x", 300, 150, Write::Always, 8).unwrap();
        assert_eq!(records(&shard).count(), 1, "expired records are dropped when writing");
    }

    #[test]
    fn a_full_shard_evicts_the_record_closest_to_expiry() {
        let mut shard = Vec::new();
        for n in 0..4u8 {
            shard = write(&shard, &d(n), b"", 100 + u64::from(n), 10, Write::IfAbsent, 4).unwrap().0;
        }
        let (shard, evicted) = write(&shard, &d(9), b"lock", 500, 10, Write::IfAbsent, 4).unwrap();
        assert!(evicted);
        assert_eq!(lookup(&shard, &d(0), 10), None, "the earliest expiry went");
        assert!(lookup(&shard, &d(1), 10).is_some());
        assert_eq!(lookup(&shard, &d(9), 10).as_deref(), Some(&b"lock"[..]));
    }

    #[test]
    fn oversized_values_and_garbage() {
        assert_eq!(write(&[], &d(1), &vec![0u8; MAX_VALUE + 1], 100, 10, Write::Always, 8), None);
        assert_eq!(records(&[1, 2, 3]).count(), 0);
        let (mut shard, _) = write(&[], &d(1), b"abc", 100, 10, Write::Always, 8).unwrap();
        shard.truncate(shard.len() - 1);
        assert_eq!(records(&shard).count(), 0, "a truncated record is ignored");
    }
}
