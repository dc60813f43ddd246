//! `hutch mcp`: a Model Context Protocol server on stdin/stdout that
//! creates sandboxes on a Hutch server, runs commands and code in them and
//! moves files in and out.
//!
//! Messages are newline-delimited JSON-RPC 2.0 on stdin and stdout; logs go
//! to stderr only. Every tool goes through the same client code as the
//! other `hutch` commands: the REST API for sandboxes, the agent's Connect
//! calls and `/files` through the server's front door, the code
//! interpreter's `/execute` (port 49999) likewise. A failure is a tool
//! error carrying the server's message, never an end of the MCP server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use connectrpc::client::HttpClient;
use hutch_protocol::api::ListedSandbox;
use hutch_protocol::envd::filesystem::{FileType, FilesystemClient, ListDirRequest};
use hutch_protocol::envd::process::process_selector::Selector;
use hutch_protocol::envd::process::{ProcessClient, ProcessSelector, SendSignalRequest, Signal};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::client::{Api, encode};
use crate::exec::{self, ProcessEvent};
use crate::{ProcessArgs, sandbox};

/// Most bytes of a command's stdout, of its stderr, or of a file that a
/// tool returns; the rest is cut, with a note saying so.
const OUTPUT_CAP: usize = 64 * 1024;
/// How long `run_command` waits for a command by default, in seconds.
const DEFAULT_COMMAND_TIMEOUT: u64 = 120;
/// The longest `run_command` may be asked to wait, in seconds.
const MAX_COMMAND_TIMEOUT: u64 = 3600;

/// Serves MCP on stdin/stdout until the client closes stdin; logs go to
/// stderr (`RUST_LOG`, default `warn`).
pub(crate) async fn serve(api: Api) -> anyhow::Result<()> {
    log_to_stderr();
    let service = Tools::new(api)
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP server")?;
    service.waiting().await.context("serving MCP")?;
    Ok(())
}

