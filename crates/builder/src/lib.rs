//! Building templates.
//!
//! * Recipes: a base plus steps ([`recipe`]), written as a Dockerfile
//!   ([`dockerfile`]) or sent through E2B's template API (the server maps
//!   those to the same [`recipe::Recipe`]).
//! * The engine ([`engine`]) runs the steps — `RUN` in real build sandboxes,
//!   `COPY`/`USER`/`WORKDIR` as layers written directly ([`steps`],
//!   [`layer`]) — with a layer cache ([`cache`]).
//! * The build context and `.dockerignore` ([`context`]).
//! * The default `base` template: a Debian root filesystem made with
//!   `mmdebstrap` from Debian packages, with a user `user` (uid 1000) that
//!   has passwordless `sudo` and is the default user — what E2B's `base`
//!   template offers and what the E2B SDKs' own tests expect (`sudo`,
//!   `python3`, `bash`).

pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod layer;
pub mod recipe;
pub mod rootfs;
pub mod steps;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hutch_image::ImageConfig;

/// The name of the default template.
pub const BASE_TEMPLATE: &str = "base";

/// Debian suite the base template is built from.
pub const BASE_SUITE: &str = "bookworm";

/// Packages in the base template, beyond Debian's `minbase` variant.
pub const BASE_PACKAGES: &[&str] = &[
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "git",
    "iproute2",
    "iputils-ping",
    "less",
    "procps",
    "python3",
    "python3-pip",
    "sudo",
];

/// Why a template could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile cannot be parsed or uses something unsupported.
    #[error("Dockerfile{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Dockerfile {
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The build context is unusable (missing source, bad `.dockerignore`).
    #[error("build context: {0}")]
    Context(String),
    /// A step cannot be carried out (bad `--chown`, unknown user...).
    #[error("{0}")]
    Step(String),
    /// A step failed; `step`/`line` say which.
    #[error("{}{step} failed: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    At {
        /// The step as written.
        step: String,
        /// Its line.
        line: Option<usize>,
        /// Why.
        message: String,
    },
    /// A `RUN` command exited non-zero.
    #[error("{}{step} exited with code {code} ({status}); its last output:\n{output}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    StepFailed {
        /// Its line.
        line: Option<usize>,
        /// The step as written.
        step: String,
        /// The exit code.
        code: u8,
        /// The agent's status text.
        status: String,
        /// The last lines of its output.
        output: String,
    },
    /// Writing a layer failed.
    #[error("layer: {0}")]
    Layer(String),
    /// A build sandbox could not be booted.
    #[error("build sandbox: {0}")]
    Runtime(#[source] hutch_runtime::RuntimeError),
    /// The template's start/ready check failed.
    #[error("the template is not ready: {0}")]
    NotReady(String),
    /// Host I/O failed.
    #[error("{0}")]
    Io(String),
    /// `mmdebstrap` is not installed.
    #[error("mmdebstrap is not installed; install it with `apt install mmdebstrap`")]
    MissingMmdebstrap,
    /// A build tool could not be started.
    #[error("cannot run {tool}")]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// A build tool failed.
    #[error("{tool} failed ({status}); its last output:\n{tail}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its last lines of output.
        tail: String,
    },
}

impl BuildError {
    /// Attaches the step the error happened in.
    pub fn at(self, step: &recipe::Step) -> BuildError {
        match self {
            BuildError::StepFailed {
                code,
                status,
                output,
                ..
            } => BuildError::StepFailed {
                line: step.line,
                step: step.text.clone(),
                code,
                status,
                output,
            },
            e @ (BuildError::At { .. } | BuildError::Dockerfile { .. }) => e,
            e => BuildError::At {
                step: step.text.clone(),
                line: step.line,
                message: e.to_string(),
            },
        }
    }

    /// The exit code of the failing step, for `StepFailed`.
    pub fn exit_code(&self) -> Option<u8> {
        match self {
            BuildError::StepFailed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The image config of the base template: Debian's default `PATH`, a UTF-8
/// locale, user `user`, working directory `/home/user`.
pub fn base_image_config() -> ImageConfig {
    ImageConfig {
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "LANG=C.UTF-8".to_owned(),
        ],
        working_dir: Some("/home/user".to_owned()),
        user: Some("user".to_owned()),
        entrypoint: None,
        cmd: Some(vec!["/bin/bash".to_owned()]),
    }
}

/// Builds the base root filesystem as an uncompressed tar at
/// `work_dir/base.tar`, reporting `mmdebstrap`'s output line by line to
/// `progress`. The tar holds the whole root (one layer).
pub fn build_base_rootfs(
    work_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BuildError> {
    if Command::new("mmdebstrap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err(BuildError::MissingMmdebstrap);
    }
    let out = work_dir.join("base.tar");
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg("--mode=root")
        .arg("--format=tar")
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        .arg("--customize-hook=chroot \"$1\" useradd --create-home --uid 1000 --user-group --shell /bin/bash user")
        .arg("--customize-hook=echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > \"$1/etc/sudoers.d/user\" && chmod 0440 \"$1/etc/sudoers.d/user\"")
        .arg("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin")
        .arg(BASE_SUITE)
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|cause| BuildError::Spawn {
        tool: "mmdebstrap",
        cause,
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        progress(&line);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let stdout_lines = out_thread.join().unwrap_or_default();
    let status = child.wait().map_err(|cause| BuildError::Spawn {
        tool: "mmdebstrap",
        cause,
    })?;
    if !status.success() {
        let _ = std::fs::remove_file(&out);
        tail.extend(stdout_lines.into_iter().rev().take(5));
        return Err(BuildError::Failed {
            tool: "mmdebstrap",
            status,
            tail: Vec::from(tail).join("\n"),
        });
    }
    Ok(out)
}
