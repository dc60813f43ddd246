//! The server's one listener: accepts TCP connections and serves each with
//! hyper (HTTP/1.1 with upgrades, and h2c), under limits that keep hostile
//! or careless clients from holding the server's resources.
//!
//! * **`TCP_NODELAY`** on every accepted socket: without it, a request
//!   written in two segments (headers, then body) waits for the peer's
//!   delayed ACK, about 40 ms per SDK call.
//! * **Header read timeout** ([`Limits::header_read_timeout`]): a client
//!   must send a request's headers within it, one byte at a time or not.
//! * **Idle timeout** (the same duration): a connection with no request in
//!   flight that sends and receives nothing for that long is closed — a
//!   connection opened and never used, or a keep-alive connection left
//!   idle. A request in flight (a command streaming its
//!   output, say, however quiet) keeps its connection open.
//! * **Header size**: headers above [`Limits::max_header_bytes`] are
//!   answered `431` with E2B's JSON error body (by [`check_headers`]);
//!   hyper's own buffer ([`HYPER_MAX_BUF`]) is larger, so the JSON answer
//!   is what clients see up to that bound.
//! * **Connections**: at most [`Limits::max_connections`] at once, and
//!   [`Limits::max_per_client`] from one client address; a connection
//!   over either bound is answered `429` (JSON) and closed at once.
//! * **Memory after a flood**: when many connections have come and gone,
//!   the allocator is asked to hand freed memory back to the system
//!   (`malloc_trim`), so a flood does not leave the server's resident size
//!   at its peak.
//!
//! Shutdown stops accepting, lets open connections finish their requests
//! for a grace period, then drops them.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::error::ApiError;

/// hyper's read buffer bound (and so the largest request head it reads).
pub const HYPER_MAX_BUF: usize = 512 * 1024;

/// Most header lines hyper parses in one request (its default is 100; the
/// finer bound is [`Limits::max_header_bytes`]).
const HYPER_MAX_HEADERS: usize = 1000;

/// Connection limits of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once, all clients together.
    pub max_connections: usize,
    /// Open connections at once from one client address.
    pub max_per_client: usize,
    /// Time a client has to send a request's headers (and the longest an
    /// HTTP/1 connection may idle between requests).
    pub header_read_timeout: Duration,
    /// Largest total size of a request's header names and values.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 8192,
            max_per_client: 2048,
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Counts open connections, overall and per client address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
    /// Most connections open at once since the last trim.
    peak: usize,
}

/// The live connection table.
#[derive(Debug, Clone)]
struct Tracker {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
struct Slot {
    tracker: Tracker,
    client: IpAddr,
}

/// Connections that must have come and gone before memory is trimmed.
const TRIM_AFTER_PEAK: usize = 256;

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection from `client`, or why there is none.
    fn admit(&self, client: IpAddr) -> Result<Slot, &'static str> {
        let mut c = self.lock();
        if c.total >= self.limits.max_connections {
            return Err("the server has too many open connections");
        }
        let mine = c.per_client.entry(client).or_default();
        if *mine >= self.limits.max_per_client {
            return Err("too many open connections from this address");
        }
        *mine += 1;
        c.total += 1;
        c.peak = c.peak.max(c.total);
        Ok(Slot {
            tracker: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let trim = {
            let mut c = self.tracker.lock();
            c.total -= 1;
            if let Some(n) = c.per_client.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    c.per_client.remove(&self.client);
                }
            }
            let trim = c.peak >= TRIM_AFTER_PEAK && c.total <= c.peak / 4;
            if trim {
                c.peak = c.total;
            }
            trim
        };
        if trim {
            tokio::task::spawn_blocking(release_free_memory);
        }
    }
}

/// What one connection is doing: requests in flight, and when it last
/// moved a byte.
#[derive(Debug)]
struct Activity {
    started: std::time::Instant,
    /// Milliseconds since `started` of the last byte read or written.
    last: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: std::time::Instant::now(),
            last: Default::default(),
            in_flight: Default::default(),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the connection has been idle: zero while a request is in
    /// flight.
    fn idle_for(&self) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return Duration::ZERO;
        }
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Relaxed)))
    }
}

/// Counts a request in flight until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted in flight.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `app`, counting each request in flight on `activity` from its arrival
/// to the end of its response body.
fn track_requests(
    app: Router,
    activity: Arc<Activity>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send,
> + Clone
+ Send {
    use tower::ServiceExt;
    tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::start(activity.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await?;
            Ok(resp.map(|inner| {
                axum::body::Body::new(TrackedBody {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    })
}

/// The connection's socket, noting every byte moved.
struct ActivityIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for ActivityIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl tokio::io::AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hands the allocator's free memory back to the system.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Middleware: a request whose headers exceed `max` bytes is answered 431.
pub(crate) async fn check_headers(max: usize, req: Request, next: Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > max {
        return ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request's headers take {size} bytes; at most {max} are read"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting and gives open connections `grace` to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let tracker = Tracker {
        limits,
        counts: Arc::default(),
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(HYPER_MAX_BUF)
        .max_headers(HYPER_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(HYPER_MAX_BUF as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: keep serving the others.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match tracker.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(stream, peer, why);
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let activity = Arc::new(Activity::new());
        let service = TowerToHyperService::new(track_requests(app.clone(), activity.clone()));
        let io = TokioIo::new(ActivityIo {
            inner: stream,
            activity: activity.clone(),
        });
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let conn = graceful.watch(conn);
        let idle = limits.header_read_timeout;
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = loop {
                tokio::select! {
                    ended = conn.as_mut() => break ended,
                    () = tokio::time::sleep(idle / 4) => {
                        if activity.idle_for() >= idle {
                            // Nothing in flight: dropping it closes it.
                            tracing::debug!(%peer, "closing an idle connection");
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::info!("open connections did not finish in {grace:?}; closing them");
        }
    }
}

/// Answers a connection over the limits with a 429 and closes it. The
/// answer is written once without waiting: a client that does not read it
/// just sees the connection close.
fn refuse(stream: TcpStream, peer: SocketAddr, why: &str) {
    tracing::debug!(%peer, "refusing a connection: {why}");
    let body = serde_json::json!({"code": 429, "message": why}).to_string();
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(total: usize, per_client: usize) -> Tracker {
        Tracker {
            limits: Limits {
                max_connections: total,
                max_per_client: per_client,
                ..Limits::default()
            },
            counts: Arc::default(),
        }
    }

    #[test]
    fn admits_up_to_each_bound_and_frees_slots() {
        let t = tracker(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = t.admit(a).unwrap();
        let _a2 = t.admit(a).unwrap();
        assert!(t.admit(a).unwrap_err().contains("this address"));
        let _b1 = t.admit(b).unwrap();
        assert!(
            t.admit(b)
                .unwrap_err()
                .contains("too many open connections")
        );
        drop(a1);
        let _b2 = t.admit(b).unwrap();
        assert_eq!(t.lock().total, 3);
    }

    #[test]
    fn the_table_forgets_clients_with_no_connection() {
        let t = tracker(10, 10);
        let a: IpAddr = "::1".parse().unwrap();
        drop(t.admit(a).unwrap());
        assert!(t.lock().per_client.is_empty());
        assert_eq!(t.lock().total, 0);
    }
}
