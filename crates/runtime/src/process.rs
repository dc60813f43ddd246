//! Running commands in a sandbox from the host: the agent's Connect call
//! `process.Process/Start`, over HTTP/2 on the agent's unix socket.
//!
//! This is what template builds use for `RUN` steps and what sandboxes use
//! for a template's start and ready commands. The request is the same one
//! the E2B SDKs send through the front door, so the process gets its
//! environment, user and working directory from the one merge in the agent
//! (`hutch_env::resolve`): nothing here builds an environment.

use crate::agent::AgentLink;
use std::ops::ControlFlow;
use std::time::Duration;

use base64::Engine;
use connectrpc::client::{ClientConfig, Http2Connection};
use hutch_protocol::envd::process::process_event::data_event::Output;
use hutch_protocol::envd::process::process_event::{EndEvent, Event};
use hutch_protocol::envd::process::{ProcessClient, ProcessConfig, StartRequest, StartResponse};
use hyper_util::rt::TokioIo;

use crate::error::RuntimeError;

/// How long establishing the HTTP/2 connection to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A command to start in a sandbox.
#[derive(Debug, Clone, Default)]
pub struct Command {
    /// The program (looked up in the process's `PATH` by the agent).
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Process-level variables (layer 4 of the environment precedence).
    pub envs: Vec<(String, String)>,
    /// Working directory; the template's default when `None`.
    pub cwd: Option<String>,
    /// User to run as; the template's default user when `None`.
    pub user: Option<String>,
}

impl Command {
    /// `sh -c script`-style command: `shell[0]` with `shell[1..]` and
    /// `script` as arguments.
    pub fn shell(shell: &[String], script: &str) -> Command {
        let (cmd, rest) = shell.split_first().map_or_else(
            || ("/bin/sh".to_owned(), vec!["-c".to_owned()]),
            |(c, r)| (c.clone(), r.to_vec()),
        );
        let mut args = rest;
        args.push(script.to_owned());
        Command {
            cmd,
            args,
            ..Default::default()
        }
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandExit {
    /// The exit code a shell would show (128 + signal for a signal).
    pub code: u8,
    /// The agent's description, e.g. `exit status 2` or `signal: killed`.
    pub status: String,
}

impl CommandExit {
    /// Whether the command succeeded (exit code 0).
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Runs `command` in the sandbox whose agent listens on `socket`, passing
/// each chunk of output to `on_output` as it arrives, until it ends.
pub async fn run_command(
    agent: &AgentLink,
    command: &Command,
    on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
) -> Result<CommandExit, RuntimeError> {
    let mut end: Option<EndEvent> = None;
    call(agent, command, &mut |event| {
        match event {
            Event::Data(data) => match data.output {
                Some(Output::Stdout(bytes)) | Some(Output::Pty(bytes)) => {
                    on_output(OutputStream::Stdout, &bytes)
                }
                Some(Output::Stderr(bytes)) => on_output(OutputStream::Stderr, &bytes),
                None => {}
            },
            Event::End(e) => end = Some(*e),
            Event::Start(_) | Event::Keepalive(_) => {}
        }
        ControlFlow::Continue(())
    })
    .await?;
    let end = end.ok_or_else(|| RuntimeError::AgentProtocol {
        agent: agent.to_string(),
        detail: "the output stream of the command ended without its exit status".to_owned(),
    })?;
    if let Some(error) = end.error.as_deref().filter(|e| !e.is_empty())
        && !end.exited
        && hutch_protocol::exit::signal_of(&end.status).is_none()
    {
        // The agent could not start it (no such program, no such user...).
        return Err(RuntimeError::CommandFailed {
            command: describe(command),
            reason: error.to_owned(),
        });
    }
    Ok(CommandExit {
        code: hutch_protocol::exit::exit_code(&end),
        status: end.status.clone(),
    })
}

/// What a command followed by [`spawn_command_following`] does, as it
/// happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEvent {
    /// A chunk of its output.
    Output(OutputStream, Vec<u8>),
    /// It ended (the agent's description of how), or its output stream
    /// broke (why): nothing follows.
    Ended(String),
}

/// Where [`spawn_command_following`] sends a command's events.
pub type CommandEvents = Box<dyn FnMut(CommandEvent) + Send>;

/// Starts `command` in the background, as [`spawn_command`] does, and
/// follows it in a task of its own: `on_event` gets its output as it comes,
/// then how it ended. Returns its pid once the agent has started it.
pub async fn spawn_command_following(
    agent: &AgentLink,
    command: &Command,
    mut on_event: CommandEvents,
) -> Result<u32, RuntimeError> {
    let (started, pid) = tokio::sync::oneshot::channel::<Result<u32, String>>();
    let (link, cmd) = (agent.clone(), command.clone());
    tokio::spawn(async move {
        let mut started = Some(started);
        let result = call(&link, &cmd, &mut |event| {
            match event {
                Event::Start(s) => {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(Ok(s.pid));
                    }
                }
                Event::Data(data) => match data.output {
                    Some(Output::Stdout(bytes)) | Some(Output::Pty(bytes)) => {
                        on_event(CommandEvent::Output(OutputStream::Stdout, bytes.to_vec()))
                    }
                    Some(Output::Stderr(bytes)) => {
                        on_event(CommandEvent::Output(OutputStream::Stderr, bytes.to_vec()))
                    }
                    None => {}
                },
                Event::End(end) => {
                    let how = end
                        .error
                        .clone()
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| end.status.clone());
                    match started.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(format!("it ended at once ({how})")));
                        }
                        None => on_event(CommandEvent::Ended(how)),
                    }
                    return ControlFlow::Break(());
                }
                Event::Keepalive(_) => {}
            }
            ControlFlow::Continue(())
        })
        .await;
        let lost = match result {
            Err(e) => e.to_string(),
            Ok(()) => "the output stream ended without its exit status".to_owned(),
        };
        match started.take() {
            Some(tx) => {
                let _ = tx.send(Err(lost));
            }
            None => on_event(CommandEvent::Ended(lost)),
        }
    });
    match pid.await {
        Ok(Ok(pid)) => Ok(pid),
        Ok(Err(reason)) => Err(RuntimeError::CommandFailed {
            command: describe(command),
            reason,
        }),
        Err(_) => Err(RuntimeError::AgentProtocol {
            agent: agent.to_string(),
            detail: "the task following the command stopped before it started".to_owned(),
        }),
    }
}

