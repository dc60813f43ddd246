//! How a node joins a control plane: a heartbeat to `POST
//! /hutch/cluster/v1/heartbeat` (see [`super::cluster`]) at once, then at
//! the interval the control plane answers, for as long as the node runs.
//! Each beat carries the node's name and address, its instance id, its
//! capacity, how many sandboxes it holds and which layers.
//!
//! A control plane that refuses the node (a wrong secret, an invalid name)
//! stops it at its start with the reason; one that cannot be reached is
//! tried again, at the start and later, without stopping the node: its
//! sandboxes keep running, and the control plane finds them when it is
//! back.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{Capacity, NodeBeat};
use crate::node::api::NodeSecret;
use crate::node::cluster::BeatReply;

/// How a node joins a control plane ([`crate::NodeConfig::join`]).
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The control plane's API (`http://host:port`): one, a load balancer
    /// in front of its replicas, or several replicas — the heartbeat goes
    /// to the first that answers, and stays with it while it does.
    pub control: Vec<String>,
    /// This node's name in the cluster: stable across restarts, unique.
    pub name: String,
    /// Where control planes reach this node's API (`http://host:port`).
    pub advertise: String,
    /// What this node admits.
    pub capacity: Capacity,
}

/// Between beats until the control plane says otherwise, and between
/// tries while it cannot be reached.
const RETRY: Duration = Duration::from_secs(1);

/// How long one heartbeat may take.
const BEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node reports of itself in a heartbeat: how many sandboxes it
/// holds, and which layers (run on a blocking thread).
pub(crate) type Report = Arc<dyn Fn() -> (u64, Vec<String>) + Send + Sync>;

/// A node's heartbeats.
pub(crate) struct Joiner {
    cfg: JoinConfig,
    secret: NodeSecret,
    instance_id: String,
    report: Report,
    http: reqwest::Client,
    /// Which of [`JoinConfig::control`] answered last.
    current: std::sync::atomic::AtomicUsize,
}

/// Why a beat failed.
pub(crate) enum BeatError {
    /// The control plane answered no: the node should not run like this.
    Refused(String),
    /// It could not be reached or failed: try again.
    Unreachable(String),
}

impl Joiner {
    pub fn new(
        cfg: JoinConfig,
        secret: NodeSecret,
        instance_id: String,
        report: Report,
    ) -> Result<Joiner, String> {
        if cfg.control.is_empty() {
            return Err("no control plane address to join".into());
        }
        for control in &cfg.control {
            let url = url::Url::parse(control)
                .map_err(|e| format!("control plane address {control:?}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "control plane address {control:?}: expected http:// or https://"
                ));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(BEAT_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Joiner {
            cfg,
            secret,
            instance_id,
            report,
            http,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// One heartbeat, to the control plane that answered last, else to
    /// the next ones in turn; the answer.
    pub async fn beat(&self) -> Result<BeatReply, BeatError> {
        use std::sync::atomic::Ordering;
        let n = self.cfg.control.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self.beat_to(&self.cfg.control[at]).await {
                Ok(reply) => {
                    if at != first {
                        tracing::info!(control = %self.cfg.control[at], "heartbeats go to this control plane now");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e @ BeatError::Refused(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one control plane"))
    }

    /// One heartbeat to `control`; its answer.
    async fn beat_to(&self, control: &str) -> Result<BeatReply, BeatError> {
        let report = self.report.clone();
        let (sandboxes, layers) = tokio::task::spawn_blocking(move || report())
            .await
            .map_err(|e| BeatError::Unreachable(e.to_string()))?;
        let beat = NodeBeat {
            id: self.cfg.name.clone(),
            url: self.cfg.advertise.clone(),
            instance_id: self.instance_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: self.cfg.capacity,
            sandboxes,
            layers,
        };
        let url = format!(
            "{}{}",
            control.trim_end_matches('/'),
            crate::api::HEARTBEAT_PATH
        );
        let resp = self
            .http
            .post(&url)
            .header(http::header::AUTHORIZATION, self.secret.bearer())
            .json(&beat)
            .send()
            .await
            .map_err(|e| {
                BeatError::Unreachable(format!(
                    "the control plane at {control} did not answer: {}",
                    super::remote::error_chain(&e)
                ))
            })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|e| BeatError::Unreachable(format!("the control plane's answer: {e}")));
        }
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(body);
        let why = format!("the control plane at {control} refused this node ({status}): {message}");
        Err(if matches!(status.as_u16(), 400 | 401 | 403 | 404 | 422) {
            BeatError::Refused(why)
        } else {
            BeatError::Unreachable(why)
        })
    }

    /// The first heartbeat, at the node's start: an error (the reason) if
    /// the control plane refuses the node; `None` if none answered (the
    /// node starts anyway and keeps trying).
    pub async fn first_beat(&self) -> Result<Option<BeatReply>, String> {
        let control = self.cfg.control.join(", ");
        match self.beat().await {
            Ok(reply) => {
                tracing::info!(%control, name = %self.cfg.name, "joined the control plane");
                Ok(Some(reply))
            }
            Err(BeatError::Refused(why)) => Err(why),
            Err(BeatError::Unreachable(why)) => {
                tracing::warn!("cannot join the control plane yet, trying again: {why}");
                Ok(None)
            }
        }
    }

    /// Beats until `stop`, at the interval the control plane asks for.
    pub async fn run(self, first: Option<BeatReply>, stop: tokio_util::sync::CancellationToken) {
        let mut every = first.map_or(RETRY, |r| Duration::from_millis(r.interval_ms));
        let mut unreachable = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.beat().await {
                Ok(reply) => {
                    if unreachable {
                        tracing::info!("control plane reached again");
                        unreachable = false;
                    }
                    every = Duration::from_millis(reply.interval_ms.max(50));
                }
                Err(BeatError::Refused(why) | BeatError::Unreachable(why)) => {
                    if !unreachable {
                        tracing::warn!("heartbeat failed, trying again every {RETRY:?}: {why}");
                        unreachable = true;
                    }
                    every = RETRY;
                }
            }
        }
    }
}