/// Logs to stderr only (stdout may be the MCP channel): `RUST_LOG`,
/// default `warn`.
fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Serves MCP's streamable HTTP transport at `http://addr/mcp` until
/// SIGINT or SIGTERM. Every request must carry the API key this client
/// uses (`Authorization: Bearer` or `X-API-Key`): the endpoint acts with
/// that key, so it answers only those who hold it.
pub(crate) async fn serve_http(api: Api, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    log_to_stderr();
    let key = Arc::new(api.key().to_owned());
    let api = Arc::new(api);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // Host names a browser may send (DNS rebinding stays refused).
    let mut hosts = vec!["localhost".to_owned(), local.ip().to_string()];
    hosts.push(local.to_string());
    hosts.push(format!("localhost:{}", local.port()));
    let service = StreamableHttpService::new(
        move || Ok(Tools::with_api(api.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_allowed_hosts(hosts),
    );
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(move |req, next| {
            let key = key.clone();
            async move { require_key(&key, req, next).await }
        }));
    println!("hutch mcp: serving MCP at http://{local}/mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .context("serving MCP over HTTP")?;
    Ok(())
}

/// Refuses a request without this client's API key.
async fn require_key(
    key: &str,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let headers = req.headers();
    let given = headers
        .get(reqwest::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or_default()
        .trim();
    if !hutch_protocol::same_secret(given, key) {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({
                "code": 401,
                "message": "send the Hutch API key this MCP server uses, as `Authorization: Bearer KEY`",
            })),
        )
            .into_response();
    }
    next.run(req).await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct CreateSandbox {
    /// Template name or id [default: "base"].
    template: Option<String>,
    /// Lifetime in seconds before the sandbox is killed [default: the
    /// server's, 300].
    timeout_seconds: Option<u64>,
    /// Environment variables of every process in the sandbox.
    envs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunCommand {
    /// The sandbox id, as create_sandbox returned it.
    sandbox_id: String,
    /// A shell command line, run with `sh -c`.
    command: String,
    /// Working directory [default: the user's home].
    cwd: Option<String>,
    /// Environment variables of this command.
    envs: Option<BTreeMap<String, String>>,
    /// Seconds to wait for the command before it is killed [default: 120,
    /// at most 3600].
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunCode {
    /// The sandbox id: a sandbox created from the code interpreter template,
    /// "code-interpreter-v1".
    sandbox_id: String,
    /// The code: a cell, run in the sandbox's stateful kernel for its
    /// language (variables and imports stay for the next call).
    code: String,
    /// "python" or "bash" [default: "python"].
    language: Option<String>,
    /// Environment variables for this call only.
    envs: Option<BTreeMap<String, String>>,
    /// Seconds to wait before the cell is interrupted [default: 120, at
    /// most 3600].
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct WriteFile {
    /// The sandbox id.
    sandbox_id: String,
    /// Absolute path of the file, or relative to the user's home; missing
    /// directories are created, an existing file is replaced.
    path: String,
    /// The file's text.
    content: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SandboxPath {
    /// The sandbox id.
    sandbox_id: String,
    /// Absolute path, or relative to the user's home.
    path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SandboxId {
    /// The sandbox id.
    sandbox_id: String,
}

/// The MCP tools, all on one Hutch server.
#[derive(Clone)]
struct Tools {
    api: Arc<Api>,
    tool_router: ToolRouter<Tools>,
}

#[tool_router]
impl Tools {
    fn new(api: Api) -> Tools {
        Self::with_api(Arc::new(api))
    }

    fn with_api(api: Arc<Api>) -> Tools {
        Tools {
            api,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Create a sandbox (an isolated Linux machine) from a template; returns its id. It is killed after its timeout."
    )]
    async fn create_sandbox(&self, Parameters(p): Parameters<CreateSandbox>) -> CallToolResult {
        outcome(create_sandbox(&self.api, p).await)
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it; returns its exit code, stdout and stderr (each cut after 64 KiB)."
    )]
    async fn run_command(&self, Parameters(p): Parameters<RunCommand>) -> CallToolResult {
        outcome(run_command(&self.api, p).await)
    }

    #[tool(
        description = "Run code in a code interpreter sandbox (template code-interpreter-v1) in a stateful Jupyter kernel; returns stdout, stderr, the results (text and formats; PNG and JPEG charts as images) and the error with its traceback."
    )]
    async fn run_code(&self, Parameters(p): Parameters<RunCode>) -> CallToolResult {
        outcome(run_code(&self.api, p).await)
    }

    #[tool(description = "Write a text file in a sandbox.")]
    async fn write_file(&self, Parameters(p): Parameters<WriteFile>) -> CallToolResult {
        outcome(write_file(&self.api, p).await)
    }

    #[tool(description = "Read a text file from a sandbox (cut after 64 KiB).")]
    async fn read_file(&self, Parameters(p): Parameters<SandboxPath>) -> CallToolResult {
        outcome(read_file(&self.api, p).await)
    }

    #[tool(
        description = "List a directory in a sandbox: each entry's name, type (file, directory, symlink) and size in bytes."
    )]
    async fn list_files(&self, Parameters(p): Parameters<SandboxPath>) -> CallToolResult {
        outcome(list_files(&self.api, p).await)
    }

    #[tool(description = "Kill a sandbox: its processes and files are gone.")]
    async fn kill_sandbox(&self, Parameters(p): Parameters<SandboxId>) -> CallToolResult {
        outcome(kill_sandbox(&self.api, p).await)
    }

    #[tool(
        description = "List the running and paused sandboxes: id, template, state, start and end times."
    )]
    async fn list_sandboxes(&self) -> CallToolResult {
        outcome(list_sandboxes(&self.api).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("hutch", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Hutch sandboxes: create one with create_sandbox, run commands and move \
                 files with its id, kill it with kill_sandbox when done.",
            )
    }
}

/// A tool's result, or its error as a tool error with the full message.
fn outcome(result: anyhow::Result<CallToolResult>) -> CallToolResult {
    result.unwrap_or_else(|e| CallToolResult::error(vec![ContentBlock::text(format!("{e:#}"))]))
}

fn text(s: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(s)])
}

