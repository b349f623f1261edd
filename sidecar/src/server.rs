//! The HTTP/1.1 server: limits first (connections, header size and count,
//! header read time, request time, no request bodies), then the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::{Answer, App, Inbound};
use crate::log::{self, Level};

/// Open connections at most; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// Request line and headers together, bytes. Cookies are at most ~4 KB each.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Header lines at most.
const MAX_HEADERS: usize = 100;
/// Time for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// No endpoint takes a body; a small one (a sign-out form) is tolerated.
const MAX_BODY_BYTES: u64 = 16 * 1024;

pub async fn accept_loop(listener: TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                log::event(Level::Warn, "accept failed", &[("reason", e.to_string().into())]);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(respond(&app, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            // Malformed or oversized requests get hyper's 4xx and a closed
            // connection; nothing else is affected.
            let _ = conn.await;
            drop(permit);
        });
    }
}

async fn respond(app: &App, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) || req.headers().contains_key("transfer-encoding") {
        return build(Answer::plain(413, "request body too large\n"));
    }
    let inbound = Inbound {
        peer: peer.ip(),
        method: req.method().as_str().to_owned(),
        path_and_query: req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    };
    // Generous: a decision may wait on up to three IdP calls in a row.
    let limit = Duration::from_millis(u64::from(app.engine.config().provider.timeout_ms) * 3 + 5000);
    match tokio::time::timeout(limit, app.handle(inbound)).await {
        Ok(answer) => build(answer),
        Err(_) => build(Answer::plain(504, "the identity provider did not answer in time\n")),
    }
}

fn build(answer: Answer) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (n, v) in answer.headers {
        if let (Ok(name), Ok(value)) = (hyper::header::HeaderName::from_bytes(n.as_bytes()), hyper::header::HeaderValue::from_str(&v)) {
            headers.append(name, value);
        }
    }
    resp
}
