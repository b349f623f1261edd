//! The sidecar as the coordinator of a fleet of filters (`oidc_edge::fleet`):
//! it refreshes sessions for them under the fleet's lock, takes their
//! sign-outs, and lists the revocations they have not seen. Every call
//! carries the fleet key, derived from the session secret.

use oidc_edge::fleet::{self, KEY_HEADER};
use oidc_edge::revocation::{Revocation, RECORD};
use oidc_edge::{SecureRandom, Step};

use super::{now, Answer, App, Inbound, Turns};
use crate::log::Level;
use crate::random::OsRandom;

/// A fresh log epoch: cursors from before a restart, or from another
/// sidecar behind the same address, get the whole list again.
pub fn epoch() -> u64 {
    let mut bytes = [0u8; 8];
    OsRandom.fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

impl App {
    /// Answers a fleet endpoint, or `None` if `path` is not one.
    pub(super) async fn fleet(&self, path: &str, req: &Inbound) -> Option<Answer> {
        if path != fleet::REFRESH_PATH && path != fleet::REVOCATIONS_PATH {
            return None;
        }
        if !fleet::key_matches(&self.config.session.sealer, req.header(KEY_HEADER).unwrap_or("")) {
            return Some(Answer::refused(
                403,
                "forbidden",
                "Fleet calls carry the fleet key.",
                Level::Warn,
                "fleet call without the fleet key refused",
                &[
                    ("peer", req.peer.to_string().into()),
                    ("hint", "give the filters and the sidecar the same session.secrets (the key is derived from the first)".into()),
                ],
            ));
        }
        Some(match (path, req.method.as_str()) {
            (fleet::REFRESH_PATH, "POST") => self.refresh_for_filter(&req.body).await,
            (fleet::REVOCATIONS_PATH, "POST") => self.revocations_from_filter(&req.body).await,
            (fleet::REVOCATIONS_PATH, "GET") => self.revocations_for_filter(&req.path_and_query),
            _ => Answer::plain(405, "method not allowed\n"),
        })
    }

    async fn refresh_for_filter(&self, body: &[u8]) -> Answer {
        let Ok(cookie) = std::str::from_utf8(body) else { return Answer::plain(400, "the body is a session cookie\n") };
        let mut turns = Turns::default();
        let step = self.run(&mut turns, |driver, lend| driver.on_fleet_refresh(cookie, lend));
        let step = self.finish(&mut turns, step).await;
        self.record(&turns.counted);
        match step {
            Step::Respond(r) => Answer::from_response(r),
            _ => Answer::plain(500, "internal error\n"),
        }
    }

    async fn revocations_from_filter(&self, body: &[u8]) -> Answer {
        if body.is_empty() || !body.len().is_multiple_of(RECORD) {
            return Answer::plain(400, "the body is a list of revocations\n");
        }
        let revoked = Revocation::decode_all(body);
        self.learn(&revoked);
        let mut turns = Turns { revoked, ..Turns::default() };
        self.settle(&mut turns).await;
        Answer { status: 204, headers: vec![("cache-control".into(), "no-store".into())], body: Vec::new() }
    }

    fn revocations_for_filter(&self, path_and_query: &str) -> Answer {
        let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
        let after = oidc_edge::encoding::parse_query(query).into_iter().find(|(k, _)| k == "after").map(|(_, v)| v).unwrap_or_default();
        let (cursor, revoked) = self.lock().log.after(&after, now());
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "application/octet-stream".into()), ("cache-control".into(), "no-store".into())],
            body: fleet::encode_poll(&cursor, &revoked),
        }
    }
}