async fn create_sandbox(api: &Api, p: CreateSandbox) -> anyhow::Result<CallToolResult> {
    let template = p.template.unwrap_or_else(|| "base".to_string());
    nonempty("template", &template)?;
    if p.timeout_seconds == Some(0) {
        return Err(anyhow!("timeout_seconds must be at least 1"));
    }
    let envs = env_pairs(p.envs, hutch_env::validate_sandbox_env)?;
    let id = sandbox::create(api, &template, &envs, p.timeout_seconds, &[]).await?;
    Ok(text(id))
}

async fn run_command(api: &Api, p: RunCommand) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    nonempty("command", &p.command)?;
    let timeout = command_timeout(p.timeout_seconds)?;
    let env = env_pairs(p.envs, hutch_env::validate_process_env)?
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let process = exec::Process::from_args(ProcessArgs {
        env,
        cwd: p.cwd,
        user: None,
        command: vec!["/bin/sh".into(), "-c".into(), p.command],
    })?;
    let id = p.sandbox_id.as_str();
    let token = exec::reachable(api, id).await?;
    let (mut stdout, mut stderr, mut pid) = (Capped::default(), Capped::default(), None);
    let mut on_event = |event: ProcessEvent<'_>| {
        match event {
            ProcessEvent::Started(p) => pid = Some(p),
            ProcessEvent::Stdout(bytes) => stdout.push(bytes),
            ProcessEvent::Stderr(bytes) => stderr.push(bytes),
        }
        Ok(())
    };
    let run = exec::start_with(api, id, &process, token.as_deref(), &mut on_event);
    let Ok(exit_code) = tokio::time::timeout(Duration::from_secs(timeout), run).await else {
        let killed = match pid {
            Some(pid) => kill_process(api, id, token.as_deref(), pid).await,
            None => Err(anyhow!("its pid is unknown")),
        };
        let fate = match killed {
            Ok(()) => "it was killed".to_string(),
            Err(e) => format!("it could not be killed ({e:#}) and may still be running"),
        };
        return Err(anyhow!(
            "the command did not finish within {timeout} s: {fate}\n\
             stdout so far:\n{}\nstderr so far:\n{}",
            stdout.text("stdout"),
            stderr.text("stderr")
        ));
    };
    let exit_code = exit_code?;
    Ok(CallToolResult::structured(json!({
        "exit_code": exit_code,
        "stdout": stdout.text("stdout"),
        "stderr": stderr.text("stderr"),
    })))
}

/// The port of the code interpreter's service in a sandbox.
const CODE_INTERPRETER_PORT: u16 = 49999;

async fn run_code(api: &Api, p: RunCode) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    let timeout = command_timeout(p.timeout_seconds)?;
    let envs: BTreeMap<String, String> = env_pairs(p.envs, hutch_env::validate_process_env)?
        .into_iter()
        .collect();
    let id = p.sandbox_id.as_str();
    let token = exec::reachable(api, id).await?;
    let mut req = api
        .sandbox_request(reqwest::Method::POST, "/execute")
        .header("e2b-sandbox-id", id)
        .header("e2b-sandbox-port", CODE_INTERPRETER_PORT.to_string())
        .json(&json!({
            "code": p.code,
            "language": p.language,
            "env_vars": envs,
        }));
    if let Some(token) = token {
        req = req.header("x-access-token", token);
    }
    let mut cell = Cell::default();
    // Dropping the request at the deadline closes the connection, which
    // the service answers by interrupting the kernel.
    let run = async {
        let mut resp = api.send(req).await.map_err(|e| {
            anyhow!(
                "{e:#} (is {id} a sandbox of the code interpreter template, code-interpreter-v1?)"
            )
        })?;
        let mut pending = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| api.transport_error(&e))? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                cell.take(&line);
            }
        }
        anyhow::Ok(())
    };
    let Ok(ran) = tokio::time::timeout(Duration::from_secs(timeout), run).await else {
        return Err(anyhow!(
            "the code did not finish within {timeout} s: it was interrupted\n\
             stdout so far:\n{}\nstderr so far:\n{}",
            cell.stdout.text("stdout"),
            cell.stderr.text("stderr")
        ));
    };
    ran?;
    Ok(cell.result())
}