/// Starts `command` in the background: returns its pid once the agent has
/// started it. The process keeps running after this returns (the agent
/// drains its output); its output is discarded.
pub async fn spawn_command(agent: &AgentLink, command: &Command) -> Result<u32, RuntimeError> {
    let mut outcome: Option<Result<u32, String>> = None;
    call(agent, command, &mut |event| match event {
        Event::Start(s) => {
            outcome = Some(Ok(s.pid));
            ControlFlow::Break(())
        }
        Event::End(end) => {
            outcome = Some(Err(end
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| format!("it ended at once ({})", end.status))));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .await?;
    match outcome {
        Some(Ok(pid)) => Ok(pid),
        Some(Err(reason)) => Err(RuntimeError::CommandFailed {
            command: describe(command),
            reason,
        }),
        None => Err(RuntimeError::AgentProtocol {
            agent: agent.to_string(),
            detail: "the output stream of the command ended before it started".to_owned(),
        }),
    }
}

/// Sends `Start` and feeds the stream's events to `on_event` until the
/// stream ends or `on_event` breaks.
async fn call(
    agent: &AgentLink,
    command: &Command,
    on_event: &mut (dyn FnMut(Event) -> ControlFlow<()> + Send),
) -> Result<(), RuntimeError> {
    let link = agent.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let link = link.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(link.connect().await?)) }
    });
    let authority: http::Uri = http::Uri::from_static("http://localhost");
    let conn = Http2Connection::builder()
        .establishment_timeout(CONNECT_TIMEOUT)
        .lazy_with_connector(connector, authority.clone())
        .shared(1);
    let mut config = ClientConfig::new(authority);
    if let Some(user) = &command.user {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        config = config.with_default_header("authorization", format!("Basic {token}"));
    }
    let client = ProcessClient::new(conn, config);
    let request = StartRequest {
        process: buffa::MessageField::some(ProcessConfig {
            cmd: command.cmd.clone(),
            args: command.args.clone(),
            envs: command.envs.iter().cloned().collect(),
            cwd: command.cwd.clone(),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    };
    let rpc = |e: connectrpc::ConnectError| rpc_error(agent, &e);
    let mut stream = client.start(request).await.map_err(rpc)?;
    while let Some(msg) = stream.message().await.map_err(rpc)? {
        let response: StartResponse = msg.to_owned_message();
        if let Some(event) = response.event.into_option().and_then(|e| e.event)
            && on_event(event).is_break()
        {
            break;
        }
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.cmd.as_str())
        .chain(command.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

fn rpc_error(agent: &AgentLink, e: &connectrpc::ConnectError) -> RuntimeError {
    RuntimeError::AgentProtocol {
        agent: agent.to_string(),
        detail: format!("process.Process/Start: {e}"),
    }
}

/// How long [`start_and_wait_ready`] polls a ready command by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts a template's start command (in the background) and polls its
/// ready command until it exits 0, for at most `timeout`; both are command
/// lines run by `/bin/sh -c` with the template's defaults. Each ready check
/// is itself bounded by what is left of `timeout`. On a timeout the error
/// carries the last check's exit and output. With `follow`, the start
/// command's output and end go there as they come
/// ([`spawn_command_following`]); else they are discarded.
pub async fn start_and_wait_ready(
    agent: &AgentLink,
    start: Option<&str>,
    ready: Option<&str>,
    timeout: Duration,
    follow: Option<CommandEvents>,
) -> Result<(), RuntimeError> {
    let shell = ["/bin/sh".to_owned(), "-c".to_owned()];
    if let Some(start) = start {
        let start = Command::shell(&shell, start);
        match follow {
            Some(on_event) => spawn_command_following(agent, &start, on_event).await?,
            None => spawn_command(agent, &start).await?,
        };
    }
    let Some(ready) = ready else {
        return Ok(());
    };
    let ready = &Command::shell(&shell, ready);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    let mut last = String::from("it never finished");
    loop {
        let mut output = Vec::new();
        let check = tokio::time::timeout_at(
            deadline,
            run_command(agent, ready, &mut |_, bytes| {
                output.extend_from_slice(bytes);
                let excess = output.len().saturating_sub(4096);
                output.drain(..excess);
            }),
        )
        .await;
        match check {
            Ok(Ok(exit)) if exit.success() => return Ok(()),
            Ok(Ok(exit)) => {
                last = format!(
                    "{}; output: {}",
                    exit.status,
                    String::from_utf8_lossy(&output).trim()
                );
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + interval >= deadline {
            return Err(RuntimeError::NotReady {
                command: describe(ready),
                timeout,
                last,
            });
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_secs(1));
    }
}
