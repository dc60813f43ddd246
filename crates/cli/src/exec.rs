//! `hutch exec` and `hutch run`: a command in a sandbox, its output streamed
//! live, its exit code passed on.
//!
//! The command is started with the agent's Connect call
//! `process.Process/Start`, sent to the server's front door (headers
//! `E2b-Sandbox-Id` and `E2b-Sandbox-Port`), exactly as the E2B SDKs do.

use std::io::{self, Write};

use anyhow::{Context, anyhow};
use base64::Engine;
use connectrpc::ConnectError;
use connectrpc::client::{ClientConfig, HttpClient};
use hutch_protocol::ENVD_PORT;
use hutch_protocol::api::ListedSandbox;
use hutch_protocol::envd::process::process_event::data_event::Output;
use hutch_protocol::envd::process::process_event::{EndEvent, Event};
use hutch_protocol::envd::process::{ProcessClient, ProcessConfig, StartRequest, StartResponse};
use hutch_protocol::exit::{exit_code, signal_of};

use crate::client::{Api, encode};
use crate::{ProcessArgs, parse_pairs, sandbox};

/// A command to run, validated.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    env: Vec<(String, String)>,
    cwd: Option<String>,
    user: Option<String>,
    command: Vec<String>,
}

impl Process {
    pub fn from_args(args: ProcessArgs) -> anyhow::Result<Process> {
        let env = parse_pairs("env", &args.env)?;
        if args.command.is_empty() {
            return Err(crate::UsageError("no command given".into()).into());
        }
        Ok(Process {
            env,
            cwd: args.cwd,
            user: args.user,
            command: args.command,
        })
    }
}

/// `hutch exec`: runs the command in sandbox `id`; returns its exit code.
pub(crate) async fn exec(api: &Api, id: &str, process: &Process) -> anyhow::Result<u8> {
    // A clear "sandbox 'x' not found" (and the API key checked) before the
    // front door, which only knows "was not found".
    let token = reachable(api, id).await?;
    start(api, id, process, token.as_deref()).await
}

/// Checks that sandbox `id` exists and can take agent calls; returns its
/// access token, if it has one.
pub(crate) async fn reachable(api: &Api, id: &str) -> anyhow::Result<Option<String>> {
    let info: ListedSandbox = api.get_json(&format!("/sandboxes/{}", encode(id))).await?;
    // A sandbox created with autoResume and paused in memory is resumed by
    // the request itself.
    let resumes_itself = info.lifecycle.auto_resume && !info.is_paused_filesystem();
    if info.is_paused() && !resumes_itself {
        return Err(anyhow!(
            "sandbox {id} is paused: resume it with `hutch sandbox resume {id}`"
        ));
    }
    Ok(info.envd_access_token)
}

/// `hutch run`: creates a sandbox from `template`, runs the command, kills
/// the sandbox (also on error and on Ctrl-C); returns the exit code.
pub(crate) async fn run(
    api: &Api,
    template: &str,
    sandbox_env: &[(String, String)],
    timeout: Option<u64>,
    process: &Process,
) -> anyhow::Result<u8> {
    let id = sandbox::create(api, template, sandbox_env, timeout, &[]).await?;
    let result = tokio::select! {
        r = start(api, &id, process, None) => r,
        _ = tokio::signal::ctrl_c() => Ok(130),
    };
    let killed = sandbox::kill(api, &id).await;
    match (result, killed) {
        (Ok(code), Ok(())) => Ok(code),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context(format!("cannot kill sandbox {id}"))),
    }
}

/// Starts the process and streams its output live until it ends.
async fn start(
    api: &Api,
    id: &str,
    process: &Process,
    access_token: Option<&str>,
) -> anyhow::Result<u8> {
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    start_with(api, id, process, access_token, &mut |event| match event {
        ProcessEvent::Started(_) => Ok(()),
        ProcessEvent::Stdout(bytes) => write_live(&mut stdout, bytes),
        ProcessEvent::Stderr(bytes) => write_live(&mut stderr, bytes),
    })
    .await
}