/// What a cell's streamed lines add up to.
#[derive(Default)]
struct Cell {
    stdout: Capped,
    stderr: Capped,
    results: Vec<serde_json::Value>,
    images: Vec<ContentBlock>,
    error: Option<serde_json::Value>,
    execution_count: Option<u64>,
}

impl Cell {
    /// One line of the service's stream.
    fn take(&mut self, line: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        match text("type") {
            "stdout" => self.stdout.push(text("text").as_bytes()),
            "stderr" => self.stderr.push(text("text").as_bytes()),
            "error" => {
                self.error = Some(json!({
                    "name": text("name"),
                    "value": text("value"),
                    "traceback": text("traceback"),
                }));
            }
            "number_of_executions" => {
                self.execution_count = value.get("execution_count").and_then(|v| v.as_u64());
            }
            "result" => {
                let mut formats = Vec::new();
                if let Some(fields) = value.as_object() {
                    for (key, v) in fields {
                        if matches!(key.as_str(), "type" | "is_main_result") || v.is_null() {
                            continue;
                        }
                        formats.push(key.clone());
                        if let (Some(data), Some(mime)) = (v.as_str(), image_mime(key)) {
                            self.images.push(ContentBlock::image(data, mime));
                        }
                    }
                }
                self.results.push(json!({
                    "text": value.get("text"),
                    "formats": formats,
                    "is_main_result": value.get("is_main_result"),
                }));
            }
            _ => {}
        }
    }

    /// The tool's result: a cell that raised is still a result (its
    /// `error` says what), not a failure of the tool.
    fn result(self) -> CallToolResult {
        let summary = json!({
            "stdout": self.stdout.text("stdout"),
            "stderr": self.stderr.text("stderr"),
            "results": self.results,
            "error": self.error,
            "execution_count": self.execution_count,
        });
        let mut result = CallToolResult::structured(summary);
        result.content.extend(self.images);
        result
    }
}

/// The MIME type of a result field that is a base64 image.
fn image_mime(field: &str) -> Option<&'static str> {
    match field {
        "png" => Some("image/png"),
        "jpeg" => Some("image/jpeg"),
        _ => None,
    }
}

/// A tool's timeout in seconds: the default, or the one asked for within
/// bounds.
fn command_timeout(asked: Option<u64>) -> anyhow::Result<u64> {
    match asked {
        None => Ok(DEFAULT_COMMAND_TIMEOUT),
        Some(t @ 1..=MAX_COMMAND_TIMEOUT) => Ok(t),
        Some(t) => Err(anyhow!(
            "timeout_seconds must be between 1 and {MAX_COMMAND_TIMEOUT}, not {t}"
        )),
    }
}

/// Sends SIGKILL to process `pid` of sandbox `id`.
async fn kill_process(api: &Api, id: &str, token: Option<&str>, pid: u32) -> anyhow::Result<()> {
    let client = ProcessClient::new(
        HttpClient::plaintext(),
        exec::agent_config(api, id, token, None)?,
    );
    let request = SendSignalRequest {
        process: buffa::MessageField::some(ProcessSelector {
            selector: Some(Selector::Pid(pid)),
            ..Default::default()
        }),
        signal: Signal::SIGNAL_SIGKILL.into(),
        ..Default::default()
    };
    client
        .send_signal(request)
        .await
        .map_err(|e| exec::rpc_error(api, id, &e))?;
    Ok(())
}

