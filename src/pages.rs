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
    html(status, title, message, &link_html)
}

/// An HTML page whose button POSTs to `action` (a safe relative URL): how a
/// state-changing request that arrived cross-site is confirmed by the user.
pub fn confirm(title: &str, message: &str, action: &str, button: &str) -> Response {
    let form =
        format!("<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>", html_escape(action), html_escape(button));
    html(200, title, message, &form)
}

/// The page skeleton: `title` and `message` are escaped, `extra` is trusted HTML.
fn html(status: u16, title: &str, message: &str, extra: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title><style>body{{font:16px system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}\
         h1{{font-size:1.4em}}</style></head><body><h1>{t}</h1><p>{m}</p>{l}</body></html>\n",
        t = html_escape(title),
        m = html_escape(message),
        l = extra
    );
    common(status, "text/html; charset=utf-8", body.into_bytes())
        .with_header("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'")
}

/// A page that sends the browser on with a same-site navigation (used after
/// login when the session cookie is `SameSite=Strict`: a cross-site redirect
/// chain would arrive without it and loop back to the IdP).
pub fn continue_page(location: &str) -> Response {
    let href = html_escape(location);
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={href}\">\
         <title>Signed in</title></head><body><p>Signed in. <a href=\"{href}\">Continue</a></p></body></html>\n"
    );
    common(200, "text/html; charset=utf-8", body.into_bytes())
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
