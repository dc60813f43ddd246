//! The `process.Process` Connect service.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use buffa::MessageField;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt as _;
use hutch_env::EnvError;
use hutch_protocol::envd::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, Process, ProcessEvent, ProcessInfo, ProcessSelector, SendInputRequest,
    SendInputResponse, SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse,
    StreamInputRequest, StreamInputResponse, UpdateRequest, UpdateResponse, process_event,
    process_input, process_selector, stream_input_request,
};
use tokio::sync::mpsc;

use crate::Agent;
use crate::process::{Event, InputError, ProcessHandle, Selector, Watch};
use crate::spawn::{SpawnSpec, spawn};
use crate::status::ExitInfo;

/// Request header asking for keepalive events every N seconds.
const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";

/// Serves `process.Process` for one agent.
pub struct ProcessService {
    agent: Arc<Agent>,
}

impl ProcessService {
    /// The service of `agent`.
    pub fn new(agent: Arc<Agent>) -> ProcessService {
        ProcessService { agent }
    }

    fn find_running(
        &self,
        selector: Option<&ProcessSelector>,
    ) -> Result<Arc<ProcessHandle>, ConnectError> {
        let selector = selector_of(selector)?;
        self.agent
            .processes
            .running(&selector)
            .ok_or_else(|| ConnectError::not_found(format!("{selector} not found")))
    }

    async fn send_input_to(
        &self,
        handle: &ProcessHandle,
        input: &process_input::Input,
    ) -> Result<(), ConnectError> {
        let data = match input {
            process_input::Input::Stdin(d) | process_input::Input::Pty(d) => d,
        };
        // Either way the process is not in a state to take input.
        handle
            .write_input(data)
            .await
            .map_err(|e: InputError| ConnectError::failed_precondition(e.to_string()))
    }
}

/// The user named by `Authorization: Basic base64("<user>:")`, if any.
pub fn user_from_headers(headers: &http::HeaderMap) -> Result<Option<String>, ConnectError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ConnectError::invalid_argument(
            "invalid Authorization header: expected `Basic base64(<user>:)`",
        )
    };
    let value = value.to_str().map_err(|_| invalid())?.trim();
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(invalid());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    Ok((!user.is_empty()).then(|| user.to_owned()))
}

fn selector_of(selector: Option<&ProcessSelector>) -> Result<Selector, ConnectError> {
    match selector.and_then(|s| s.selector.as_ref()) {
        Some(process_selector::Selector::Pid(pid)) => Ok(Selector::Pid(*pid)),
        Some(process_selector::Selector::Tag(tag)) => Ok(Selector::Tag(tag.clone())),
        None => Err(ConnectError::invalid_argument(
            "a process selector (pid or tag) is required",
        )),
    }
}

fn env_error(e: EnvError) -> ConnectError {
    match e {
        EnvError::UnknownUser { .. } | EnvError::UnknownGroup { .. } => {
            ConnectError::not_found(e.to_string())
        }
        _ => ConnectError::invalid_argument(e.to_string()),
    }
}