async fn write_file(api: &Api, p: WriteFile) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    nonempty("path", &p.path)?;
    let len = p.content.len();
    let req = files_request(api, reqwest::Method::POST, &p.sandbox_id, &p.path)
        .await?
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(p.content);
    api.send(req).await?;
    Ok(text(format!("wrote {len} bytes to {}", p.path)))
}

async fn read_file(api: &Api, p: SandboxPath) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    nonempty("path", &p.path)?;
    let req = files_request(api, reqwest::Method::GET, &p.sandbox_id, &p.path).await?;
    let mut resp = api.send(req).await?;
    let mut content = Capped::default();
    while let Some(chunk) = resp.chunk().await.map_err(|e| api.transport_error(&e))? {
        content.push(&chunk);
    }
    Ok(text(content.text("file")))
}

/// A `/files` request for `path` in sandbox `id`, through the front door.
async fn files_request(
    api: &Api,
    method: reqwest::Method,
    id: &str,
    path: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let token = exec::reachable(api, id).await?;
    let mut req = api
        .sandbox_request(method, &format!("/files?path={}", encode(path)))
        .header("e2b-sandbox-id", id)
        .header("e2b-sandbox-port", hutch_protocol::ENVD_PORT.to_string());
    if let Some(token) = token {
        req = req.header("x-access-token", token);
    }
    Ok(req)
}

async fn list_files(api: &Api, p: SandboxPath) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    nonempty("path", &p.path)?;
    let id = p.sandbox_id.as_str();
    let token = exec::reachable(api, id).await?;
    let client = FilesystemClient::new(
        HttpClient::plaintext(),
        exec::agent_config(api, id, token.as_deref(), None)?,
    );
    let listed = client
        .list_dir(ListDirRequest {
            path: p.path,
            depth: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| match e.message.as_deref() {
            // The agent's own words ("path '/x' does not exist").
            Some(m) if !m.is_empty() && !m.starts_with("HTTP error") => anyhow!("{m}"),
            _ => exec::rpc_error(api, id, &e),
        })?
        .into_owned();
    let entries: Vec<_> = listed
        .entries
        .iter()
        .map(|e| {
            let kind = match e.r#type.as_known() {
                Some(FileType::FILE_TYPE_FILE) => "file",
                Some(FileType::FILE_TYPE_DIRECTORY) => "directory",
                Some(FileType::FILE_TYPE_SYMLINK) => "symlink",
                _ => "other",
            };
            json!({ "name": e.name, "type": kind, "size": e.size })
        })
        .collect();
    Ok(CallToolResult::structured(json!({ "entries": entries })))
}

async fn kill_sandbox(api: &Api, p: SandboxId) -> anyhow::Result<CallToolResult> {
    nonempty("sandbox_id", &p.sandbox_id)?;
    sandbox::kill(api, &p.sandbox_id).await?;
    Ok(text(format!("killed sandbox {}", p.sandbox_id)))
}

