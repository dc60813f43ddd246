//! The sandbox front door: routes requests meant for a sandbox's agent.
//!
//! The E2B SDKs address a sandbox's agent either with the headers
//! `E2b-Sandbox-Id: <id>` and `E2b-Sandbox-Port: <port>` (when
//! `E2B_SANDBOX_URL` points at this server) or with a host name
//! `<port>-<id>.<domain>`. Such a request never reaches the REST routes: it
//! is proxied to the agent's unix socket over HTTP/1.1, request and response
//! bodies streamed as they come (server-streaming Connect calls flow live),
//! hop-by-hop headers dropped.
//!
//! The agent's port ([`ENVD_PORT`]) goes to the agent itself. Any other
//! port `P` goes to `127.0.0.1:P` inside the sandbox: the host has no
//! network path into a sandbox, so the request is sent over the same unix
//! socket with [`FORWARD_PORT_HEADER`] and the agent relays it (nothing
//! listening: 502 "no server is listening on port P in sandbox X").
//! Protocol upgrades (WebSocket) are tunnelled both ways once the other end
//! answers `101`.
//!
//! A sandbox that is unknown, killed or whose agent does not answer is
//! answered 502 with a message containing `was not found`, which the SDKs
//! turn into "sandbox not running". A paused sandbox is answered 502 with a
//! message saying it is paused and naming `connect` — unless it was created
//! with `autoResume` and is paused in memory: then the request resumes it
//! first (as `connect` with the default lifetime would; see
//! [`crate::lifecycle`]), and is served.
//!
//! A sandbox created with `allowPublicTraffic: false` has a traffic access
//! token: requests to its own ports (not the agent's) must carry it as
//! [`TRAFFIC_TOKEN_HEADER`], else they are answered 403 before anything
//! reaches the sandbox (a paused one is not resumed for them). The header
//! is never passed on. A sandbox created with `maskRequestHost` has its
//! ports' requests sent with that `Host` ([`MASK_PORT`] replaced by the
//! port) instead of the client's.
//!
//! A Hutch API key or access token a client sends along (`X-API-Key`,
//! `Authorization: Bearer`) is removed before the request enters the
//! sandbox, for the agent's port and user ports alike: code in a sandbox
//! must not learn a key to the control plane. Other values of those
//! headers (an application's own key) pass on.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri, Version};
use hutch_protocol::ENVD_PORT;
use hutch_protocol::relay::{strip_hop_by_hop, upgrade_protocol};
use hyper_util::rt::TokioIo;

use crate::DEFAULT_SANDBOX_TIMEOUT_SECS;
use crate::db::PauseMode;
use crate::error::ApiError;
use crate::ids::looks_like_id;
use crate::lifecycle::{self, ResumeOutcome};
use crate::state::AppState;

/// Header naming the sandbox a request is for.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// Header naming the port in the sandbox a request is for.
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";
pub use hutch_protocol::boot::FORWARD_PORT_HEADER;
/// Header carrying a sandbox's traffic access token.
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";
/// What a `maskRequestHost` writes for the port.
pub(crate) const MASK_PORT: &str = "${PORT}";

/// Where a request is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The sandbox id.
    pub sandbox_id: String,
    /// The port in the sandbox; `None` when the header is not a port number.
    pub port: Option<u16>,
}

/// The sandbox a request is addressed to, if any: from the `E2b-Sandbox-*`
/// headers, else from a `Host` (or HTTP/2 authority) `<port>-<id>.<domain>`.
pub fn target_of(headers: &HeaderMap, uri: &Uri) -> Option<Target> {
    if let Some(id) = headers.get(SANDBOX_ID_HEADER) {
        let sandbox_id = id.to_str().unwrap_or_default().trim().to_string();
        let port = match headers.get(SANDBOX_PORT_HEADER) {
            None => Some(ENVD_PORT),
            Some(p) => p.to_str().ok().and_then(|p| p.trim().parse().ok()),
        };
        return Some(Target { sandbox_id, port });
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    parse_sandbox_host(host)
}

/// `<port>-<id>.<domain>[:<port>]` → the target; anything else → `None`.
fn parse_sandbox_host(host: &str) -> Option<Target> {
    let (first_label, rest) = host.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    let (port, id) = first_label.split_once('-')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || !looks_like_id(id) {
        return None;
    }
    Some(Target {
        sandbox_id: id.to_string(),
        port: port.parse().ok(),
    })
}

/// Middleware in front of all routing: proxies sandbox-bound requests,
/// passes the rest on.
pub(crate) async fn front_door(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    match target_of(req.headers(), req.uri()) {
        None => next.run(req).await,
        Some(target) => proxy(&st, target, req).await,
    }
}

/// `answer`, once the request's body is read (up to 1 MiB, 2 s): a client
/// still sending it would otherwise see its connection closed under it
/// rather than the answer.
async fn after_body(req: Request, answer: Response) -> Response {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        axum::body::to_bytes(req.into_body(), 1 << 20),
    )
    .await;
    answer
}