/// The keepalive period a streaming call asks for (`Keepalive-Ping-Interval`,
/// seconds), if any.
pub(crate) fn keepalive_interval(ctx: &RequestContext) -> Option<Duration> {
    let secs: u64 = ctx
        .header(KEEPALIVE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn start_event(pid: u32) -> ProcessEvent {
    ProcessEvent {
        event: Some(
            process_event::StartEvent {
                pid,
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn end_event(info: ExitInfo) -> ProcessEvent {
    ProcessEvent {
        event: Some(
            process_event::EndEvent {
                exit_code: info.exit_code,
                exited: info.exited,
                status: info.status,
                error: info.error,
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn data_event(output: process_event::data_event::Output) -> ProcessEvent {
    ProcessEvent {
        event: Some(
            process_event::DataEvent {
                output: Some(output),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn keepalive_event() -> ProcessEvent {
    ProcessEvent {
        event: Some(process_event::KeepAlive::default().into()),
        ..Default::default()
    }
}

fn to_proto(event: Event) -> ProcessEvent {
    use process_event::data_event::Output;
    match event {
        Event::Stdout(b) => data_event(Output::Stdout(b.to_vec())),
        Event::Stderr(b) => data_event(Output::Stderr(b.to_vec())),
        Event::Pty(b) => data_event(Output::Pty(b.to_vec())),
        Event::End(info) => end_event(info),
    }
}

enum StreamState {
    Start(u32, Watch),
    Live(mpsc::Receiver<Event>),
    Ended(ExitInfo),
    Done,
}

/// The events a watcher sends: `start`, the process's events as they come
/// (with keepalives in between when asked for), then `end`.
fn event_stream<R: Send + 'static>(
    pid: u32,
    watch: Watch,
    keepalive: Option<Duration>,
    wrap: fn(ProcessEvent) -> R,
) -> ServiceStream<R> {
    let ticker = keepalive.map(|period| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let stream = futures::stream::unfold(
        (StreamState::Start(pid, watch), ticker),
        move |(state, mut ticker)| async move {
            match state {
                StreamState::Start(pid, watch) => {
                    let next = match watch {
                        Watch::Live(rx) => StreamState::Live(rx),
                        Watch::Ended(info) => StreamState::Ended(info),
                    };
                    Some((start_event(pid), (next, ticker)))
                }
                StreamState::Ended(info) => Some((end_event(info), (StreamState::Done, ticker))),
                StreamState::Live(mut rx) => {
                    let event = match ticker.as_mut() {
                        Some(t) => tokio::select! {
                            biased;
                            ev = rx.recv() => ev,
                            _ = t.tick() => return Some((keepalive_event(), (StreamState::Live(rx), ticker))),
                        },
                        None => rx.recv().await,
                    };
                    match event {
                        Some(Event::End(info)) => {
                            Some((end_event(info), (StreamState::Done, ticker)))
                        }
                        Some(event) => Some((to_proto(event), (StreamState::Live(rx), ticker))),
                        // The pump never drops a watcher without `end`.
                        None => None,
                    }
                }
                StreamState::Done => None,
            }
        },
    );
    Box::pin(stream.map(move |event| Ok(wrap(event))))
}

fn wrap_start(event: ProcessEvent) -> StartResponse {
    StartResponse {
        event: MessageField::some(event),
        ..Default::default()
    }
}

fn wrap_connect(event: ProcessEvent) -> ConnectResponse {
    ConnectResponse {
        event: MessageField::some(event),
        ..Default::default()
    }
}

// Handlers return concrete message types where the trait allows any
// encodable one.
#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let processes = self
            .agent
            .processes
            .list()
            .into_iter()
            .map(|h| ProcessInfo {
                config: MessageField::some(h.config.clone()),
                pid: h.pid,
                tag: h.tag.clone(),
                ..Default::default()
            })
            .collect();
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let request = request.to_owned_message();
        let selector = selector_of(request.process.as_option())?;
        let handle = self
            .agent
            .processes
            .any(&selector)
            .ok_or_else(|| ConnectError::not_found(format!("{selector} not found")))?;
        let watch = handle.watch();
        Ok(Response::new(event_stream(
            handle.pid,
            watch,
            keepalive_interval(&ctx),
            wrap_connect,
        )))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let request = request.to_owned_message();
        let config = request.process.as_option().cloned().unwrap_or_default();
        if config.cmd.is_empty() {
            return Err(ConnectError::invalid_argument("process.cmd is required"));
        }
        let pty = request.pty.as_option().map(|p| {
            let size = p.size.as_option();
            let cols = size.map_or(80, |s| s.cols).clamp(1, u16::MAX as u32) as u16;
            let rows = size.map_or(24, |s| s.rows).clamp(1, u16::MAX as u32) as u16;
            (cols, rows)
        });
        let user = user_from_headers(ctx.headers())?;

        let mut process_env: Vec<(String, String)> = config
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        process_env.sort();
        let sandbox = self.agent.sandbox_state();
        let boot = &self.agent.boot;
        let resolved = self
            .agent
            .resolve_process(
                &sandbox,
                &process_env,
                user.as_deref(),
                config.cwd.as_deref(),
                pty.is_some(),
            )
            .map_err(|e| match e {
                crate::ResolveError::Accounts(e) => {
                    ConnectError::internal(format!("reading /etc/passwd and /etc/group: {e}"))
                }
                crate::ResolveError::Env(e) => env_error(e),
            })?;

        // A working directory somebody asked for must exist; the user's
        // home as a mere default may not (then `/`, as Docker does).
        let explicit_cwd = config.cwd.as_deref().is_some_and(|c| !c.is_empty())
            || sandbox
                .default_workdir
                .as_deref()
                .is_some_and(|c| !c.is_empty())
            || boot
                .template_workdir
                .as_deref()
                .is_some_and(|c| !c.is_empty());
        let mut cwd = resolved.cwd.clone();
        if !std::path::Path::new(&cwd).is_dir() {
            if explicit_cwd {
                return Err(ConnectError::not_found(format!(
                    "working directory {cwd:?} does not exist"
                )));
            }
            cwd = "/".to_owned();
        }

        let spec = SpawnSpec {
            program: &config.cmd,
            args: &config.args,
            env: &resolved.env,
            uid: resolved.uid,
            gid: resolved.gid,
            groups: &resolved.groups,
            cwd: &cwd,
            stdin: request.stdin.unwrap_or(true),
            pty,
        };
        let spawned = spawn(&spec).map_err(|e| {
            let message = format!("failed to start {:?}: {e}", config.cmd);
            match e.kind() {
                std::io::ErrorKind::NotFound => ConnectError::not_found(message),
                std::io::ErrorKind::PermissionDenied => ConnectError::permission_denied(message),
                _ => ConnectError::internal(message),
            }
        })?;
        tracing::info!(pid = spawned.pid, cmd = %config.cmd, tag = ?request.tag, "started process");

        let (handle, watch) = self.agent.processes.insert(
            spawned.pid,
            request.tag.clone(),
            config,
            spawned.io,
            spawned.exit,
        );

        // The process outlives its request, but not the request's deadline
        // (as with the E2B agent: that is how a command timeout works).
        if let Some(deadline) = ctx.deadline() {
            let handle = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                if !handle.ended() {
                    tracing::info!(pid = handle.pid, "deadline passed, killing process");
                    let _ = handle.signal(libc::SIGKILL);
                }
            });
        }

        Ok(Response::new(event_stream(
            handle.pid,
            watch,
            keepalive_interval(&ctx),
            wrap_start,
        )))
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let request = request.to_owned_message();
        let handle = self.find_running(request.process.as_option())?;
        if let Some(pty) = request.pty.as_option() {
            let size = pty.size.as_option().cloned().unwrap_or_default();
            let cols = size.cols.clamp(1, u16::MAX as u32) as u16;
            let rows = size.rows.clamp(1, u16::MAX as u32) as u16;
            match handle.resize(cols, rows) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ConnectError::failed_precondition(format!(
                        "process {} was not started with a PTY",
                        handle.pid
                    )));
                }
                Err(e) => {
                    return Err(ConnectError::internal(format!(
                        "resizing the terminal of process {}: {e}",
                        handle.pid
                    )));
                }
            }
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        let mut handle: Option<Arc<ProcessHandle>> = None;
        while let Some(message) = requests.next().await {
            let message = message?.to_owned_message();
            match message.event {
                Some(stream_input_request::Event::Start(start)) => {
                    handle = Some(self.find_running(start.process.as_option())?);
                }
                Some(stream_input_request::Event::Data(data)) => {
                    let Some(handle) = handle.as_ref() else {
                        return Err(ConnectError::failed_precondition(
                            "the first StreamInput message must be `start` with a process selector",
                        ));
                    };
                    if let Some(input) = data.input.as_option().and_then(|i| i.input.as_ref()) {
                        self.send_input_to(handle, input).await?;
                    }
                }
                Some(stream_input_request::Event::Keepalive(_)) | None => {}
            }
        }
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let request = request.to_owned_message();
        let handle = self.find_running(request.process.as_option())?;
        if let Some(input) = request.input.as_option().and_then(|i| i.input.as_ref()) {
            self.send_input_to(&handle, input).await?;
        }
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let request = request.to_owned_message();
        let handle = self.find_running(request.process.as_option())?;
        let signal = match request.signal.as_known() {
            Some(Signal::SIGNAL_SIGKILL) => libc::SIGKILL,
            Some(Signal::SIGNAL_SIGTERM) => libc::SIGTERM,
            _ => {
                return Err(ConnectError::invalid_argument(format!(
                    "unsupported signal {}: use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                    request.signal.to_i32()
                )));
            }
        };
        handle.signal(signal).map_err(|e| {
            ConnectError::internal(format!("signalling process {}: {e}", handle.pid))
        })?;
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let request = request.to_owned_message();
        let handle = self.find_running(request.process.as_option())?;
        if !handle.close_stdin().await {
            let why = if handle.has_pty() {
                "it runs on a PTY; send Ctrl-D (0x04) as input instead"
            } else {
                "it was started with stdin disabled, or stdin is already closed"
            };
            return Err(ConnectError::failed_precondition(format!(
                "process {} has no open stdin: {why}",
                handle.pid
            )));
        }
        Response::ok(CloseStdinResponse::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn user_comes_from_basic_authorization() {
        assert_eq!(user_from_headers(&http::HeaderMap::new()).unwrap(), None);
        // base64("user:")
        assert_eq!(
            user_from_headers(&headers("Basic dXNlcjo="))
                .unwrap()
                .as_deref(),
            Some("user")
        );
        // base64("root:ignored")
        assert_eq!(
            user_from_headers(&headers("basic cm9vdDppZ25vcmVk"))
                .unwrap()
                .as_deref(),
            Some("root")
        );
        // base64(":") — no user: the default.
        assert_eq!(user_from_headers(&headers("Basic Og==")).unwrap(), None);
        for bad in ["Bearer abc", "Basic !!!", "Basic"] {
            let err = user_from_headers(&headers(bad)).unwrap_err();
            assert_eq!(err.code, connectrpc::ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
