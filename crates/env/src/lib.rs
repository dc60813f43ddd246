//! What environment, user and working directory a sandbox process gets.
//!
//! This crate is the only place in Hutch that merges environment layers.
//! The agent calls [`resolve`] for every process it starts; template builds
//! use [`TemplateEnv`] to apply `ENV`/`ARG` steps; the server uses
//! [`image_layer`] once, when a template is made, [`snapshot_layer`] when
//! a sandbox is snapshotted, and [`validate_sandbox_env`] when a sandbox is
//! created. Everything here is
//! pure: no I/O beyond [`Accounts::load`], which only reads two files.
//!
//! # Layers, lowest to highest (see `docs/environment.md`)
//!
//! | # | layer | source |
//! |---|---|---|
//! | 0 | runtime defaults | `PATH` ([`DEFAULT_PATH`]), `HOSTNAME`, `HOME`/`USER`/`LOGNAME` of the process's user, `TERM` for PTYs |
//! | 1 | image | the image config's `Env`, in order |
//! | 2 | template | `ENV`/`ARG` build steps, expanded as `docker build` does |
//! | 3 | sandbox | `envVars` given at sandbox creation |
//! | 4 | process | `envs` given for one process |
//!
//! Then the platform's identity variables ([`IDENTITY_VARS`]) are set; they
//! cannot be overridden (layers 3–4 that try are rejected, layers 1–2 are
//! replaced), so code in a sandbox can trust them.
//!
//! Layers 1 and 2 are resolved once, when the template is made, into one
//! ordered list without duplicates ([`TemplateLayer::env`]); that list is
//! what every path uses.

mod accounts;
mod expand;
mod list;

pub use accounts::{Accounts, GroupEntry, PasswdEntry, ResolvedUser};
pub use expand::expand;
pub use list::EnvList;

/// `PATH` when no layer above the runtime defaults sets one (Docker's value).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `TERM` for processes started with a pseudo-terminal, unless a layer sets it.
pub const PTY_TERM: &str = "xterm-256color";

/// Variables that tell a process which sandbox it runs in. Set last; never
/// overridable.
pub const IDENTITY_VARS: [&str; 5] = [
    "E2B_SANDBOX",
    "E2B_SANDBOX_ID",
    "E2B_TEMPLATE_ID",
    "HUTCH_SANDBOX_ID",
    "HUTCH_TEMPLATE_ID",
];

/// Which layer a variable came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Layer 1, the image config.
    Image,
    /// Layer 2, template build steps.
    Template,
    /// Layer 3, sandbox creation.
    Sandbox,
    /// Layer 4, one process.
    Process,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Image => "image",
            Layer::Template => "template",
            Layer::Sandbox => "sandbox",
            Layer::Process => "process",
        })
    }
}

/// Why an environment, user or working directory could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A variable name that `execve` cannot carry.
    #[error(
        "invalid {layer} environment variable name {name:?}: names must be non-empty and contain no '=' or NUL"
    )]
    InvalidName {
        /// Where it came from.
        layer: Layer,
        /// The offending name.
        name: String,
    },
    /// A value that `execve` cannot carry.
    #[error(
        "invalid value for {layer} environment variable {name}: values cannot contain NUL bytes"
    )]
    InvalidValue {
        /// Where it came from.
        layer: Layer,
        /// The variable's name.
        name: String,
    },
    /// An attempt to override one of [`IDENTITY_VARS`].
    #[error(
        "{name} is set by Hutch to identify the sandbox and cannot be overridden ({layer} environment)"
    )]
    Reserved {
        /// Where it came from.
        layer: Layer,
        /// The reserved name.
        name: String,
    },
    /// A user name that is not in the sandbox's `/etc/passwd`.
    #[error("unable to find user {user}: no matching entry in /etc/passwd")]
    UnknownUser {
        /// The user as given.
        user: String,
    },
    /// A group name that is not in the sandbox's `/etc/group`.
    #[error("unable to find group {group}: no matching entry in /etc/group")]
    UnknownGroup {
        /// The group as given.
        group: String,
    },
    /// A user string that is neither `name`, `uid`, `name:group` nor `uid:gid`.
    #[error("invalid user {user:?}: expected NAME, UID, NAME:GROUP or UID:GID")]
    InvalidUser {
        /// The user as given.
        user: String,
    },
}

