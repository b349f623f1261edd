//! Per-route policy: which routes exist, who may use them, and what is
//! injected toward their upstream. Compiled once from the config.

use std::sync::Arc;

use std::net::IpAddr;

use crate::headers::HeaderNames;
use crate::net::IpNet;
use crate::secret::SecretString;
use crate::session::{Asked, Session};

/// A host pattern: `*` (any), `*.example.com` (any subdomain) or an exact host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches every host.
    Any,
    /// Matches hosts ending in `.suffix` (not the bare suffix).
    Subdomain(String),
    /// Matches one host.
    Exact(String),
}

impl HostPattern {
    /// Parses a pattern; `None` when it is not a plausible host.
    pub fn parse(text: &str) -> Option<HostPattern> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            return Some(HostPattern::Any);
        }
        let (pattern, host) = match t.strip_prefix("*.") {
            Some(rest) => (HostPattern::Subdomain(rest.to_owned()), rest.to_owned()),
            None => (HostPattern::Exact(t.clone()), t),
        };
        let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':' || b == b'_');
        valid.then_some(pattern)
    }

    /// Whether `host` (no port, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len() + 1
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Who may pass a protected route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Any of these groups admits.
    pub groups: Vec<String>,
    /// Any of these exact (lower-cased) email addresses admits.
    pub emails: Vec<String>,
    /// Any address in these (lower-cased) domains admits.
    pub email_domains: Vec<String>,
}

/// Why an authenticated user is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// None of the route's groups, emails or domains matched.
    NotAllowed,
    /// An email rule would have matched, but the IdP has not verified the address.
    UnverifiedEmail,
}

impl Requirement {
    /// Whether the requirement admits every authenticated user.
    pub fn is_any_user(&self) -> bool {
        self.groups.is_empty() && self.emails.is_empty() && self.email_domains.is_empty()
    }

    /// Checks a session against the requirement.
    pub fn check(&self, session: &Session, trust_unverified_email: bool) -> Result<(), Denial> {
        if self.is_any_user() || session.groups.iter().any(|g| self.groups.contains(g)) {
            return Ok(());
        }
        let Some(email) = session.email.as_deref() else {
            return Err(Denial::NotAllowed);
        };
        let email = email.to_ascii_lowercase();
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        let email_matches = self.emails.contains(&email) || self.email_domains.iter().any(|d| d == domain);
        match (email_matches, session.email_verified || trust_unverified_email) {
            (true, true) => Ok(()),
            (true, false) => Err(Denial::UnverifiedEmail),
            (false, _) => Err(Denial::NotAllowed),
        }
    }
}

/// What a route demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, no login.
    Public,
    /// A logged-in user meeting the requirement.
    Protected(Requirement),
}

/// One route of the table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in the config, for log lines.
    pub index: usize,
    /// Host pattern.
    pub host: HostPattern,
    /// Path prefix, matched by whole segments.
    pub prefix: String,
    /// Who may pass.
    pub rule: Rule,
    /// Always answer 401 instead of redirecting to login.
    pub api: bool,
    /// Headers set toward the upstream, overwriting client values.
    pub inject: Vec<(Arc<str>, SecretString)>,
    /// Identity header names for this route.
    pub headers: HeaderNames,
    /// The methods the route covers (upper case); `None`: every method.
    pub methods: Option<Vec<String>>,
    /// Clients that pass without a login, and clients always refused.
    pub networks: Networks,
    /// A CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) passes without a session.
    pub cors_preflight: bool,
    /// API clients with `Authorization: Bearer <JWT>`, when accepted.
    pub bearer: Option<crate::bearer::BearerRule>,
    /// The header that carries a signed identity token, when asked for.
    pub signed_identity: Option<Arc<str>>,
    /// How recent and how strong the sign-in must be.
    pub step_up: StepUp,
}

/// A route's demands on the sign-in itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    /// The sign-in (`auth_time`) at most this many seconds old.
    pub max_auth_age: Option<u64>,
    /// `acr` one of these.
    pub acr: Vec<String>,
    /// `amr` containing one of these.
    pub amr: Vec<String>,
}

/// What a sign-in lacks for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUpNeed {
    /// A more recent sign-in (`max_auth_age`).
    Fresher,
    /// Another method (`acr` / `amr`).
    Stronger,
}

impl StepUp {
    /// Whether the route asks anything of the sign-in.
    pub fn is_empty(&self) -> bool {
        self.max_auth_age.is_none() && self.acr.is_empty() && self.amr.is_empty()
    }

