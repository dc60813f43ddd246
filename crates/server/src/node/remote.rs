//! [`RemoteNode`]: a node on another machine (or in another process),
//! driven through its node API ([`super::api`]). The control side uses it
//! exactly as it uses the local node: the same [`Node`] calls, the same
//! [`NodeError`] kinds, and agent connections that are tunnels through the
//! node instead of unix sockets.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::StatusCode;
use hutch_runtime::{AgentDial, AgentLink, AgentStream, DialFuture, EgressPolicy, SandboxStatus};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::api::{
    AGENT_UPGRADE, AgentPid, BootedWire, ConsoleFrom, Killed, NewVolume, NodeInfo, NodeSecret,
    SnapshotLayer, from_status,
};
use super::{BootSpec, Booted, ConsoleChunk, Node, NodeError, Usage};

/// How long one call may take, but for boots, snapshots and agent watches.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a boot (or an adoption, or a snapshot) may take.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long connecting to the node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After how long idle a connection to a node is probed, and between
/// probes: three unanswered ones (about a minute) end it.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Between two attempts to watch an agent whose node did not answer.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// Where a node's API is, and the secret it wants.
struct Endpoint {
    /// `http://host:port`, without a final slash.
    base: String,
    /// `host:port`, to dial.
    authority: String,
    secret: NodeSecret,
}