/// What a started process reports before its end.
pub(crate) enum ProcessEvent<'a> {
    /// It started with this pid.
    Started(u32),
    /// It wrote to its stdout (or terminal).
    Stdout(&'a [u8]),
    /// It wrote to its stderr.
    Stderr(&'a [u8]),
}

/// The Connect client settings for the agent of sandbox `id`, reached
/// through the server's front door.
pub(crate) fn agent_config(
    api: &Api,
    id: &str,
    access_token: Option<&str>,
    user: Option<&str>,
) -> anyhow::Result<ClientConfig> {
    let base: http::Uri = api
        .base()
        .parse()
        .with_context(|| format!("invalid server URL '{}'", api.base()))?;
    let mut config = ClientConfig::new(base)
        .with_default_header("e2b-sandbox-id", id)
        .with_default_header("e2b-sandbox-port", ENVD_PORT.to_string());
    if let Some(token) = access_token {
        // A `secure` sandbox's agent accepts only requests carrying it.
        config = config.with_default_header("x-access-token", token);
    }
    if let Some(user) = user {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        config = config.with_default_header("authorization", format!("Basic {token}"));
    }
    Ok(config)
}

/// Starts the process and hands `on_event` its pid and output until it
/// ends; returns its exit code.
pub(crate) async fn start_with(
    api: &Api,
    id: &str,
    process: &Process,
    access_token: Option<&str>,
    on_event: &mut (dyn FnMut(ProcessEvent<'_>) -> anyhow::Result<()> + Send),
) -> anyhow::Result<u8> {
    let config = agent_config(api, id, access_token, process.user.as_deref())?;
    let client = ProcessClient::new(HttpClient::plaintext(), config);

    let (cmd, args) = process
        .command
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let request = StartRequest {
        process: buffa::MessageField::some(ProcessConfig {
            cmd: cmd.clone(),
            args: args.to_vec(),
            envs: process.env.iter().cloned().collect(),
            cwd: process.cwd.clone(),
            ..Default::default()
        }),
        stdin: Some(false),
        ..Default::default()
    };

    let mut stream = client
        .start(request)
        .await
        .map_err(|e| rpc_error(api, id, &e))?;
    let mut end: Option<EndEvent> = None;
    while let Some(msg) = stream.message().await.map_err(|e| rpc_error(api, id, &e))? {
        let response: StartResponse = msg.to_owned_message();
        let Some(event) = response.event.into_option().and_then(|e| e.event) else {
            continue;
        };
        match event {
            Event::Data(data) => match data.output {
                Some(Output::Stdout(bytes)) | Some(Output::Pty(bytes)) => {
                    on_event(ProcessEvent::Stdout(&bytes))?;
                }
                Some(Output::Stderr(bytes)) => on_event(ProcessEvent::Stderr(&bytes))?,
                None => {}
            },
            Event::End(e) => end = Some(*e),
            Event::Start(s) => on_event(ProcessEvent::Started(s.pid))?,
            Event::Keepalive(_) => {}
        }
    }
    let end = end
        .ok_or_else(|| anyhow!("the output stream of the command ended without its exit status"))?;
    if let Some(error) = end.error.as_deref().filter(|e| !e.is_empty())
        && !end.exited
        && signal_of(&end.status).is_none()
    {
        return Err(anyhow!("the command failed: {error}"));
    }
    Ok(exit_code(&end))
}

fn write_live(out: &mut impl Write, bytes: &[u8]) -> anyhow::Result<()> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing the command's output")
}

pub(crate) fn rpc_error(api: &Api, id: &str, e: &ConnectError) -> anyhow::Error {
    let message = e.message.as_deref().unwrap_or_default();
    if message.contains("is paused") {
        return anyhow!("sandbox {id} is paused: resume it with `hutch sandbox resume {id}`");
    }
    // The front door answers 502 for a sandbox that is gone.
    if message.contains("was not found") || message.starts_with("HTTP error 502") {
        return anyhow!("sandbox {id} is not running (killed, or its timeout passed)");
    }
    if let Some(source) = std::error::Error::source(e) {
        let cause = crate::client::root_cause(source);
        if cause.contains("connection refused") {
            return anyhow!(
                "cannot reach the Hutch server at {}: {cause} — is `hutch serve` running?",
                api.base()
            );
        }
    }
    anyhow!("running the command failed: {e}")
}
