//! Loading provider metadata as a state machine: discovery, then the JWKS,
//! then the documents to install; one loader at a time; back-off while the
//! provider is unreachable. The host only makes the calls it asks for (the
//! sidecar with its HTTP client, the filter with callouts) and keeps the
//! [`Schedule`] where its workers share it.

use crate::config::ProviderConfig;
use crate::events::Severity;
use crate::http::{HttpCall, HttpResponse};

use super::{discovery_call, jwks_call, jwks_from_response, Discovery, ProviderError, SharedProvider};

/// When metadata is refetched even if nothing failed (picks up key rotation).
pub const METADATA_MAX_AGE: u64 = 3600;

/// Seconds to wait after `failures` consecutive failed loads: 2, 4, 8, 10, 10 …
pub fn retry_delay(failures: u32) -> u64 {
    1u64.checked_shl(failures.min(5)).unwrap_or(32).min(10)
}

/// When the next load may start, and how many loads failed in a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Unix seconds before which no load starts.
    pub next_attempt: u64,
    /// Consecutive failures (for the back-off).
    pub failures: u32,
}

impl Schedule {
    /// Whether a load should start: the metadata loaded at `loaded_at` is
    /// missing or stale, and no attempt is scheduled later.
    pub fn due(&self, loaded_at: Option<u64>, now: u64) -> bool {
        let fresh = loaded_at.is_some_and(|at| now < at.saturating_add(METADATA_MAX_AGE));
        !fresh && now >= self.next_attempt
    }

    /// The schedule while a load runs: others wait long enough for its two
    /// calls, and take over if the loader vanished (a worker restarted).
    pub fn leased(&self, config: &ProviderConfig, now: u64) -> Schedule {
        Schedule { next_attempt: now + 2 * u64::from(config.timeout_ms).div_ceil(1000) + 2, ..*self }
    }

    fn succeeded(now: u64) -> Schedule {
        Schedule { next_attempt: now + METADATA_MAX_AGE, failures: 0 }
    }

    fn failed(&self, now: u64) -> Schedule {
        let failures = self.failures.saturating_add(1);
        Schedule { next_attempt: now + retry_delay(failures), failures }
    }

    /// `next_attempt (8) | failures (4)`, for hosts that share it as bytes.
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.next_attempt.to_be_bytes());
        out[8..].copy_from_slice(&self.failures.to_be_bytes());
        out
    }

    /// Inverse of [`Schedule::encode`]; anything else is a fresh schedule.
    pub fn decode(bytes: &[u8]) -> Schedule {
        match (bytes.get(..8).and_then(|b| b.try_into().ok()), bytes.get(8..12).and_then(|b| b.try_into().ok())) {
            (Some(at), Some(failures)) if bytes.len() == 12 => {
                Schedule { next_attempt: u64::from_be_bytes(at), failures: u32::from_be_bytes(failures) }
            }
            _ => Schedule::default(),
        }
    }
}

/// A load in progress: which document its pending call fetches.
#[derive(Debug)]
pub struct Load {
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    Discovery,
    Jwks { discovery: Vec<u8> },
}

/// What a load needs next.
#[derive(Debug)]
pub enum Progress {
    /// Make this call and hand its answer to [`Load::advance`].
    Fetch(Load, HttpCall),
    /// Both documents are valid: install them (and share them with other
    /// workers), and keep the schedule.
    Loaded {
        /// Discovery and JWKS.
        docs: SharedProvider,
        /// The next regular refetch.
        schedule: Schedule,
    },
    /// The load failed; keep the schedule, which says when to try again.
    Failed {
        /// Why.
        error: ProviderError,
        /// The back-off.
        schedule: Schedule,
    },
}

impl Load {
    /// Starts a load. `schedule` is the current one (for the back-off if it fails).
    pub fn start(config: &ProviderConfig, schedule: Schedule, now: u64) -> Progress {
        match discovery_call(config) {
            Ok(call) => Progress::Fetch(Load { stage: Stage::Discovery }, call),
            Err(error) => Progress::Failed { error, schedule: schedule.failed(now) },
        }
    }