/// Layers 1–2, resolved when the template was made.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateLayer<'a> {
    /// Ordered `(name, value)` pairs without duplicate names.
    pub env: &'a [(String, String)],
    /// Default user: template `USER` step, else image `User`. `None`: root.
    pub user: Option<&'a str>,
    /// Default working directory: template `WORKDIR`, else image `WorkingDir`.
    pub workdir: Option<&'a str>,
}

/// Layer 3, given when the sandbox was created.
#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxLayer<'a> {
    /// Sandbox-level variables.
    pub env: &'a [(String, String)],
    /// Sandbox-level default working directory.
    pub workdir: Option<&'a str>,
}

/// Layer 4, given for one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessLayer<'a> {
    /// Process-level variables.
    pub env: &'a [(String, String)],
    /// The user to run as (`name`, `uid`, `name:group`, `uid:gid`).
    pub user: Option<&'a str>,
    /// The working directory; relative paths are taken from the default.
    pub cwd: Option<&'a str>,
    /// Whether the process gets a pseudo-terminal (then `TERM` defaults).
    pub pty: bool,
}

/// Which sandbox a process runs in.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The sandbox id.
    pub sandbox_id: &'a str,
    /// The template id.
    pub template_id: &'a str,
    /// The sandbox's hostname (`HOSTNAME`).
    pub hostname: &'a str,
}

/// Everything needed to `execve` a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The complete environment, in a stable order, without duplicate names.
    pub env: Vec<(String, String)>,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (includes `gid`).
    pub groups: Vec<u32>,
    /// The user's name, when `/etc/passwd` knows it.
    pub user_name: Option<String>,
    /// The user's home directory (`/` when unknown).
    pub home: String,
    /// The working directory.
    pub cwd: String,
}

impl Resolved {
    /// The value of `name` in [`Resolved::env`].
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Computes a process's environment, user and working directory.
///
/// Precedence: process > sandbox > template (incl. image) > runtime defaults
/// for variables; process `cwd` > sandbox workdir > template workdir > the
/// user's home for the working directory; process user > template user >
/// root for the user.
pub fn resolve(
    template: &TemplateLayer<'_>,
    sandbox: &SandboxLayer<'_>,
    process: &ProcessLayer<'_>,
    identity: &Identity<'_>,
    accounts: &Accounts,
) -> Result<Resolved, EnvError> {
    validate(sandbox.env, Layer::Sandbox)?;
    validate(process.env, Layer::Process)?;

    let user_spec = non_empty(process.user)
        .or_else(|| non_empty(template.user))
        .unwrap_or("0");
    let user = accounts.resolve_user(user_spec)?;

    let mut env = EnvList::default();
    // Layer 0: runtime defaults.
    env.set("PATH", DEFAULT_PATH);
    env.set("HOSTNAME", identity.hostname);
    env.set("HOME", &user.home);
    if let Some(name) = &user.name {
        env.set("USER", name);
        env.set("LOGNAME", name);
    }
    if process.pty {
        env.set("TERM", PTY_TERM);
    }
    // Layers 1–2, 3, 4: each replaces what is below it, by name.
    for (name, value) in template.env.iter().chain(sandbox.env).chain(process.env) {
        env.set(name, value);
    }
    // Identity: always last, never overridden.
    env.set("E2B_SANDBOX", "true");
    env.set("E2B_SANDBOX_ID", identity.sandbox_id);
    env.set("E2B_TEMPLATE_ID", identity.template_id);
    env.set("HUTCH_SANDBOX_ID", identity.sandbox_id);
    env.set("HUTCH_TEMPLATE_ID", identity.template_id);

    let default_cwd = non_empty(sandbox.workdir)
        .or_else(|| non_empty(template.workdir))
        .map(str::to_owned)
        .unwrap_or_else(|| user.home.clone());
    let cwd = match non_empty(process.cwd) {
        Some(cwd) if cwd.starts_with('/') => cwd.to_owned(),
        Some(relative) => join(&default_cwd, relative),
        None => default_cwd,
    };

    Ok(Resolved {
        env: env.into_vec(),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        user_name: user.name,
        home: user.home,
        cwd,
    })
}

/// Layer 1 from an image config's `Env` (`NAME=VALUE` strings, in order):
/// ordered, without duplicate names (a later entry replaces an earlier one
/// in place), empty values kept. Entries without `=` carry no value and
/// are skipped, as are invalid names.
pub fn image_layer(image_env: &[String]) -> Vec<(String, String)> {
    let mut env = EnvList::default();
    for entry in image_env {
        if let Some((name, value)) = entry.split_once('=')
            && valid_name(name)
            && !value.contains('\0')
        {
            env.set(name, value);
        }
    }
    env.into_vec()
}

/// Checks sandbox-level variables before a sandbox is created.
pub fn validate_sandbox_env(env: &[(String, String)]) -> Result<(), EnvError> {
    validate(env, Layer::Sandbox)
}

/// Checks process-level variables before a process is started.
pub fn validate_process_env(env: &[(String, String)]) -> Result<(), EnvError> {
    validate(env, Layer::Process)
}

/// Whether `name` is one of [`IDENTITY_VARS`].
pub fn is_reserved(name: &str) -> bool {
    IDENTITY_VARS.contains(&name)
}

/// Layers 1–2 as a template build goes: starts from the image's `Env` and
/// applies `ENV` steps, each value expanded against the variables as they
/// stand at that step (layer 0's `PATH` included when nothing set one), as
/// `docker build` does. [`TemplateEnv::into_layer`] gives the list stored in
/// the template's metadata.
#[derive(Debug, Clone, Default)]
pub struct TemplateEnv {
    env: EnvList,
}

impl TemplateEnv {
    /// Starts from an image config's `Env`.
    pub fn from_image(image_env: &[String]) -> Self {
        let mut env = EnvList::default();
        for (name, value) in image_layer(image_env) {
            env.set(&name, &value);
        }
        TemplateEnv { env }
    }

