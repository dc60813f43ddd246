//! The server's one listener: accepts TCP connections and serves each with
//! hyper (HTTP/1.1 with upgrades, and h2c), under limits that keep hostile
//! or careless clients from holding the server's resources.
//!
//! * **`TCP_NODELAY`** on every accepted socket: without it, a request
//!   written in two segments (headers, then body) waits for the peer's
//!   delayed ACK, about 40 ms per SDK call.
//! * **Header read timeout** ([`Limits::header_read_timeout`]): a client
//!   must send a request's headers within it, one byte at a time or not.
//!   It also closes an HTTP/1 keep-alive connection that stays idle that
//!   long between requests.
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
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
