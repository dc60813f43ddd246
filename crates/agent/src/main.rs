//! `hutch-envd`: the agent, run by the host as the sandbox's PID 1.
//!
//! ```text
//! hutch-envd --boot /run/hutch/boot.json [--listen-fd N] [--socket PATH] [--listen ADDR:PORT]...
//!            [--environment-socket PATH]
//! ```
//!
//! In a sandbox the host starts it with `--listen-fd 3`: a unix socket the
//! host bound and listens on, inherited by the agent (see
//! `hutch_protocol::boot`). `--socket` binds a socket of its own and
//! `--listen` serves on TCP (to run the agent on its own, for debugging or
//! tests). `--environment-socket` binds a socket, open to every process in
//! the sandbox, that answers `POST /environment` only: the environment a
//! process would get (for the code interpreter's kernels; the host passes
//! `/run/hutch/environment.sock`). `HUTCH_LOG=debug|info|warn|error` sets
//! the log level.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hutch_envd::console::{self, ConsoleLog};
use hutch_envd::{Agent, AgentConfig, bind_socket, ensure_workdir, inherited_listener};
use hutch_protocol::boot::{BOOT_SCHEMA_VERSION, BootConfig};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str =
    "usage: hutch-envd --boot PATH [--listen-fd N] [--socket PATH] [--listen ADDR:PORT]...";

struct Args {
    boot: Option<PathBuf>,
    listen_fd: Option<i32>,
    socket: Option<PathBuf>,
    environment_socket: Option<PathBuf>,
    listen: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        boot: None,
        listen_fd: None,
        socket: None,
        environment_socket: None,
        listen: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--boot" => args.boot = Some(PathBuf::from(value()?)),
            "--listen-fd" => {
                let v = value()?;
                let fd =
                    v.parse::<i32>().ok().filter(|fd| *fd > 2).ok_or_else(|| {
                        format!("--listen-fd {v:?}: expected a descriptor above 2")
                    })?;
                args.listen_fd = Some(fd);
            }
            "--socket" => args.socket = Some(PathBuf::from(value()?)),
            "--environment-socket" => {
                args.environment_socket = Some(PathBuf::from(value()?));
            }
            "--listen" => args.listen.push(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.listen_fd.is_none() && args.socket.is_none() && args.listen.is_empty() {
        return Err(format!("nothing to listen on\n{USAGE}"));
    }
    Ok(args)
}

fn load_boot(path: Option<&PathBuf>) -> Result<BootConfig, String> {
    let Some(path) = path else {
        // Running on its own (debugging): an empty template.
        return Ok(BootConfig {
            schema_version: BOOT_SCHEMA_VERSION,
            sandbox_id: "local".into(),
            template_id: "local".into(),
            template_name: "local".into(),
            template_env: Vec::new(),
            template_user: None,
            template_workdir: None,
        });
    };
    let text = std::fs::read(path)
        .map_err(|e| format!("reading boot configuration {}: {e}", path.display()))?;
    let boot: BootConfig = serde_json::from_slice(&text)
        .map_err(|e| format!("parsing boot configuration {}: {e}", path.display()))?;
    if boot.schema_version != BOOT_SCHEMA_VERSION {
        return Err(format!(
            "boot configuration {} has schema version {}, this agent reads version {BOOT_SCHEMA_VERSION}",
            path.display(),
            boot.schema_version
        ));
    }
    Ok(boot)
}

fn init_logging() {
    let level = match std::env::var("HUTCH_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    // A bounded log that no write error can turn into a panic (a sandbox
    // may fill its disk, where its console log lives).
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(ConsoleLog::stderr(console::DEFAULT_LIMIT))
        .log_internal_errors(false)
        .with_ansi(false)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hutch-envd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let boot = match load_boot(args.boot.as_ref()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Outside a PID namespace, still collect orphans of our processes.
    if std::process::id() != 1 {
        // SAFETY: plain prctl call.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    // Start reaping before anything can start a child.
    hutch_envd::reaper::reaper();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, boot)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, boot: BootConfig) -> Result<(), String> {
    if let Err(e) = ensure_workdir(&boot) {
        // Not fatal: processes that need it will say so.
        tracing::warn!(
            "creating the default working directory {:?}: {e}",
            boot.template_workdir
        );
    }
    let agent = Agent::new(AgentConfig {
        boot,
        accounts_root: PathBuf::from("/"),
    });

    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;

    let mut servers = tokio::task::JoinSet::new();
    if let Some(fd) = args.listen_fd {
        let listener = inherited_listener(fd)
            .map_err(|e| format!("using the inherited socket on descriptor {fd}: {e}"))?;
        tracing::info!("listening on the host's socket (descriptor {fd})");
        let agent = agent.clone();
        servers.spawn(async move { agent.serve_unix(listener).await });
    }
    if let Some(path) = &args.socket {
        let listener = bind_socket(path)
            .map_err(|e| format!("binding unix socket {}: {e}", path.display()))?;
        tracing::info!("listening on {}", path.display());
        let agent = agent.clone();
        servers.spawn(async move { agent.serve_unix(listener).await });
    }
    if let Some(path) = &args.environment_socket {
        // Not fatal: a sandbox without it only lacks the code interpreter's
        // view of the environment.
        match hutch_envd::bind_environment_socket(path) {
            Ok(listener) => {
                tracing::info!("answering /environment on {}", path.display());
                let agent = agent.clone();
                servers.spawn(async move { agent.serve_environment(listener).await });
            }
            Err(e) => tracing::warn!("cannot bind {}: {e}", path.display()),
        }
    }
    for addr in &args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listening on {addr}: {e}"))?;
        tracing::info!(
            "listening on {}",
            listener
                .local_addr()
                .map_or(addr.clone(), |a| a.to_string())
        );
        let agent = agent.clone();
        servers.spawn(async move { agent.serve_tcp(listener).await });
    }

    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        Some(result) = servers.join_next() => {
            let message = match result {
                Ok(Ok(())) => "server stopped".to_owned(),
                Ok(Err(e)) => format!("server failed: {e}"),
                Err(e) => format!("server task failed: {e}"),
            };
            agent.stop_processes(Duration::from_secs(1)).await;
            return Err(message);
        }
    }
    agent.stop_processes(Duration::from_secs(1)).await;
    if std::process::id() == 1 {
        // Whatever else is left in the sandbox goes too.
        // SAFETY: plain syscall; as PID 1 this signals every other process
        // in the PID namespace.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
    if let Some(path) = &args.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