async fn list_sandboxes(api: &Api) -> anyhow::Result<CallToolResult> {
    let listed = sandbox::list_all(api).await?;
    let sandboxes = listed
        .into_iter()
        .map(|v| {
            let s: ListedSandbox = serde_json::from_value(v)?;
            Ok(json!({
                "sandbox_id": s.sandbox_id,
                "template": s.alias.unwrap_or(s.template_id),
                "state": s.state,
                "started_at": s.started_at,
                "end_at": s.end_at,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CallToolResult::structured(
        json!({ "sandboxes": sandboxes }),
    ))
}

fn nonempty(name: &str, value: &str) -> anyhow::Result<()> {
    if value.trim().is_empty() {
        return Err(anyhow!("{name} must not be empty"));
    }
    Ok(())
}

/// One of `hutch_env`'s checks of a layer's variables.
type EnvCheck = fn(&[(String, String)]) -> Result<(), hutch_env::EnvError>;

/// Environment variables as pairs, checked by `hutch_env`'s rules for
/// their layer (`validate_sandbox_env` or `validate_process_env`), the
/// same the server and the agent apply.
fn env_pairs(
    envs: Option<BTreeMap<String, String>>,
    check: EnvCheck,
) -> anyhow::Result<Vec<(String, String)>> {
    let envs: Vec<(String, String)> = envs.unwrap_or_default().into_iter().collect();
    check(&envs)?;
    Ok(envs)
}

/// The first [`OUTPUT_CAP`] bytes of a stream, and how many came in all.
#[derive(Debug, Default)]
struct Capped {
    kept: Vec<u8>,
    total: usize,
}

impl Capped {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let room = OUTPUT_CAP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The bytes as text (invalid UTF-8 replaced), with a note when cut.
    fn text(&self, what: &str) -> String {
        let mut kept: &[u8] = &self.kept;
        if self.total > kept.len() {
            // Do not end in the middle of a character.
            if let Err(e) = std::str::from_utf8(kept)
                && e.error_len().is_none()
            {
                kept = &kept[..e.valid_up_to()];
            }
        }
        let mut out = String::from_utf8_lossy(kept).into_owned();
        if self.total > kept.len() {
            out.push_str(&format!(
                "\n[{what} cut: first {} of {} bytes shown]",
                kept.len(),
                self.total
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cells_stream_becomes_one_result_with_images() {
        let mut cell = Cell::default();
        for line in [
            r#"{"type": "number_of_executions", "execution_count": 3}"#,
            r#"{"type": "stdout", "text": "a\n", "timestamp": 1}"#,
            r#"{"type": "stderr", "text": "b\n", "timestamp": 2}"#,
            r#"{"type": "result", "is_main_result": false, "text": "<Figure>", "png": "iVBOR"}"#,
            r#"{"type": "result", "is_main_result": true, "text": "42", "html": null}"#,
            r#"{"type": "error", "name": "E", "value": "v", "traceback": "t"}"#,
            "not json",
            r#"{"type": "end_of_execution"}"#,
        ] {
            cell.take(line.as_bytes());
        }
        let result = cell.result();
        let out = result.structured_content.clone().unwrap();
        assert_eq!(out["stdout"], "a\n");
        assert_eq!(out["stderr"], "b\n");
        assert_eq!(out["execution_count"], 3);
        assert_eq!(out["results"][0]["formats"], json!(["png", "text"]));
        assert_eq!(out["results"][1]["text"], "42");
        assert_eq!(out["results"][1]["formats"], json!(["text"]));
        assert_eq!(out["error"]["name"], "E");
        // The JSON as text, then the image.
        assert_eq!(result.content.len(), 2);
        assert_ne!(result.is_error, Some(true));
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Capped::default();
        c.push(b"hello ");
        c.push(b"world\n");
        assert_eq!(c.text("stdout"), "hello world\n");
    }

    #[test]
    fn long_output_is_cut_with_a_note() {
        let mut c = Capped::default();
        c.push(&vec![b'a'; OUTPUT_CAP - 1]);
        // A two-byte character straddling the cap is dropped whole.
        c.push("é and more".as_bytes());
        let text = c.text("stdout");
        let total = OUTPUT_CAP - 1 + "é and more".len();
        assert_eq!(
            text,
            format!(
                "{}\n[stdout cut: first {} of {total} bytes shown]",
                "a".repeat(OUTPUT_CAP - 1),
                OUTPUT_CAP - 1
            )
        );
    }

    #[test]
    fn env_names_are_checked() {
        let check = hutch_env::validate_process_env;
        let ok = env_pairs(Some(BTreeMap::from([("A".into(), "1=2".into())])), check).unwrap();
        assert_eq!(ok, [("A".to_string(), "1=2".to_string())]);
        for bad in ["", "A=B"] {
            let e = env_pairs(Some(BTreeMap::from([(bad.into(), "x".into())])), check).unwrap_err();
            let want = hutch_env::EnvError::InvalidName {
                layer: hutch_env::Layer::Process,
                name: bad.to_string(),
            };
            assert_eq!(e.to_string(), want.to_string());
        }
        assert!(env_pairs(None, check).unwrap().is_empty());
    }
}
