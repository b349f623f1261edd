//! The HTTP/1.1 server: limits first (connections, header size and count,
//! header read time, request time, no request bodies), then the app.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::app::{Answer, App, Inbound};
use crate::log::{self, Level};

/// Open connections at most; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// Request line and headers together, bytes. Cookies are at most ~4 KB each.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Header lines at most.
const MAX_HEADERS: usize = 100;
/// Time for a client to send its request head, idle time between requests
/// included. Trusted proxies keep pooled connections idle for longer (nginx's
/// rendered upstream closes them after 60 s, Caddy's pool after 2 min).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const TRUSTED_HEAD_TIMEOUT: Duration = Duration::from_secs(150);
/// Bodies are small: a back-channel logout's form, a sign-out form.
const MAX_BODY_BYTES: u64 = 16 * 1024;
/// A client that stops reading our answers for this long is cut off.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Peers outside `trusted_proxies` (no proxy should be one): connections
/// each at most, and how long one may stay open.
/// IPv6 peers count by /64, which one host usually holds whole; and all
/// untrusted peers together share a small pool of their own, so the
/// connections trusted proxies need stay free.
const UNTRUSTED_CONNECTIONS_PER_PEER: usize = 16;
const UNTRUSTED_CONNECTIONS: usize = 256;
const UNTRUSTED_LIFETIME: Duration = Duration::from_secs(30);

pub async fn accept_loop(listener: TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let outsider_slots = Arc::new(Semaphore::new(UNTRUSTED_CONNECTIONS));
    let untrusted: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
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
        // Only proxies should connect: anyone else gets a few short-lived
        // connections, so they cannot hold the slots the proxies need.
        let outsider = !app.trusted(peer.ip());
        let (permit, slot) = if outsider {
            drop(permit);
            let Ok(p) = Arc::clone(&outsider_slots).try_acquire_owned() else { continue };
            let key = peer_key(peer.ip());
            if !PeerSlot::take(&untrusted, key) {
                continue;
            }
            (p, Some(PeerSlot { peers: Arc::clone(&untrusted), ip: key }))
        } else {
            (permit, None)
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(respond(&app, peer, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(if outsider { HEAD_TIMEOUT } else { TRUSTED_HEAD_TIMEOUT })
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                // A client may shut its side down after sending the request
                // and still expect the answer.
                .half_close(true)
                .serve_connection(TokioIo::new(StallGuard::new(stream)), service);
            // Malformed or oversized requests get hyper's 4xx and a closed
            // connection; nothing else is affected.
            if slot.is_some() {
                let _ = tokio::time::timeout(UNTRUSTED_LIFETIME, conn).await;
            } else {
                let _ = conn.await;
            }
            drop(slot);
            drop(permit);
        });
    }
}

async fn respond(app: &App, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) || req.headers().contains_key("transfer-encoding") {
        return build(Answer::plain(413, "request body too large\n"));
    }
    let method = req.method().as_str().to_owned();
    let path_and_query = req.uri().path_and_query().map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let headers = req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    // Only a back-channel logout reads its body (a form with one token).
    let body = if declared.is_some_and(|n| n > 0) {
        match tokio::time::timeout(HEAD_TIMEOUT, http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES as usize).collect()).await {
            Ok(Ok(collected)) => collected.to_bytes().to_vec(),
            _ => return build(Answer::plain(400, "request body not received\n")),
        }
    } else {
        Vec::new()
    };
    let inbound = Inbound { peer: peer.ip(), method, path_and_query, headers, body };
    // Generous: a decision may wait on up to three IdP calls in a row.
    let limit = Duration::from_millis(u64::from(app.config.provider.timeout_ms) * 3 + 5000);
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
        if let (Ok(name), Ok(value)) =
            (hyper::header::HeaderName::from_bytes(n.as_bytes()), hyper::header::HeaderValue::from_bytes(v.as_bytes()))
        {
            headers.append(name, value);
        }
    }
    resp
}

/// Untrusted peers are counted by address, IPv6 ones by their /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// One connection of an untrusted peer, counted while it lives.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Mutex<HashMap<IpAddr, usize>>, ip: IpAddr) -> bool {
        let mut map = peers.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= UNTRUSTED_CONNECTIONS_PER_PEER {
            return false;
        }
        *n += 1;
        true
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A stream whose writes fail once they have made no progress for
/// [`WRITE_STALL`]: a client that pipelines requests and never reads the
/// answers would otherwise hold its connection forever.
struct StallGuard<S> {
    inner: S,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S) -> StallGuard<S> {
        StallGuard { inner, stalled: None }
    }

    /// Called when a write is pending: arms the timer once, fails when it fires.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_reading_is_cut_off() {
        // The peer's side of a 64-byte pipe is never read.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours);
        let err = guarded.write_all(&[b'x'; 4096]).await.expect_err("the write must fail, not hang");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match tokio::io::AsyncReadExt::read(&mut theirs, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.extend_from_slice(&buf[..n]),
                }
            }
            sink.len()
        });
        let mut guarded = StallGuard::new(ours);
        guarded.write_all(&[b'x'; 512]).await.expect("progress every 5 s is not a stall");
        drop(guarded);
        assert_eq!(reader.await.unwrap(), 512);
    }

    #[test]
    fn ipv6_peers_count_by_their_64() {
        let a = peer_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, peer_key("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_ne!(a, peer_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(peer_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn untrusted_peers_get_a_few_connections_each() {
        let peers = Mutex::new(HashMap::new());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..UNTRUSTED_CONNECTIONS_PER_PEER {
            assert!(PeerSlot::take(&peers, ip));
        }
        assert!(!PeerSlot::take(&peers, ip));
        assert!(PeerSlot::take(&peers, "192.0.2.8".parse().unwrap()), "other peers are not affected");
    }
}