    /// What a step-up login for this route asks the provider for.
    pub fn to_ask(&self) -> Asked {
        Asked { max_age: self.max_auth_age, acr: self.acr.clone() }
    }

    /// Whether the provider already fell short of this route when it made
    /// `session`: that session's own login asked for everything the route
    /// wants (a `max_age` no longer, `acr_values` the route accepts) and the
    /// sign-in it got did not meet it even then. Asking again would go
    /// round in a loop; a session that merely grew old is asked again.
    pub fn refused_by_provider(&self, session: &Session) -> bool {
        let Some(asked) = &session.asked else { return false };
        let fresh_enough = self.max_auth_age.is_none_or(|max| asked.max_age.is_some_and(|m| m <= max));
        let method_asked = self.acr.is_empty() || (!asked.acr.is_empty() && asked.acr.iter().all(|a| self.acr.contains(a)));
        fresh_enough && method_asked && self.unmet(session, session.login_at).is_some()
    }

    /// What `session` lacks, if anything.
    pub fn unmet(&self, session: &Session, now: u64) -> Option<StepUpNeed> {
        let method_ok = (self.acr.is_empty() || session.acr.as_ref().is_some_and(|a| self.acr.contains(a)))
            && (self.amr.is_empty() || session.amr.iter().any(|m| self.amr.contains(m)));
        if !method_ok {
            return Some(StepUpNeed::Stronger);
        }
        match self.max_auth_age {
            Some(max) if now.saturating_sub(session.auth_time) > max => Some(StepUpNeed::Fresher),
            _ => None,
        }
    }
}

/// A route's network rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks {
    /// Clients in these ranges pass without a login.
    pub allow: Vec<IpNet>,
    /// Clients in these ranges are refused, logged in or not.
    pub deny: Vec<IpNet>,
}

/// What a route's network rules say about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkVerdict {
    /// No rule applies: the route's own rule decides.
    Unlisted,
    /// In an allowed range: no login needed.
    Allowed,
    /// In a denied range, or unknown where ranges are denied.
    Denied,
}

impl Networks {
    /// Whether the route has any network rule.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The verdict for `client`. An unknown address (none, or not enough
    /// trusted hops) is never allowed, and is refused where ranges are denied.
    pub fn verdict(&self, client: Option<IpAddr>) -> NetworkVerdict {
        match client {
            None if !self.deny.is_empty() => NetworkVerdict::Denied,
            None => NetworkVerdict::Unlisted,
            Some(ip) if self.deny.iter().any(|n| n.contains(ip)) => NetworkVerdict::Denied,
            Some(ip) if self.allow.iter().any(|n| n.contains(ip)) => NetworkVerdict::Allowed,
            Some(_) => NetworkVerdict::Unlisted,
        }
    }
}

impl Route {
    /// Whether the route covers `host`, the normalized `path` and `method`.
    ///
    /// Protected routes match the path without regard to case and public ones
    /// with it, so that case folding only ever makes a request face a stricter
    /// rule (`/ADMIN` on a case-insensitive upstream is still the admin area).
    /// Methods match without regard to case: an upstream that reads `post`
    /// as POST must not see it pass a rule written for GET.
    pub fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        self.host.matches(host)
            && self.methods.as_ref().is_none_or(|m| m.iter().any(|x| x.eq_ignore_ascii_case(method)))
            && prefix_matches(&self.prefix, path, matches!(self.rule, Rule::Protected(_)))
    }
}

fn prefix_matches(prefix: &str, path: &str, fold_case: bool) -> bool {
    let eq = |a: &str, b: &str| if fold_case { a.eq_ignore_ascii_case(b) } else { a == b };
    if prefix == "/" {
        return true;
    }
    let bare = prefix.strip_suffix('/').unwrap_or(prefix);
    if path.len() < bare.len() || !path.is_char_boundary(bare.len()) || !eq(&path[..bare.len()], bare) {
        return false;
    }
    // `/admin` and `/admin/` both cover `/admin` and `/admin/…`, never `/administrator`.
    matches!(path.as_bytes().get(bare.len()), None | Some(b'/'))
}

/// The ordered route table: first match wins, no match is a denial.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Computed once: hosts ask on every request.
    strips_bearer_tokens: bool,
    use_client_address: bool,
}