    /// Starts from an already resolved layer 1–2 list (a parent template).
    pub fn from_layer(layer: &[(String, String)]) -> Self {
        let mut env = EnvList::default();
        for (name, value) in layer {
            env.set(name, value);
        }
        TemplateEnv { env }
    }

    /// Applies `ENV name=raw`: expands `raw` and sets the result.
    pub fn apply(&mut self, name: &str, raw: &str) -> Result<(), EnvError> {
        self.apply_with(name, raw, &[])
    }

    /// Applies `ENV name=raw` with build arguments `extra` visible to the
    /// expansion (shadowed by variables of the same name).
    pub fn apply_with(
        &mut self,
        name: &str,
        raw: &str,
        extra: &[(String, String)],
    ) -> Result<(), EnvError> {
        if !valid_name(name) {
            return Err(EnvError::InvalidName {
                layer: Layer::Template,
                name: name.to_owned(),
            });
        }
        let value = self.expand_with(raw, extra);
        if value.contains('\0') {
            return Err(EnvError::InvalidValue {
                layer: Layer::Template,
                name: name.to_owned(),
            });
        }
        self.env.set(name, &value);
        Ok(())
    }

    /// Expands `raw` against the variables as they stand, plus `extra`
    /// (build arguments), which `ENV` values shadow.
    pub fn expand_with(&self, raw: &str, extra: &[(String, String)]) -> String {
        expand(raw, |name| {
            self.env
                .get(name)
                .or_else(|| {
                    extra
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                })
                .or(if name == "PATH" {
                    Some(DEFAULT_PATH)
                } else {
                    None
                })
        })
    }

    /// Expands `raw` against the variables as they stand.
    pub fn expand(&self, raw: &str) -> String {
        self.expand_with(raw, &[])
    }

    /// The variable's current value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env.get(name)
    }

    /// The resolved layer 1–2 list.
    pub fn into_layer(self) -> Vec<(String, String)> {
        self.env.into_vec()
    }
}

/// The layers 1–2 of a snapshot's template: the sandbox's own variables
/// (layer 3, `sandbox`) set over its template's resolved list (`template`),
/// values taken as they are (they were never expanded). Sandboxes created
/// from the snapshot see what the snapshotted sandbox saw, and their own
/// layer 3 still overrides it.
pub fn snapshot_layer(
    template: &[(String, String)],
    sandbox: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = TemplateEnv::from_layer(template);
    for (name, value) in sandbox {
        env.env.set(name, value);
    }
    env.into_layer()
}

fn validate(env: &[(String, String)], layer: Layer) -> Result<(), EnvError> {
    for (name, value) in env {
        if !valid_name(name) {
            return Err(EnvError::InvalidName {
                layer,
                name: name.clone(),
            });
        }
        if is_reserved(name) {
            return Err(EnvError::Reserved {
                layer,
                name: name.clone(),
            });
        }
        if value.contains('\0') {
            return Err(EnvError::InvalidValue {
                layer,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn join(base: &str, relative: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{relative}")
    } else {
        format!("{base}/{relative}")
    }
}

#[cfg(test)]
mod tests;