/// The `host:port` of a node API address (`http://host[:port]`), or why
/// it is not one.
pub(crate) fn authority_of(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("node address {url:?}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "node address {url:?}: only http:// is supported (put the node network behind a VPN or TLS tunnel)"
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("node address {url:?} has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok(match parsed.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    })
}

/// A node reached over its API.
pub(crate) struct RemoteNode {
    endpoint: Arc<Endpoint>,
    http: reqwest::Client,
}

impl RemoteNode {
    /// The node whose API is at `url` (`http://host:port`), admitting
    /// `secret`.
    pub fn new(url: &str, secret: NodeSecret) -> Result<RemoteNode, String> {
        let authority = authority_of(url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A node cut off without a word (its machine gone, a partition)
            // ends the long polls on it instead of holding them forever.
            .tcp_keepalive(TCP_KEEPALIVE)
            .tcp_keepalive_interval(TCP_KEEPALIVE)
            .tcp_keepalive_retries(3u32)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(RemoteNode {
            endpoint: Arc::new(Endpoint {
                base: format!("http://{authority}"),
                authority,
                secret,
            }),
            http,
        })
    }

    /// Its node API's address.
    #[cfg(test)]
    pub fn base_url(&self) -> String {
        self.endpoint.base.clone()
    }

    /// Who the node is (fails if it does not answer, or refuses the secret).
    pub async fn info(&self) -> Result<NodeInfo, NodeError> {
        self.json(self.get("/v1/node")).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(http::header::AUTHORIZATION, self.endpoint.secret.bearer())
            .headers(crate::trace_context::headers())
            .timeout(CALL_TIMEOUT)
    }

    /// Sends `req`; its answer, or the node's error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, NodeError> {
        let resp = req.send().await.map_err(|e| {
            NodeError::Failed(format!(
                "the node at {} did not answer: {}",
                self.endpoint.base,
                error_chain(&e)
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Err(
            serde_json::from_slice::<NodeError>(&body).unwrap_or_else(|_| {
                from_status(
                    status,
                    format!(
                        "the node at {} answered {status}: {}",
                        self.endpoint.base,
                        String::from_utf8_lossy(&body)
                    ),
                )
            }),
        )
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, NodeError> {
        let resp = self.send(req).await?;
        resp.json().await.map_err(|e| {
            NodeError::Failed(format!(
                "the node at {} answered something unreadable: {}",
                self.endpoint.base,
                error_chain(&e)
            ))
        })
    }

    async fn empty(&self, req: reqwest::RequestBuilder) -> Result<(), NodeError> {
        self.send(req).await.map(drop)
    }

    fn booted(&self, id: &str, wire: BootedWire) -> Booted {
        Booted {
            init_pid: wire.init_pid,
            agent: self.agent_link(id),
        }
    }
}

/// An error and its sources, one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Opens tunnels to one sandbox's agent through its node.
struct Tunnel {
    endpoint: Arc<Endpoint>,
    id: String,
}

impl Tunnel {
    async fn open(&self) -> std::io::Result<AgentStream> {
        let io_err = |what: &str, e: &dyn std::error::Error| {
            std::io::Error::other(format!(
                "agent tunnel through {}: {what}: {}",
                self.endpoint.base,
                error_chain(e)
            ))
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.endpoint.authority),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io_err("handshake", &e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = http::Request::get(format!("/v1/sandboxes/{}/agent", self.id))
            .header(http::header::HOST, &self.endpoint.authority)
            .header(http::header::AUTHORIZATION, self.endpoint.secret.bearer())
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, AGENT_UPGRADE)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| io_err("request", &e))?;
        req.headers_mut().extend(crate::trace_context::headers());
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| io_err("request", &e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let kind = if status == StatusCode::NOT_FOUND {
                std::io::ErrorKind::NotFound
            } else {
                std::io::ErrorKind::ConnectionRefused
            };
            return Err(std::io::Error::new(
                kind,
                format!(
                    "agent tunnel through {}: the node answered {status}",
                    self.endpoint.base
                ),
            ));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| io_err("upgrade", &e))?;
        Ok(Box::new(TokioIo::new(upgraded)))
    }
}

impl AgentDial for Tunnel {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(self.open())
    }

    fn describe(&self) -> String {
        format!("{} (sandbox {})", self.endpoint.base, self.id)
    }
}

#[async_trait]
impl Node for RemoteNode {
    async fn create(&self, spec: BootSpec) -> Result<Booted, NodeError> {
        let id = spec.sandbox.id.clone();
        let wire: BootedWire = self
            .json(
                self.post("/v1/sandboxes")
                    .json(&spec)
                    .timeout(LONG_CALL_TIMEOUT),
            )
            .await?;
        Ok(self.booted(&id, wire))
    }

    async fn destroy(&self, id: &str) -> Result<(), NodeError> {
        self.empty(
            self.request(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"))
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    async fn stop_keep_disk(&self, id: &str) -> Result<(), NodeError> {
        self.empty(
            self.post(&format!("/v1/sandboxes/{id}/stop-keep-disk"))
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    async fn kill_now(&self, id: &str, pid: u32) -> Result<bool, NodeError> {
        let killed: Killed = self
            .json(
                self.post(&format!("/v1/sandboxes/{id}/kill"))
                    .json(&AgentPid { pid }),
            )
            .await?;
        Ok(killed.killed)
    }

    /// A long poll, repeated while the node cannot be reached: a node that
    /// restarts does not make its sandboxes look dead.
    async fn agent_exited(&self, id: &str, pid: u32) -> Result<(), NodeError> {
        loop {
            let req = self
                .http
                .get(self.url(&format!("/v1/sandboxes/{id}/agent-exit")))
                .header(http::header::AUTHORIZATION, self.endpoint.secret.bearer())
                .query(&AgentPid { pid });
            match self.send(req).await {
                Ok(_) | Err(NodeError::NotFound(_)) => return Ok(()),
                Err(e @ NodeError::Failed(_)) => {
                    tracing::debug!(sandbox = %id, "watching the agent: {e}");
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn pause(&self, id: &str) -> Result<(), NodeError> {
        self.empty(self.post(&format!("/v1/sandboxes/{id}/pause")))
            .await
    }

    async fn resume(&self, id: &str) -> Result<(), NodeError> {
        self.empty(self.post(&format!("/v1/sandboxes/{id}/resume")))
            .await
    }

    async fn set_egress_policy(&self, id: &str, policy: &EgressPolicy) -> Result<(), NodeError> {
        self.empty(
            self.request(reqwest::Method::PUT, &format!("/v1/sandboxes/{id}/egress"))
                .json(policy),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<String>, NodeError> {
        self.json(self.get("/v1/sandboxes")).await
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>, NodeError> {
        self.json(self.get(&format!("/v1/sandboxes/{id}/status")))
            .await
    }

    async fn agent_pid(&self, id: &str) -> Result<Option<u32>, NodeError> {
        self.json(self.get(&format!("/v1/sandboxes/{id}/agent-pid")))
            .await
    }

    async fn adopt(&self, id: &str) -> Result<Option<Booted>, NodeError> {
        let wire: Option<BootedWire> = self
            .json(
                self.post(&format!("/v1/sandboxes/{id}/adopt"))
                    .timeout(LONG_CALL_TIMEOUT),
            )
            .await?;
        Ok(wire.map(|w| self.booted(id, w)))
    }

    async fn usage(&self, id: &str) -> Result<Usage, NodeError> {
        self.json(self.get(&format!("/v1/sandboxes/{id}/usage")))
            .await
    }

    async fn snapshot_layer(
        &self,
        id: &str,
        layers: &[String],
    ) -> Result<Option<String>, NodeError> {
        self.json(
            self.post(&format!("/v1/sandboxes/{id}/snapshot-layer"))
                .json(&SnapshotLayer {
                    layers: layers.to_vec(),
                })
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    fn agent_link(&self, id: &str) -> AgentLink {
        AgentLink::new(Tunnel {
            endpoint: self.endpoint.clone(),
            id: id.to_owned(),
        })
    }

    async fn console_log(&self, id: &str, offset: u64) -> Result<ConsoleChunk, NodeError> {
        self.json(
            self.get(&format!("/v1/sandboxes/{id}/console"))
                .query(&ConsoleFrom { offset }),
        )
        .await
    }

    /// The node drops its own mounts when it stops.
    fn release_host_mounts(&self) {}

    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), NodeError> {
        self.empty(
            self.post(&format!("/v1/volumes/{id}"))
                .json(&NewVolume { size_mb })
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    async fn mount_volume(&self, id: &str) -> Result<(), NodeError> {
        self.empty(
            self.post(&format!("/v1/volumes/{id}/mount"))
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    async fn destroy_volume(&self, id: &str) -> Result<(), NodeError> {
        self.empty(
            self.request(reqwest::Method::DELETE, &format!("/v1/volumes/{id}"))
                .timeout(LONG_CALL_TIMEOUT),
        )
        .await
    }

    async fn list_volumes(&self) -> Result<Vec<String>, NodeError> {
        self.json(self.get("/v1/volumes")).await
    }

    /// The volume content API reads a volume's files on the machine that
    /// holds them; a control plane apart from its node does not.
    fn volume_fs(&self, id: &str) -> Result<hutch_runtime::VolumeFs, NodeError> {
        Err(NodeError::Failed(format!(
            "the files of volume {id} are on node {}, and the volume content API is served only by a server that runs its own sandboxes (hutch serve)",
            self.endpoint.base
        )))
    }
}