impl RouteTable {
    /// Builds the table from compiled routes, in config order.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let strips_bearer_tokens = routes.iter().any(|r| r.bearer.as_ref().is_some_and(|b| !b.forward));
        let use_client_address = routes.iter().any(|r| !r.networks.is_empty());
        RouteTable { routes, strips_bearer_tokens, use_client_address }
    }

    /// The first route covering the request.
    pub fn find(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path, method))
    }

    /// Whether some route takes bearer tokens and removes them before the
    /// upstream (forward-auth proxies must then copy `Authorization` from
    /// the sidecar's answer).
    pub fn strips_bearer_tokens(&self) -> bool {
        self.strips_bearer_tokens
    }

    /// Whether any route decides on the client's address (hosts read it
    /// only then).
    pub fn use_client_address(&self) -> bool {
        self.use_client_address
    }

    /// The route at config index `index`.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// All routes (for computing the strip set).
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, rule: Rule) -> Route {
        Route {
            index: 0,
            host: HostPattern::Any,
            prefix: prefix.into(),
            rule,
            api: false,
            inject: vec![],
            headers: HeaderNames::default(),
            methods: None,
            networks: Networks::default(),
            cors_preflight: false,
            bearer: None,
            signed_identity: None,
            step_up: StepUp::default(),
        }
    }

    #[test]
    fn host_patterns() {
        let sub = HostPattern::parse("*.Example.com").unwrap();
        assert!(sub.matches("grafana.example.com"));
        assert!(sub.matches("A.B.EXAMPLE.COM"));
        assert!(!sub.matches("example.com"));
        assert!(!sub.matches("evilexample.com"));
        assert!(HostPattern::parse("app.test").unwrap().matches("APP.test"));
        assert!(HostPattern::parse("bad host").is_none());
        assert!(HostPattern::parse("").is_none());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = route("/admin/", Rule::Protected(Requirement::default()));
        assert!(r.matches("h", "/admin", "GET"));
        assert!(r.matches("h", "/admin/", "GET"));
        assert!(r.matches("h", "/admin/x", "GET"));
        assert!(r.matches("h", "/ADMIN/x", "GET"));
        assert!(!r.matches("h", "/administrator", "GET"));
        let p = route("/public", Rule::Public);
        assert!(p.matches("h", "/public/a", "GET"));
        assert!(!p.matches("h", "/PUBLIC/a", "GET"));
        assert!(!p.matches("h", "/publicity", "GET"));
    }

    #[test]
    fn methods_match_in_any_case() {
        let r = Route { methods: Some(vec!["GET".into(), "HEAD".into()]), ..route("/wiki/", Rule::Public) };
        assert!(r.matches("h", "/wiki/a", "GET") && r.matches("h", "/wiki/a", "head"));
        assert!(!r.matches("h", "/wiki/a", "POST") && !r.matches("h", "/wiki/a", "post"));
    }

    #[test]
    fn network_verdicts() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let n = Networks {
            allow: vec![IpNet::parse("192.168.0.0/16").unwrap()],
            deny: vec![IpNet::parse("192.168.9.0/24").unwrap()],
        };
        assert_eq!(n.verdict(ip("192.168.1.2")), NetworkVerdict::Allowed);
        assert_eq!(n.verdict(ip("192.168.9.2")), NetworkVerdict::Denied, "deny wins");
        assert_eq!(n.verdict(ip("10.0.0.1")), NetworkVerdict::Unlisted);
        assert_eq!(n.verdict(None), NetworkVerdict::Denied, "unknown where ranges are denied");
        let allow_only = Networks { deny: vec![], ..n };
        assert_eq!(allow_only.verdict(None), NetworkVerdict::Unlisted, "unknown is never allowed");
        assert_eq!(allow_only.verdict(ip("::ffff:192.168.1.2")), NetworkVerdict::Allowed);
    }

    #[test]
    fn requirement_checks() {
        let s = Session {
            groups: vec!["users".into()],
            email: Some("Bob@Example.com".into()),
            email_verified: false,
            ..Session::default()
        };
        let admins = Requirement { groups: vec!["admins".into()], ..Default::default() };
        assert_eq!(admins.check(&s, false), Err(Denial::NotAllowed));
        let users = Requirement { groups: vec!["admins".into(), "users".into()], ..Default::default() };
        assert_eq!(users.check(&s, false), Ok(()));
        let by_domain = Requirement { email_domains: vec!["example.com".into()], ..Default::default() };
        assert_eq!(by_domain.check(&s, false), Err(Denial::UnverifiedEmail));
        assert_eq!(by_domain.check(&s, true), Ok(()));
        let by_email = Requirement { emails: vec!["bob@example.com".into()], ..Default::default() };
        assert_eq!(by_email.check(&Session { email_verified: true, ..s.clone() }, false), Ok(()));
        let no_email = Session { email: None, ..s };
        assert_eq!(by_email.check(&no_email, true), Err(Denial::NotAllowed));
    }
}