    /// Continues with the answer to the last call. `schedule` is the current
    /// one, as the host holds it now (another worker may have changed it).
    pub fn advance(self, config: &ProviderConfig, response: HttpResponse, schedule: Schedule, now: u64) -> Progress {
        let failed = |error| Progress::Failed { error, schedule: schedule.failed(now) };
        match self.stage {
            Stage::Discovery => match Discovery::from_response(&response, config).and_then(|d| jwks_call(config, &d)) {
                Ok(call) => Progress::Fetch(Load { stage: Stage::Jwks { discovery: response.body } }, call),
                Err(e) => failed(e),
            },
            Stage::Jwks { discovery } => match jwks_from_response(&response) {
                Ok(_) => Progress::Loaded {
                    docs: SharedProvider { fetched_at: now, discovery, jwks: response.body },
                    schedule: Schedule::succeeded(now),
                },
                Err(e) => failed(e),
            },
        }
    }
}

impl Progress {
    /// The line a host logs when a load ends, the same on every front end.
    pub fn log_line(&self, config: &ProviderConfig) -> Option<(Severity, String)> {
        match self {
            Progress::Fetch(..) => None,
            Progress::Loaded { .. } => Some((Severity::Info, format!("provider metadata loaded for {}", config.issuer))),
            Progress::Failed { error, schedule } => {
                Some((Severity::Warn, format!("provider metadata not loaded ({error}); next attempt in {}s", retry_delay(schedule.failures))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{discovery_json, jwks_json, provider_config};

    fn ok(body: Vec<u8>) -> HttpResponse {
        HttpResponse { status: 200, body }
    }

    #[test]
    fn a_load_fetches_discovery_then_the_jwks_and_schedules_the_next() {
        let config = provider_config();
        let Progress::Fetch(load, call) = Load::start(&config, Schedule::default(), 100) else { panic!("no discovery call") };
        assert!(call.path.ends_with("/.well-known/openid-configuration"));
        let Progress::Fetch(load, call) = load.advance(&config, ok(discovery_json()), Schedule::default(), 101) else { panic!("no JWKS call") };
        assert!(call.path.contains("jwks"), "{}", call.path);
        match load.advance(&config, ok(jwks_json().to_string().into_bytes()), Schedule { next_attempt: 0, failures: 3 }, 102) {
            Progress::Loaded { docs, schedule } => {
                assert_eq!(docs.fetched_at, 102);
                assert_eq!(schedule, Schedule { next_attempt: 102 + METADATA_MAX_AGE, failures: 0 });
                assert!(docs.snapshot(&config).is_ok());
            }
            other => panic!("not loaded: {other:?}"),
        }
    }

    #[test]
    fn failures_back_off_and_name_the_cause() {
        let config = provider_config();
        let Progress::Fetch(load, _) = Load::start(&config, Schedule::default(), 100) else { panic!() };
        let unreachable = HttpResponse { status: 0, body: Vec::new() };
        let progress = load.advance(&config, unreachable, Schedule { next_attempt: 0, failures: 2 }, 100);
        let Progress::Failed { schedule, .. } = &progress else { panic!("{progress:?}") };
        assert_eq!(*schedule, Schedule { next_attempt: 108, failures: 3 });
        let (severity, line) = progress.log_line(&config).unwrap();
        assert_eq!(severity, Severity::Warn);
        assert!(line.contains("unreachable") && line.contains("8s"), "{line}");
        let Progress::Fetch(load, _) = Load::start(&config, Schedule::default(), 100) else { panic!() };
        let wrong = load.advance(&config, ok(b"{}".to_vec()), Schedule::default(), 100);
        assert!(matches!(wrong, Progress::Failed { .. }), "{wrong:?}");
    }

    #[test]
    fn a_load_is_due_when_metadata_is_missing_or_stale_and_no_attempt_is_pending() {
        let s = Schedule { next_attempt: 50, failures: 1 };
        assert!(!s.due(None, 49));
        assert!(s.due(None, 50));
        assert!(!s.due(Some(40), 50));
        assert!(s.due(Some(40), 40 + METADATA_MAX_AGE));
        assert_eq!(Schedule::decode(&s.encode()), s);
        assert_eq!(Schedule::decode(b"short"), Schedule::default());
        assert_eq!([2, 4, 8, 10, 10].to_vec(), (1..=5).map(retry_delay).collect::<Vec<_>>());
    }
}
