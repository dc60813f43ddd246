//! Forwarding to a port inside the sandbox.
//!
//! The host has no network path into a sandbox (its network namespace has
//! only loopback), so the server's front door sends traffic for a user port
//! over the agent's unix socket, marked with [`FORWARD_PORT_HEADER`]. Such a
//! request is not the agent's: it is relayed, as HTTP/1.1 with bodies
//! streamed both ways, to `127.0.0.1:<port>` in the sandbox. A request
//! asking for a protocol upgrade (WebSocket) becomes, once the server in
//! the sandbox answers `101`, a byte tunnel between the client and that
//! server.
//!
//! Nothing listening on the port: `502` with a JSON message.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{StatusCode, Uri, Version};
use hutch_protocol::relay::{strip_hop_by_hop, upgrade_protocol};
use hyper_util::rt::TokioIo;

use crate::Agent;
use crate::http::{ACCESS_TOKEN_HEADER, json_error};

pub use hutch_protocol::boot::FORWARD_PORT_HEADER;

/// Middleware in front of the agent's own routes: relays requests carrying
/// [`FORWARD_PORT_HEADER`], passes the rest on.
pub async fn forward(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(FORWARD_PORT_HEADER) else {
        return next.run(req).await;
    };
    let port = match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
    {
        Some(p) if p != 0 => p,
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid {FORWARD_PORT_HEADER}: expected a port number"),
            );
        }
    };
    relay(&agent.boot().sandbox_id, port, req).await
}

async fn relay(sandbox_id: &str, port: u16, mut req: Request) -> Response {
    let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("no server is listening on port {port} in sandbox {sandbox_id}"),
            );
        }
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to port {port} in sandbox {sandbox_id}: {e}"),
            );
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("port {port} in sandbox {sandbox_id}: {e}"),
            );
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(port, "forwarded connection: {e}");
        }
    });

    let upgrade = upgrade_protocol(req.headers());
    let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(FORWARD_PORT_HEADER);
    parts.headers.remove(ACCESS_TOKEN_HEADER);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let outbound = http::Request::from_parts(parts, body);

    let mut resp = match sender.send_request(outbound).await {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("the server on port {port} in sandbox {sandbox_id} did not answer: {e}"),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let server_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, server_side) {
                Ok((client, server)) => {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => tracing::debug!(port, "upgrade failed: {e}"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body)).into_response()
}
