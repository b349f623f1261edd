//! Local responses: small HTML pages for people, small JSON bodies for API
//! clients. Messages are escaped and never include secrets, tokens or cookies.

use crate::encoding::html_escape;

/// A response the host sends instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, including any `set-cookie`.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Adds `set-cookie` headers.
    pub fn with_cookies(mut self, cookies: impl IntoIterator<Item = String>) -> Response {
        self.headers.extend(cookies.into_iter().map(|c| ("set-cookie".to_owned(), c)));
        self
    }

    /// The value of the first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn common(status: u16, content_type: &str, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: vec![
            ("content-type".into(), content_type.into()),
            ("cache-control".into(), "no-store".into()),
            ("x-content-type-options".into(), "nosniff".into()),
            // No page of the gate may be framed: the "Sign out?" button would
            // be a click another site could steal.
            ("x-frame-options".into(), "DENY".into()),
        ],
        body,
    }
}

/// A redirect that must not be cached.
pub fn redirect(location: &str) -> Response {
    Response {
        status: 302,
        headers: vec![("location".into(), location.into()), ("cache-control".into(), "no-store".into())],
        body: Vec::new(),
    }
}

/// An HTML page. `message` is plain text; `link` is an optional (href, label),
/// whose href must already be a safe relative URL.
pub fn page(status: u16, title: &str, message: &str, link: Option<(&str, &str)>) -> Response {
    let link_html = link
        .map(|(href, label)| format!("<p><a href=\"{}\">{}</a></p>", html_escape(href), html_escape(label)))
        .unwrap_or_default();
    html(status, "", title, message, &link_html)
}

/// An HTML page whose button POSTs to `action` (a safe relative URL): how a
/// state-changing request that arrived cross-site is confirmed by the user.
pub fn confirm(title: &str, message: &str, action: &str, button: &str) -> Response {
    let form =
        format!("<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>", html_escape(action), html_escape(button));
    html(200, "", title, message, &form)
}

/// The look every page shares, the echo upstream's demo page included
/// (tests/upstream/echo.py starts its own style with this text): system
/// font, AA contrast in light and dark, visible focus. It ships in the
/// `.wasm`, so it stays this small.
const STYLE: &str = ":root{color-scheme:light dark;--f:#1d2125;--b:#fff;--a:#0b57d0}\
@media(prefers-color-scheme:dark){:root{--f:#e3e6e8;--b:#16191d;--a:#8ab4f8}}\
body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:var(--f);background:var(--b)}\
h1{font-size:1.5em;line-height:1.2}a{color:var(--a)}\
button{font:inherit;padding:.4em 1.2em;border:2px solid var(--a);border-radius:.3em;color:var(--b);background:var(--a);cursor:pointer}\
:focus-visible{outline:3px solid var(--a);outline-offset:2px}";

/// The page skeleton: `title` and `message` are escaped; `head` and `extra`
/// are trusted HTML.
fn html(status: u16, head: &str, title: &str, message: &str, extra: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{head}\
         <title>{t}</title><style>{STYLE}</style></head><body><main><h1>{t}</h1><p>{m}</p>{extra}</main></body></html>\n",
        t = html_escape(title),
        m = html_escape(message),
    );
    common(status, "text/html; charset=utf-8", body.into_bytes()).with_header("content-security-policy", CSP)
}

/// The pages' policy: no script, no fetch, no framing, only inline style.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

/// A page that sends the browser on with a same-site navigation (used after
/// login when the session cookie is `SameSite=Strict`: a cross-site redirect
/// chain would arrive without it and loop back to the IdP).
pub fn continue_page(location: &str) -> Response {
    let href = html_escape(location);
    let refresh = format!("<meta http-equiv=\"refresh\" content=\"0;url={href}\">");
    html(200, &refresh, "Signed in", "Taking you back.", &format!("<p><a href=\"{href}\">Continue</a></p>"))
}

/// A JSON body `{"error": code, "message": message, ...extra}`.
pub fn json(status: u16, code: &str, message: &str, extra: &[(&str, &str)]) -> Response {
    let mut obj = serde_json::Map::new();
    obj.insert("error".into(), code.into());
    obj.insert("message".into(), message.into());
    for (k, v) in extra {
        obj.insert((*k).into(), (*v).into());
    }
    let body = serde_json::Value::Object(obj).to_string().into_bytes();
    common(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_escaped_accessible_and_locked_down() {
        let r = page(403, "<Denied>", "a & \"b\"", Some(("/x?a=1&b=2", "<go>")));
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.starts_with("<!doctype html><html lang=\"en\">"), "{body}");
        assert!(body.contains("<main><h1>&lt;Denied&gt;</h1><p>a &amp; &quot;b&quot;</p>"), "{body}");
        assert!(body.contains("<a href=\"/x?a=1&amp;b=2\">&lt;go&gt;</a>"), "{body}");
        assert!(body.contains("prefers-color-scheme:dark"), "{body}");
        assert!(!body.contains("<script"), "{body}");
        assert_eq!(r.header("content-security-policy"), Some(CSP));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    #[test]
    fn confirm_is_a_real_button_in_a_post_form() {
        let body = String::from_utf8_lossy(&confirm("Sign out?", "Sure?", "/out?rd=%2F\"x", "Sign out").body).into_owned();
        assert!(body.contains("<form method=\"post\" action=\"/out?rd=%2F&quot;x\"><button type=\"submit\">Sign out</button></form>"), "{body}");
    }

    #[test]
    fn continue_page_refreshes_to_the_escaped_location() {
        let body = String::from_utf8_lossy(&continue_page("/a?b=1&c=\"").body).into_owned();
        assert!(body.contains("<meta http-equiv=\"refresh\" content=\"0;url=/a?b=1&amp;c=&quot;\">"), "{body}");
        assert!(body.contains("<a href=\"/a?b=1&amp;c=&quot;\">Continue</a>"), "{body}");
    }
}