fn not_found(id: &str) -> Response {
    ApiError::bad_gateway(format!("The sandbox {id} was not found")).into_response()
}

/// Traced as `frontdoor.relay`: the request's path and the sandbox, until
/// the agent's answer starts (a stream goes on after the span).
#[tracing::instrument(
    name = "frontdoor.relay",
    skip_all,
    fields(sandbox = %target.sandbox_id, port = ?target.port, path = %req.uri().path())
)]
async fn proxy(st: &Arc<AppState>, target: Target, mut req: Request) -> Response {
    let id = target.sandbox_id;
    // A malformed request is the client's error, whatever the sandbox.
    let Some(port) = target.port.filter(|&p| p != 0) else {
        let port = req
            .headers()
            .get(SANDBOX_PORT_HEADER)
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
            .unwrap_or_default();
        return ApiError::bad_request(format!(
            "{SANDBOX_PORT_HEADER} {port:?} is not a port number (1-65535)"
        ))
        .into_response();
    };
    crate::replicas::ensure_known(st, &id).await;
    let entry = st.live().get(&id).map(|s| {
        (
            s.agent.clone(),
            s.paused,
            s.lifecycle.auto_resume,
            s.ingress.clone(),
        )
    });
    let Some((mut agent, paused, auto_resume, ingress)) = entry else {
        return not_found(&id);
    };
    if port != ENVD_PORT
        && let Some(token) = &ingress.traffic_token
    {
        let given = req
            .headers()
            .get(TRAFFIC_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| hutch_protocol::same_secret(g, token)) {
            let what = if given.is_some() { "a wrong" } else { "no" };
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "sandbox {id} does not accept public traffic and the request carries {what} {TRAFFIC_TOKEN_HEADER} header"
                ),
            )
            .into_response();
        }
    }
    if let Some(at) = st.cluster.as_ref().and_then(|c| c.node_of(&id))
        && at.lost
    {
        let answer = ApiError::bad_gateway(format!(
            "The sandbox {id} is unreachable: its node {} is lost (it sends no heartbeat); its sandboxes are reachable again if it comes back",
            at.node
        ))
        .into_response();
        return after_body(req, answer).await;
    }
    if let Some(paused) = paused {
        if !auto_resume || paused.mode == PauseMode::Filesystem {
            let how = match paused.mode {
                PauseMode::Memory => "paused",
                PauseMode::Filesystem => "paused (filesystem only)",
            };
            return ApiError::bad_gateway(format!(
                "The sandbox {id} is {how}: resume it with POST /sandboxes/{id}/connect"
            ))
            .into_response();
        }
        match auto_resume_sandbox(st, &id).await {
            Ok(link) => agent = link,
            Err(response) => return response,
        }
    }

    let stream = match agent.connect().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(sandbox = %id, "agent at {agent}: {e}");
            st.prometheus.relay_error();
            return not_found(&id);
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(sandbox = %id, "agent handshake: {e}");
            st.prometheus.relay_error();
            return not_found(&id);
        }
    };
    let conn_id = id.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(sandbox = %conn_id, "agent connection: {e}");
        }
    });

    let upgrade = upgrade_protocol(req.headers());
    let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    // Only the front door decides what is forwarded to a user port.
    parts.headers.remove(FORWARD_PORT_HEADER);
    // The sandbox's code never sees a key to the control plane.
    st.keys.strip_credentials(&mut parts.headers).await;
    if port != ENVD_PORT {
        parts
            .headers
            .insert(FORWARD_PORT_HEADER, HeaderValue::from(port));
        parts.headers.remove(TRAFFIC_TOKEN_HEADER);
        if let Some(mask) = &ingress.mask_request_host
            && let Ok(v) = HeaderValue::from_str(&mask.replace(MASK_PORT, &port.to_string()))
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    if !parts.headers.contains_key(header::HOST) {
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| "localhost".to_string());
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let outbound = http::Request::from_parts(parts, body);

    match sender.send_request(outbound).await {
        Ok(mut resp) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_side) = client_side
            {
                let agent_side = hyper::upgrade::on(&mut resp);
                let tunnel_id = id.clone();
                tokio::spawn(async move {
                    match tokio::try_join!(client_side, agent_side) {
                        Ok((client, agent)) => {
                            let mut client = TokioIo::new(client);
                            let mut agent = TokioIo::new(agent);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
                        }
                        Err(e) => tracing::debug!(sandbox = %tunnel_id, "upgrade failed: {e}"),
                    }
                });
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, Body::empty());
            }
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::warn!(sandbox = %id, "request to the agent failed: {e}");
            st.prometheus.relay_error();
            ApiError::bad_gateway(format!("the agent of sandbox {id} did not answer: {e}"))
                .into_response()
        }
    }
}

