//! What the sealed cookies carry, in a compact binary form: no JSON on the
//! hot path, and a session with five groups stays far below the cookie limits.

/// An authenticated user, as the session cookie remembers them.
/// `Debug` redacts the refresh token.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// The IdP's stable subject identifier.
    pub sub: String,
    /// The name passed upstream as the user (`preferred_username`, else `sub`).
    pub user: String,
    /// Email address, when the IdP released one.
    pub email: Option<String>,
    /// Whether the IdP vouches for the email address.
    pub email_verified: bool,
    /// Display name.
    pub name: Option<String>,
    /// Group names, as the IdP sent them.
    pub groups: Vec<String>,
    /// When the user logged in at the IdP (unix seconds).
    pub login_at: u64,
    /// When the IdP last confirmed this session (login or refresh).
    pub checked_at: u64,
    /// Refresh token, when the IdP issued one.
    pub refresh_token: Option<String>,
    /// Random at login and kept across refreshes: what sign-out revokes.
    pub id: [u8; 16],
    /// The provider's session id (the ID token's `sid`), which back-channel
    /// logout names.
    pub idp_sid: Option<String>,
    /// When the user last authenticated at the provider (`auth_time`; the
    /// login's time when the provider does not say).
    pub auth_time: u64,
    /// How (`acr`, `amr`): what step-up rules check.
    pub acr: Option<String>,
    /// Authentication methods (`amr`), e.g. `hwk`, `phr` (passkey), `pwd`.
    pub amr: Vec<String>,
    /// What the login that made this session asked the provider for beyond
    /// a plain sign-in (step-up), if anything: a session that falls short of
    /// what its own login asked is the provider's answer, not an old sign-in.
    pub asked: Option<Asked>,
}

/// A step-up login's demands, as sent to the provider.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Asked {
    /// `max_age` (seconds), when the login asked for a recent sign-in.
    pub max_age: Option<u64>,
    /// `acr_values`, when the login asked for a method.
    pub acr: Vec<String>,
}

/// A login in progress: what the callback needs to finish it. Travels in a
/// short-lived sealed cookie scoped to the callback path. `Debug` redacts
/// the state, nonce and verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginState {
    /// The `state` parameter sent to the IdP.
    pub state: String,
    /// The `nonce` the ID token must echo.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// Where to send the browser afterwards: a validated relative URL.
    pub return_to: String,
    /// The `redirect_uri` used in the authorization request.
    pub redirect_uri: String,
    /// What a step-up login asked for (see [`Session::asked`]).
    pub asked: Option<Asked>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.sub)
            .field("user", &self.user)
            .field("email", &self.email)
            .field("email_verified", &self.email_verified)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("login_at", &self.login_at)
            .field("checked_at", &self.checked_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("idp_sid", &self.idp_sid)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("return_to", &self.return_to)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Cookies written before sessions had an id; read, never written.
const SESSION_V1: u8 = 1;
/// Cookies written before sessions carried the sign-in's time and method.
const SESSION_V2: u8 = 2;
/// Cookies written before sessions remembered what their login asked for.
const SESSION_V3: u8 = 3;
const SESSION_V4: u8 = 4;
/// Login states written before step-up logins were marked as such.
const LOGIN_V1: u8 = 1;
const LOGIN_V2: u8 = 2;

impl Session {
    /// Encodes the session for sealing.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128));
        w.0.push(SESSION_V4);
        w.str(&self.sub);
        w.str(&self.user);
        w.opt(self.email.as_deref());
        w.0.push(u8::from(self.email_verified));
        w.opt(self.name.as_deref());
        w.varint(self.groups.len() as u64);
        for g in &self.groups {
            w.str(g);
        }
        w.varint(self.login_at);
        w.varint(self.checked_at);
        w.opt(self.refresh_token.as_deref());
        w.0.extend_from_slice(&self.id);
        w.opt(self.idp_sid.as_deref());
        w.varint(self.auth_time);
        w.opt(self.acr.as_deref());
        w.varint(self.amr.len() as u64);
        for m in &self.amr {
            w.str(m);
        }
        w.asked(self.asked.as_ref());
        w.0
    }

    /// Decodes a session; `None` for anything not produced by [`Session::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Session> {
        let mut r = Reader(bytes);
        let version = r.byte()?;
        if !(SESSION_V1..=SESSION_V4).contains(&version) {
            return None;
        }
        let sub = r.str()?;
        let user = r.str()?;
        let email = r.opt()?;
        let email_verified = match r.byte()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let name = r.opt()?;
        let count = r.varint()?;
        if count > 4096 {
            return None;
        }
        let mut groups = Vec::with_capacity(count as usize);
        for _ in 0..count {
            groups.push(r.str()?);
        }
        let login_at = r.varint()?;
        let checked_at = r.varint()?;
        let refresh_token = r.opt()?;
        let (id, idp_sid) = if version == SESSION_V1 {
            // Stable for the life of that cookie, so it can still be revoked.
            (v1_session_id(&sub, login_at), None)
        } else {
            (r.bytes16()?, r.opt()?)
        };
        let (auth_time, acr, amr) = if version <= SESSION_V2 {
            (login_at, None, Vec::new())
        } else {
            let auth_time = r.varint()?;
            let acr = r.opt()?;
            let count = r.varint()?;
            if count > 16 {
                return None;
            }
            let mut amr = Vec::with_capacity(count as usize);
            for _ in 0..count {
                amr.push(r.str()?);
            }
            (auth_time, acr, amr)
        };
        let asked = if version > SESSION_V3 { r.asked()? } else { None };
        r.0.is_empty().then_some(Session {
            sub,
            user,
            email,
            email_verified,
            name,
            groups,
            login_at,
            checked_at,
            refresh_token,
            id,
            idp_sid,
            auth_time,
            acr,
            amr,
            asked,
        })
    }
}

