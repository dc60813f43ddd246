//! A minimal HTTP/1.1 client for the agent's plain-HTTP endpoints, and
//! [`AgentLink`]: how a byte stream to an agent is opened — the host side of
//! its unix socket on the node that runs it, or a tunnel through that node's
//! API from a control plane elsewhere.

use std::fmt;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hutch_protocol::boot::InitRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::error::RuntimeError;

/// Default timeout of one request, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read (anything longer is an error).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// `sun_path` holds 108 bytes including the final NUL.
const MAX_SUN_PATH: usize = 107;

/// A byte stream to an agent's HTTP server.
pub trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AgentIo for T {}

/// An open connection to an agent.
pub type AgentStream = Box<dyn AgentIo>;

/// What [`AgentDial::dial`] returns.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<AgentStream>> + Send + 'a>>;

/// Opens connections to one agent.
pub trait AgentDial: Send + Sync {
    /// A fresh connection to the agent.
    fn dial(&self) -> DialFuture<'_>;

    /// Where the agent is, for messages.
    fn describe(&self) -> String;
}

/// Where one sandbox's agent is reached: cheap to clone, shared by the
/// clients of that sandbox.
#[derive(Clone)]
pub struct AgentLink(Arc<dyn AgentDial>);

impl AgentLink {
    /// The agent listening on the unix socket `path` (a host path).
    pub fn unix(path: PathBuf) -> AgentLink {
        AgentLink(Arc::new(UnixDial(path)))
    }

    /// The agent reached through `dial`.
    pub fn new(dial: impl AgentDial + 'static) -> AgentLink {
        AgentLink(Arc::new(dial))
    }

    /// A fresh connection to the agent.
    pub async fn connect(&self) -> std::io::Result<AgentStream> {
        self.0.dial().await
    }
}

impl fmt::Display for AgentLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentLink({})", self.0.describe())
    }
}

/// An agent on this host, at its unix socket.
struct UnixDial(PathBuf);

impl AgentDial for UnixDial {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move { Ok(Box::new(connect(&self.0).await?) as AgentStream) })
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// Talks to one sandbox's agent. Each request uses a fresh connection, so
/// the client is cheap, stateless and can be cloned freely.
#[derive(Debug, Clone)]
pub struct AgentClient {
    link: AgentLink,
    timeout: Duration,
}

impl AgentClient {
    /// A client for the agent listening on `socket` (a host path), with
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(socket: PathBuf) -> Self {
        AgentClient::over(AgentLink::unix(socket))
    }

    /// A client for the agent at `link`, with [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn over(link: AgentLink) -> Self {
        AgentClient {
            link,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Sets the per-request timeout (connection included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /health`; the agent answers 204 when it is ready.
    pub async fn health(&self) -> Result<(), RuntimeError> {
        let request = "GET /health";
        let (status, body) = self.send(Method::GET, "/health", None).await?;
        if status == StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(status_error(request, status, &body))
        }
    }

    /// `POST /init` with `req` as JSON; any 2xx status is success.
    pub async fn init(&self, req: &InitRequest) -> Result<(), RuntimeError> {
        let request = "POST /init";
        let body = serde_json::to_vec(req).map_err(|source| RuntimeError::Json {
            context: "serialize /init request".to_owned(),
            source,
        })?;
        let (status, resp) = self
            .send(Method::POST, "/init", Some(Bytes::from(body)))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status_error(request, status, &resp))
        }
    }

    /// Sends one request and returns the status and (bounded) body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), RuntimeError> {
        let request = format!("{method} {path}");
        match tokio::time::timeout(self.timeout, self.exchange(method, path, json, &request)).await
        {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::AgentRequestTimeout {
                agent: self.link.to_string(),
                request,
                timeout: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
        request: &str,
    ) -> Result<(StatusCode, Bytes), RuntimeError> {
        let http_err = |source| RuntimeError::AgentHttp {
            agent: self.link.to_string(),
            request: request.to_owned(),
            source,
        };
        let stream =
            self.link
                .connect()
                .await
                .map_err(|source| RuntimeError::AgentUnreachable {
                    agent: self.link.to_string(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // Drives the connection; it ends when `sender` is dropped.
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });

        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        let body = match json {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                b
            }
            None => Bytes::new(),
        };
        let req = builder
            .body(Full::new(body))
            .map_err(|e| RuntimeError::Internal(format!("build {request}: {e}")))?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_else(|e| Bytes::from(format!("<unreadable body: {e}>")));
        drop(sender);
        conn_task.abort();
        Ok((status, body))
    }
}

fn status_error(request: &str, status: StatusCode, body: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(body);
    let mut text: String = text.chars().take(512).collect();
    if text.is_empty() {
        text = "<empty body>".to_owned();
    }
    RuntimeError::AgentStatus {
        request: request.to_owned(),
        status: status.as_u16(),
        body: text,
    }
}

/// Connects to a unix socket, also when its path is longer than `sun_path`
/// allows: then the directory is opened and the socket is named through
/// `/proc/self/fd/N/<name>`.
pub(crate) async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() <= MAX_SUN_PATH {
        return UnixStream::connect(path).await;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    let stream = UnixStream::connect(&short).await;
    drop(dir);
    stream
}
