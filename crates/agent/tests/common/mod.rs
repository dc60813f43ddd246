//! An agent served inside the test process on a temporary unix socket and
//! a loopback TCP port, with clients for both.
//!
//! Nothing in a test binary that uses this may wait for child processes
//! itself: the agent's reaper owns `wait` for the whole process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connectrpc::client::{ClientConfig, Http2Connection, HttpClient, SharedHttp2Connection};
use http_body_util::{BodyExt, Full};
use hutch_envd::{Agent, AgentConfig};
use hutch_protocol::boot::{BOOT_SCHEMA_VERSION, BootConfig};
use hutch_protocol::envd::filesystem::FilesystemClient;
use hutch_protocol::envd::process::{
    ProcessClient, ProcessConfig, StartRequest, StartResponse, process_event,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;

/// The template layer every test agent boots with.
pub fn template_env() -> Vec<(String, String)> {
    vec![
        ("TEMPLATE_ONLY".into(), "from-template".into()),
        ("OVERRIDE".into(), "template".into()),
        ("TRICKY".into(), "a=b c  d".into()),
        ("EMPTY_VAR".into(), String::new()),
    ]
}

pub fn boot() -> BootConfig {
    BootConfig {
        schema_version: BOOT_SCHEMA_VERSION,
        sandbox_id: "sbx-test".into(),
        template_id: "tpl-test".into(),
        template_name: "test".into(),
        template_env: template_env(),
        template_user: None,
        template_workdir: None,
    }
}

pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestAgent {
    pub async fn start() -> TestAgent {
        Self::with_boot(boot()).await
    }

    pub async fn with_boot(boot: BootConfig) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock").join("envd.sock");
        let agent = Agent::new(AgentConfig {
            boot,
            accounts_root: PathBuf::from("/"),
        });
        let unix = hutch_envd::bind_socket(&socket).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut tasks = Vec::new();
        let a = agent.clone();
        tasks.push(tokio::spawn(async move {
            a.serve_unix(unix).await.unwrap();
        }));
        let a = agent.clone();
        tasks.push(tokio::spawn(async move {
            a.serve_tcp(tcp).await.unwrap();
        }));
        TestAgent {
            agent,
            dir,
            socket,
            addr,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connect over HTTP/1.1, JSON codec (what the E2B SDKs speak).
    pub fn tcp_client(&self) -> ProcessClient<HttpClient> {
        let config = ClientConfig::new(self.url().parse().unwrap()).json();
        ProcessClient::new(HttpClient::plaintext(), config)
    }

    /// Connect over h2c on the unix socket, proto codec (what the host uses).
    pub fn unix_client(&self) -> ProcessClient<SharedHttp2Connection> {
        let uri: http::Uri = "http://localhost".parse().unwrap();
        let conn = Http2Connection::lazy_unix(self.socket.clone(), uri.clone()).shared(64);
        ProcessClient::new(conn, ClientConfig::new(uri))
    }

    /// `filesystem.Filesystem` over HTTP/1.1, JSON codec, as the default
    /// user.
    pub fn fs_client(&self) -> FilesystemClient<HttpClient> {
        let config = ClientConfig::new(self.url().parse().unwrap()).json();
        FilesystemClient::new(HttpClient::plaintext(), config)
    }

    /// `filesystem.Filesystem` as `user` (`Authorization: Basic`, as the
    /// SDKs send it), with extra default headers.
    pub fn fs_client_as(
        &self,
        user: &str,
        headers: &[(&str, &str)],
    ) -> FilesystemClient<HttpClient> {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        let mut config = ClientConfig::new(self.url().parse().unwrap())
            .json()
            .with_default_header("authorization", format!("Basic {basic}"));
        for (k, v) in headers {
            config = config.with_default_header(k.to_string(), v.to_string());
        }
        FilesystemClient::new(HttpClient::plaintext(), config)
    }

    /// `filesystem.Filesystem` over h2c on the unix socket, proto codec.
    pub fn fs_unix_client(&self) -> FilesystemClient<SharedHttp2Connection> {
        let uri: http::Uri = "http://localhost".parse().unwrap();
        let conn = Http2Connection::lazy_unix(self.socket.clone(), uri.clone()).shared(64);
        FilesystemClient::new(conn, ClientConfig::new(uri))
    }

    /// `POST /init` with a JSON body.
    pub async fn init(&self, body: serde_json::Value) -> u16 {
        let (status, _, _) = raw(
            "POST",
            &format!("{}/init", self.url()),
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await;
        status
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A raw HTTP/1.1 request; returns status, headers and the whole body.
pub async fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// A raw HTTP/1.1 request whose body goes out in `chunks` with
/// `Transfer-Encoding: chunked`, as the SDKs stream uploads.
pub async fn raw_chunked(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use connectrpc::http_body::Frame;
    use http_body_util::StreamBody;
    type Chunked = StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;
    let client: Client<HttpConnector, Chunked> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let frames: Vec<_> = chunks
        .into_iter()
        .map(|c| Ok(Frame::data(Bytes::from(c))))
        .collect();
    let resp = client
        .request(
            req.body(StreamBody::new(futures::stream::iter(frames)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// One Connect envelope: flag byte, big-endian length, payload.
pub fn envelope(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a streaming response body into its envelopes.
pub fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated envelope header");
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "truncated envelope");
        out.push((flag, body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

pub fn cmd(cmd: &str, args: &[&str]) -> ProcessConfig {
    ProcessConfig {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> ProcessConfig {
    cmd("/bin/sh", &["-c", script])
}

pub fn start_request(process: ProcessConfig) -> StartRequest {
    StartRequest {
        process: buffa::MessageField::some(process),
        stdin: Some(false),
        ..Default::default()
    }
}

pub fn with_envs(mut process: ProcessConfig, envs: &[(&str, &str)]) -> ProcessConfig {
    process.envs = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    process
}

/// What a finished stream delivered.
#[derive(Debug, Default)]
pub struct Collected {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub keepalives: usize,
    pub end: Option<process_event::EndEvent>,
    /// Event kinds in order: 's', 'o', 'e', 'p', 'k', 'x' (end).
    pub order: String,
}

impl Collected {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn end(&self) -> &process_event::EndEvent {
        self.end.as_ref().expect("stream had no end event")
    }
    pub fn env(&self) -> HashMap<String, String> {
        parse_env(&self.stdout)
    }

    pub fn add(&mut self, event: process_event::Event) {
        use process_event::Event;
        use process_event::data_event::Output;
        match event {
            Event::Start(s) => {
                assert!(self.order.is_empty(), "start must come first");
                self.pid = s.pid;
                self.order.push('s');
            }
            Event::Data(d) => match d.output {
                Some(Output::Stdout(b)) => {
                    self.stdout.extend(b);
                    self.order.push('o');
                }
                Some(Output::Stderr(b)) => {
                    self.stderr.extend(b);
                    self.order.push('e');
                }
                Some(Output::Pty(b)) => {
                    self.pty.extend(b);
                    self.order.push('p');
                }
                None => panic!("data event without output"),
            },
            Event::End(e) => {
                assert!(self.end.is_none(), "two end events");
                self.end = Some(*e);
                self.order.push('x');
            }
            Event::Keepalive(_) => {
                self.keepalives += 1;
                self.order.push('k');
            }
        }
    }
}

/// Parses `env -0`-less `env` output (one `NAME=value` a line).
pub fn parse_env(out: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Runs a start request to its end through `client`.
pub async fn run<T>(client: &ProcessClient<T>, request: StartRequest) -> Collected
where
    T: connectrpc::client::ClientTransport,
    T::ResponseBody: Unpin,
    <T::ResponseBody as connectrpc::http_body::Body>::Error: std::fmt::Display,
{
    let mut stream = client.start(request).await.expect("start call");
    let mut collected = Collected::default();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("stream stalled")
        .expect("stream error")
    {
        let msg: StartResponse = msg.to_owned_message();
        collected.add(msg.event.into_option().unwrap().event.unwrap());
    }
    assert!(
        collected.end.is_some(),
        "stream ended without end event: {collected:?}"
    );
    assert!(collected.order.ends_with('x'), "end must be last");
    collected
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Runs a start request that must fail; returns its error, whether it
/// comes as the call's result or in the stream's end message.
pub async fn start_err<T>(
    client: &ProcessClient<T>,
    request: StartRequest,
) -> connectrpc::ConnectError
where
    T: connectrpc::client::ClientTransport,
    T::ResponseBody: Unpin,
    <T::ResponseBody as connectrpc::http_body::Body>::Error: std::fmt::Display,
{
    let mut stream = match client.start(request).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    match stream.message().await {
        Ok(Some(m)) => panic!("unexpected event {:?}", m.to_owned_message()),
        Ok(None) => panic!("stream ended without an error"),
        Err(e) => e,
    }
}
