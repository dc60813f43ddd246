//! The host → agent contract.
//!
//! The agent (`hutch-envd`) is the init process of every sandbox. The host
//! starts it with `hutch-envd --boot /run/hutch/boot.json`; that file (a
//! read-only bind mount) holds a [`BootConfig`]: everything fixed for the
//! life of the sandbox, including the template's resolved environment
//! (layers 1–2 of `docs/environment.md`). The sandbox layer (layer 3) is
//! delivered afterwards with `POST /init` ([`InitRequest`], E2B-compatible),
//! so that a pre-booted sandbox can be handed to a user.
//!
//! The agent serves on a unix socket that the *host* binds, in a host
//! directory the sandbox cannot see, and hands to the agent as an inherited
//! listening file descriptor ([`AGENT_LISTEN_FD`], passed with
//! `--listen-fd`). Nothing inside the sandbox can replace, move or redirect
//! that socket: the path the host connects to is not in any directory the
//! sandbox can reach (see `docs/security.md`).

use serde::{Deserialize, Serialize};

/// Directory inside the sandbox where Hutch mounts its own files.
pub const HUTCH_DIR: &str = "/run/hutch";
/// Path of the agent binary inside the sandbox (read-only bind mount).
pub const AGENT_BINARY: &str = "/run/hutch/bin/hutch-envd";
/// Path of the boot configuration inside the sandbox (read-only bind mount).
pub const BOOT_CONFIG: &str = "/run/hutch/boot.json";

/// Where the agent answers `POST /environment` for processes in the
/// sandbox (the code interpreter's service), without a token.
pub const ENVIRONMENT_SOCKET: &str = "/run/hutch/environment.sock";
/// The file descriptor on which the agent finds its listening unix socket
/// (bound by the host, inherited through `runc run --preserve-fds 1`).
pub const AGENT_LISTEN_FD: i32 = 3;
/// File name of the agent's socket in the sandbox's host-side bundle
/// directory.
pub const AGENT_SOCKET_NAME: &str = "envd.sock";

/// Header with which the host asks the agent to relay a request to
/// `127.0.0.1:<port>` inside the sandbox (the front door's route to servers
/// users run in their sandboxes). Clients' own values are stripped by the
/// front door.
pub const FORWARD_PORT_HEADER: &str = "x-hutch-forward-port";

/// Current version of [`BootConfig`]'s schema.
pub const BOOT_SCHEMA_VERSION: u32 = 1;

/// Everything the agent needs that is fixed for the life of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootConfig {
    /// Always [`BOOT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The sandbox's id; also its hostname.
    pub sandbox_id: String,
    /// The template's id.
    pub template_id: String,
    /// The template's name (alias).
    pub template_name: String,
    /// Layers 1–2 resolved once when the template was made: ordered
    /// `(name, value)` pairs, no duplicate names, empty values kept.
    pub template_env: Vec<(String, String)>,
    /// The template's default user (template `USER` step, else the image's
    /// `User`), as written there: a name, `uid`, or `uid:gid`. `None`: root.
    pub template_user: Option<String>,
    /// The template's default working directory (template `WORKDIR` step,
    /// else the image's `WorkingDir`). `None`: the user's home.
    pub template_workdir: Option<String>,
}

/// `POST /init` body: the sandbox layer. Field names follow E2B's agent.
/// A repeated `/init` replaces the sandbox-level variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Layer 3: variables given when the sandbox was created.
    #[serde(default)]
    pub env_vars: Option<std::collections::BTreeMap<String, String>>,
    /// When set, every agent request must carry `X-Access-Token` with it.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Default user for calls without `Authorization` (E2B field; Hutch
    /// applies it only when the template has no default user).
    #[serde(default)]
    pub default_user: Option<String>,
    /// Sandbox-level default working directory (above the template's).
    #[serde(default)]
    pub default_workdir: Option<String>,
    /// Wall-clock time at the host, RFC 3339 or Unix seconds as E2B sends.
    #[serde(default)]
    pub timestamp: Option<serde_json::Value>,
}