/// Resumes a paused sandbox for a request (`autoResume`); the agent's
/// socket, or the response to give instead.
async fn auto_resume_sandbox(
    st: &Arc<AppState>,
    id: &str,
) -> Result<hutch_runtime::AgentLink, Response> {
    tracing::info!(sandbox = %id, "a request resumes the paused sandbox");
    let task_st = st.clone();
    let task_id = id.to_owned();
    // Run to completion even if the client goes away.
    let resumed = tokio::spawn(async move {
        lifecycle::resume_sandbox(&task_st, &task_id, Some(DEFAULT_SANDBOX_TIMEOUT_SECS), None)
            .await
    })
    .await;
    match resumed {
        Ok(Ok(ResumeOutcome::Resumed | ResumeOutcome::WasRunning)) => {}
        Ok(Ok(ResumeOutcome::NotFound)) => return Err(not_found(id)),
        Ok(Err(e)) => return Err(ApiError::from(e).into_response()),
        Err(e) => {
            return Err(ApiError::internal(format!("resume task failed: {e}")).into_response());
        }
    }
    match st.live().get(id) {
        Some(s) if s.paused.is_none() => Ok(s.agent.clone()),
        // Killed, or paused again, meanwhile.
        _ => Err(not_found(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn targets_from_headers_and_host() {
        let uri = Uri::from_static("/health");
        let t = target_of(
            &headers(&[("E2b-Sandbox-Id", "abc123"), ("E2b-Sandbox-Port", "49983")]),
            &uri,
        )
        .unwrap();
        assert_eq!(
            t,
            Target {
                sandbox_id: "abc123".into(),
                port: Some(49983)
            }
        );
        let t = target_of(&headers(&[("e2b-sandbox-id", "abc123")]), &uri).unwrap();
        assert_eq!(t.port, Some(ENVD_PORT));
        let t = target_of(
            &headers(&[("e2b-sandbox-id", "x"), ("e2b-sandbox-port", "nope")]),
            &uri,
        )
        .unwrap();
        assert_eq!(t.port, None);

        let t = target_of(&headers(&[("host", "49983-abc123.hutch.local:3000")]), &uri).unwrap();
        assert_eq!(
            t,
            Target {
                sandbox_id: "abc123".into(),
                port: Some(49983)
            }
        );
        let t = target_of(&headers(&[("host", "8080-abc.localhost")]), &uri).unwrap();
        assert_eq!(t.port, Some(8080));

        for host in [
            "127.0.0.1:3000",
            "localhost",
            "my-server.example.com",
            "49983-abc",
            "49983-ABC.x",
            "-abc.x",
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_str(host).unwrap());
            assert_eq!(target_of(&h, &uri), None, "{host}");
        }
    }
}