fn v1_session_id(sub: &str, login_at: u64) -> [u8; 16] {
    let mac = crate::seal::hmac_sha256(b"oidc-edge/v1/session-id", &[sub.as_bytes(), &login_at.to_be_bytes()]);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id
}

impl LoginState {
    /// Encodes the login state for sealing.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256));
        w.0.push(LOGIN_V2);
        w.str(&self.state);
        w.str(&self.nonce);
        w.str(&self.verifier);
        w.str(&self.return_to);
        w.str(&self.redirect_uri);
        w.asked(self.asked.as_ref());
        w.0
    }

    /// Decodes a login state; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<LoginState> {
        let mut r = Reader(bytes);
        let version = r.byte()?;
        if !(LOGIN_V1..=LOGIN_V2).contains(&version) {
            return None;
        }
        let (state, nonce, verifier, return_to, redirect_uri) = (r.str()?, r.str()?, r.str()?, r.str()?, r.str()?);
        let asked = if version >= LOGIN_V2 { r.asked()? } else { None };
        r.0.is_empty().then_some(LoginState { state, nonce, verifier, return_to, redirect_uri, asked })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut n: u64) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
    }
    fn asked(&mut self, asked: Option<&Asked>) {
        let Some(a) = asked else {
            self.0.push(0);
            return;
        };
        self.0.push(1);
        match a.max_age {
            None => self.0.push(0),
            Some(m) => {
                self.0.push(1);
                self.varint(m);
            }
        }
        self.varint(a.acr.len() as u64);
        for v in &a.acr {
            self.str(v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            // One spelling per number: no bits beyond 64, no zero last byte
            // after the first (what `Writer::varint` never writes is refused).
            if (shift == 63 && b > 1) || (shift > 0 && b == 0) {
                return None;
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    fn str(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }
    fn bytes16(&mut self) -> Option<[u8; 16]> {
        let (head, rest) = self.0.split_first_chunk::<16>()?;
        self.0 = rest;
        Some(*head)
    }
    fn opt(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(self.str()?)),
            _ => None,
        }
    }
    fn asked(&mut self) -> Option<Option<Asked>> {
        match self.byte()? {
            0 => return Some(None),
            1 => {}
            _ => return None,
        }
        let max_age = match self.byte()? {
            0 => None,
            1 => Some(self.varint()?),
            _ => return None,
        };
        let count = self.varint()?;
        if count > 16 {
            return None;
        }
        let mut acr = Vec::with_capacity(count as usize);
        for _ in 0..count {
            acr.push(self.str()?);
        }
        Some(Some(Asked { max_age, acr }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Session {
        Session {
            sub: "3f2b8a8e-6d1c-4d1e-9a53-0c7c8a1f2b3c".into(),
            user: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice Admin".into()),
            groups: vec!["admins".into(), "users".into(), "media".into(), "home".into(), "family".into()],
            login_at: 1_700_000_000,
            checked_at: 1_700_000_100,
            refresh_token: Some("x".repeat(43)),
            id: [7; 16],
            idp_sid: Some("idp-session-1".into()),
            auth_time: 1_700_000_000,
            acr: None,
            amr: vec!["phr".into()],
            asked: Some(Asked { max_age: Some(30), acr: vec!["urn:mace:incommon:iap:silver".into()] }),
        }
    }

    /// The version 2 encoding of `s` (without the sign-in's time and method).
    fn v2(s: &Session) -> Vec<u8> {
        let plain = Session { auth_time: s.login_at, acr: None, amr: Vec::new(), asked: None, ..s.clone() };
        let mut bytes = plain.encode();
        let mut tail = Writer(Vec::new());
        tail.varint(plain.login_at);
        bytes.truncate(bytes.len() - tail.0.len() - 3);
        bytes[0] = SESSION_V2;
        bytes
    }

    /// Cookies sealed before sessions had an id still open, each with an id
    /// of its own that stays the same for that cookie.
    #[test]
    fn version_1_sessions_decode_with_a_stable_id() {
        let s = Session { id: [0; 16], idp_sid: None, auth_time: sample().login_at, amr: Vec::new(), asked: None, ..sample() };
        let mut v1 = v2(&s);
        v1[0] = SESSION_V1;
        v1.truncate(v1.len() - 16 - 1);
        let decoded = Session::decode(&v1).expect("a version 1 session decodes");
        assert_eq!(decoded.id, v1_session_id(&s.sub, s.login_at));
        assert_eq!(Session { id: [0; 16], ..decoded }, s);
        let other = Session { login_at: s.login_at + 1, ..s.clone() };
        assert_ne!(v1_session_id(&other.sub, other.login_at), decoded.id);
    }

    #[test]
    fn version_2_sessions_decode_with_the_login_as_their_sign_in() {
        let s = sample();
        let decoded = Session::decode(&v2(&s)).expect("a version 2 session decodes");
        assert_eq!((decoded.auth_time, decoded.acr.clone(), decoded.amr.len()), (s.login_at, None, 0));
        assert_eq!(Session { auth_time: s.auth_time, amr: s.amr.clone(), asked: s.asked.clone(), ..decoded }, s);
    }

    #[test]
    fn version_3_sessions_decode_as_plain_logins() {
        let s = Session { asked: None, ..sample() };
        let mut v3 = s.encode();
        v3.pop();
        v3[0] = SESSION_V3;
        assert_eq!(Session::decode(&v3), Some(s));
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(Session::decode(&s.encode()), Some(s));
        let l = LoginState {
            state: "st".into(),
            nonce: "no".into(),
            verifier: "ve".into(),
            return_to: "/a?b=c".into(),
            redirect_uri: "https://x/oauth2/callback".into(),
            asked: Some(Asked { max_age: None, acr: vec!["gold".into()] }),
        };
        assert_eq!(LoginState::decode(&l.encode()), Some(l.clone()));
        // A login begun before the upgrade finishes after it.
        let plain = LoginState { asked: None, ..l };
        let mut v1 = plain.encode();
        v1.pop();
        v1[0] = LOGIN_V1;
        assert_eq!(LoginState::decode(&v1), Some(plain));
    }

    #[test]
    fn garbage_never_decodes_to_a_session() {
        let enc = sample().encode();
        for len in 0..enc.len() {
            assert_eq!(Session::decode(&enc[..len]), None);
        }
        let mut extra = enc.clone();
        extra.push(0);
        assert_eq!(Session::decode(&extra), None);
        assert_eq!(Session::decode(&[SESSION_V1, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn each_session_has_one_encoding() {
        // Found by the session fuzz target: other spellings of the same
        // session decoded. Only what `encode` writes decodes now.
        let s = Session { email: None, name: None, groups: vec![], refresh_token: None, ..sample() };
        let enc = s.encode();
        let verified_at = 1 + 1 + s.sub.len() + 1 + s.user.len() + 1;
        let mut other_bool = enc.clone();
        other_bool[verified_at] = 5;
        assert_eq!(Session::decode(&other_bool), None);
        let groups_at = verified_at + 2;
        let mut long_zero = enc.clone();
        long_zero.splice(groups_at..groups_at + 1, [0x80, 0x00]);
        assert_eq!(Session::decode(&long_zero), None);
        let mut too_wide = enc[..groups_at + 1].to_vec();
        too_wide.extend_from_slice(&[0xff; 9]);
        too_wide.push(0x02);
        too_wide.extend_from_slice(&enc[groups_at + 1 + 5..]);
        assert_eq!(Session::decode(&too_wide), None);
        assert_eq!(Session::decode(&enc), Some(s));
    }
}
