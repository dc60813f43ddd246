//! `AgentClient` against a fake agent on a unix socket (no root needed).

use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hutch_protocol::boot::InitRequest;
use hutch_runtime::{AgentClient, RuntimeError};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Binds `path` even when it is too long for `sun_path`.
fn bind(path: &Path) -> UnixListener {
    let dir = std::fs::File::open(path.parent().unwrap()).unwrap();
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        path.file_name().unwrap().to_str().unwrap()
    ));
    UnixListener::bind(short).unwrap()
}

/// Answers every request with `status` and `body`, or never answers when
/// `status` is `None`.
fn serve(listener: UnixListener, status: Option<StatusCode>, body: &'static str) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<_>| async move {
                    match status {
                        Some(s) => {
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = s;
                            Ok::<_, Infallible>(resp)
                        }
                        None => std::future::pending().await,
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

#[tokio::test]
async fn health_over_a_socket_path_longer_than_sun_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("envd.sock");
    assert!(socket.as_os_str().len() > 108);
    serve(bind(&socket), Some(StatusCode::NO_CONTENT), "");
    let client = AgentClient::new(socket);
    client.health().await.unwrap();
    client.init(&InitRequest::default()).await.unwrap();
}

#[tokio::test]
async fn unexpected_status_is_an_error_with_the_body() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("envd.sock");
    serve(bind(&socket), Some(StatusCode::OK), "not ready");
    let client = AgentClient::new(socket.clone());
    // /health must be exactly 204.
    match client.health().await {
        Err(RuntimeError::AgentStatus { status, body, .. }) => {
            assert_eq!(status, 200);
            assert_eq!(body, "not ready");
        }
        other => panic!("{other:?}"),
    }
    // /init takes any 2xx.
    client.init(&InitRequest::default()).await.unwrap();

    let tmp2 = tempfile::tempdir().unwrap();
    let socket2 = tmp2.path().join("envd.sock");
    serve(bind(&socket2), Some(StatusCode::UNAUTHORIZED), "bad token");
    let err = AgentClient::new(socket2)
        .init(&InitRequest::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(err.to_string().contains("bad token"), "{err}");
}

#[tokio::test]
async fn missing_socket_and_silent_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let err = AgentClient::new(tmp.path().join("nothing.sock"))
        .health()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::AgentUnreachable { .. }),
        "{err}"
    );

    let socket = tmp.path().join("envd.sock");
    serve(bind(&socket), None, "");
    let err = AgentClient::new(socket)
        .with_timeout(Duration::from_millis(200))
        .health()
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::AgentRequestTimeout { .. }),
        "{err}"
    );
}
