//! What a template build does, independent of how it was written: a base and
//! a list of steps. Both frontends — Dockerfiles ([`crate::dockerfile`]) and
//! E2B's template API (in the server) — produce a [`Recipe`]; the engine
//! ([`crate::engine`]) runs it.
//!
//! Values are kept as written (unexpanded): the engine expands `$VAR`s
//! against the environment and build arguments as they stand at each step,
//! as `docker build` does.

use serde::{Deserialize, Serialize};

/// A template build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// What to start from: a Hutch template name, or an image reference
    /// pulled from a registry. Resolved by the caller.
    pub from: String,
    /// Source line of the `FROM` (Dockerfiles).
    pub from_line: Option<usize>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Command started in the background in every sandbox of the template.
    pub start_cmd: Option<String>,
    /// Command polled until it succeeds before a sandbox counts as ready.
    pub ready_cmd: Option<String>,
    /// Things the frontend accepted but ignores, with why (shown in the log).
    pub notes: Vec<String>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Source line (Dockerfiles), for messages.
    pub line: Option<usize>,
    /// The step as written, for the log.
    pub text: String,
    /// What it does.
    pub kind: StepKind,
    /// Run it even if a cached result exists (and everything after it).
    pub force: bool,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// Runs a command in a sandbox of the template as built so far; its
    /// filesystem changes become a layer.
    Run {
        /// The command.
        command: RunCommand,
        /// Runs as this user instead of the current one.
        user: Option<String>,
    },
    /// Sets variables (`ENV`); values expand against the state so far.
    Env(Vec<(String, String)>),
    /// Declares a build argument with an optional default.
    Arg {
        /// Its name.
        name: String,
        /// Its default, unexpanded.
        default: Option<String>,
    },
    /// Sets the working directory, creating it if missing.
    Workdir(String),
    /// Sets the user (`name[:group]` or `uid[:gid]`), creating a named user
    /// with a home directory if it does not exist.
    User {
        /// The user, as written.
        name: String,
        /// Also give the user passwordless `sudo`.
        sudo: bool,
    },
    /// Copies files from the build context (or an uploaded file set).
    Copy(Copy),
    /// Sets the shell used for shell-form `RUN` (`SHELL`).
    Shell(Vec<String>),
}

/// A `RUN` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunCommand {
    /// Run by the current shell (`["/bin/sh", "-c"]` unless `SHELL` changed it).
    Shell(String),
    /// Run directly: program and arguments.
    Exec(Vec<String>),
}

/// A `COPY`/`ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Sources relative to the context; may contain `*`, `?` and `[...]`.
    pub sources: Vec<String>,
    /// Destination; relative to the working directory unless absolute.
    pub dest: String,
    /// `--chown` owner, as written (`user[:group]`, names or ids).
    pub chown: Option<String>,
    /// `--chmod` mode for the copied files and directories.
    pub chmod: Option<u32>,
    /// `ADD`: local tar archives are extracted into the destination.
    pub extract: bool,
    /// Which context: `None` for the build context, `Some(hash)` for a file
    /// set uploaded through the template API.
    pub files: Option<String>,
}
