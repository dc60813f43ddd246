//! E2B's sandbox routes: create, list, detail, connect (resume), pause.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /sandboxes` body (E2B's `NewSandbox`). Other E2B fields
/// (`network.allowPublicTraffic`, `volumeMounts`, …) are accepted and
/// ignored; fields left `None` are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template id or name.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// User metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Sandbox-level environment variables (layer 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// Volumes to mount, each by name at an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<SandboxVolumeMount>>,
    /// Require an access token on every agent request (`envdAccessToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,
    /// Internet access (default on). E2B spells this one in snake case.
    #[serde(
        default,
        rename = "allow_internet_access",
        alias = "allowInternetAccess",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    /// Egress allow and deny lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SandboxNetwork>,
    /// CPUs (default: the template's, else 2); at most the server's
    /// `--max-cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<i64>,
    /// Memory, MiB (default: the template's, else 512); at most the
    /// server's `--max-memory-mb`.
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    /// Disk (the writable layer), MiB (default: the template's, else
    /// 2048); at most the server's `--max-disk-mb`.
    #[serde(
        default,
        rename = "diskSizeMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_mb: Option<i64>,
    /// Processes and threads (default: the template's, else 1024); at most
    /// the server's `--max-pids`. A Hutch extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hutch_pids: Option<i64>,
    /// Pause instead of kill at the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<bool>,
    /// With `autoPause`: keep memory (the default) or only the filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause_memory: Option<bool>,
    /// Resume on a request through the front door while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<AutoResume>,
}

/// E2B's `autoResume` object of a create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoResume {
    /// Whether requests resume the sandbox.
    #[serde(default)]
    pub enabled: bool,
}

/// E2B's `network` object of a create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetwork {
    /// IPs or CIDR blocks re-allowed even when denied.
    #[serde(default, alias = "allow_out", skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// IPs or CIDR blocks denied.
    #[serde(default, alias = "deny_out", skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// `false`: requests to the sandbox's ports need its traffic access
    /// token (`e2b-traffic-access-token`); open when absent or `null`.
    #[serde(
        default,
        alias = "allow_public_traffic",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_public_traffic: Option<bool>,
    /// The `Host` requests to the sandbox's ports get, `${PORT}` replaced
    /// by the port.
    #[serde(
        default,
        alias = "mask_request_host",
        skip_serializing_if = "Option::is_none"
    )]
    pub mask_request_host: Option<String>,
}

/// `PUT /sandboxes/{id}/network` body: the sandbox's new egress rules,
/// replacing the old ones whole (a field left out is cleared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetworkUpdate {
    /// IPs or CIDR blocks re-allowed even when denied.
    #[serde(default, alias = "allow_out", skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    /// IPs or CIDR blocks denied.
    #[serde(default, alias = "deny_out", skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    /// Internet access (the SDKs send `allow_internet_access`); allowed
    /// when absent.
    #[serde(
        default,
        rename = "allow_internet_access",
        alias = "allowInternetAccess",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
}

/// E2B's `Sandbox`: the answer to a create, and to a `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxCreated {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Agent protocol version.
    pub envd_version: String,
    /// Template name.
    pub alias: Option<String>,
    /// Always null: the SDKs then use `E2B_SANDBOX_URL` or `E2B_DOMAIN`.
    pub domain: Option<String>,
    /// The agent access token of a `secure` sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// The token requests to its ports need (`allowPublicTraffic: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_access_token: Option<String>,
}

/// E2B's `ListedSandbox` / `SandboxDetail`: a sandbox as listed
/// (`GET /sandboxes`, `GET /v2/sandboxes`) and as `GET /sandboxes/{id}`
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    /// Template id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Template name.
    pub alias: Option<String>,
    /// Sandbox id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Client id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when it expires.
    pub end_at: String,
    /// CPUs it may use.
    pub cpu_count: u32,
    /// Memory it may use, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Disk it may use, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// Processes and threads it may have (a Hutch extension); absent for
    /// sandboxes from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hutch_pids: Option<u64>,
    /// `running` or `paused`.
    pub state: String,
    /// Agent protocol version.
    pub envd_version: String,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Always null.
    pub domain: Option<String>,
    /// The agent access token of a `secure` sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// What its timeout does; whether requests resume it.
    #[serde(default)]
    pub lifecycle: LifecycleInfo,
    /// While paused: `full` (memory) or `filesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<String>,
    /// With `autoPause`: whether the pause keeps memory (a Hutch
    /// extension; E2B reports only `lifecycle.onTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hutch_auto_pause_memory: Option<bool>,
    /// The volumes mounted into it (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<SandboxVolumeMount>,
    /// On a cluster: the node it runs on (a Hutch extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hutch_node: Option<String>,
    /// On a cluster: `alive`, or `lost` while its node sends no heartbeat
    /// (then nothing reaches it until the node comes back; a Hutch
    /// extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hutch_node_state: Option<String>,
}

/// A volume mounted into a sandbox (E2B's `SandboxVolumeMount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxVolumeMount {
    /// The volume's name (or, in a create, its id).
    pub name: String,
    /// Where the sandbox sees it: an absolute path.
    pub path: String,
}

impl ListedSandbox {
    /// [`ListedSandbox::state`] of a sandbox that runs.
    pub const RUNNING: &'static str = "running";
    /// [`ListedSandbox::state`] of a paused sandbox.
    pub const PAUSED: &'static str = "paused";
    /// [`ListedSandbox::pause_mode`] of a sandbox paused with its memory.
    pub const PAUSED_FULL: &'static str = "full";
    /// [`ListedSandbox::pause_mode`] of a sandbox paused with only its
    /// filesystem kept.
    pub const PAUSED_FILESYSTEM: &'static str = "filesystem";

    /// [`ListedSandbox::hutch_node_state`] of a sandbox whose node is lost.
    pub const NODE_LOST: &'static str = "lost";
    /// [`ListedSandbox::hutch_node_state`] of a sandbox whose node is alive.
    pub const NODE_ALIVE: &'static str = "alive";

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.state == Self::PAUSED
    }

    /// Whether it is paused with only its filesystem kept (nothing of it
    /// runs; `connect` boots it again).
    pub fn is_paused_filesystem(&self) -> bool {
        self.is_paused() && self.pause_mode.as_deref() == Some(Self::PAUSED_FILESYSTEM)
    }
}

/// E2B's `SandboxLifecycle`, as sandbox info reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LifecycleInfo {
    /// `kill` or `pause`.
    pub on_timeout: String,
    /// Whether a request resumes it while paused.
    pub auto_resume: bool,
}

/// `POST /sandboxes/{id}/connect` (and `/v2/...`) body; `{}` or no body
/// at all connects with nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectSandbox {
    /// Seconds: the sandbox then lives at least this long from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// `false`: boot a sandbox paused in memory again on its files instead
    /// of thawing it (E2B's "reboot"). No effect on a running sandbox or
    /// one paused filesystem-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// `POST /sandboxes/{id}/pause` body. E2B's `requireHealthyGuest` is
/// accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PauseSandbox {
    /// `false`: keep only the filesystem (stop every process); else keep
    /// memory too (freeze them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A line of `GET /sandboxes/{id}/logs` (E2B's `SandboxLog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogLine {
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    /// The text.
    pub line: String,
}

/// A structured sandbox log entry (E2B's `SandboxLogEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogEntry {
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    /// Its level.
    pub level: super::LogLevel,
    /// The text.
    pub message: String,
    /// Where it comes from (`source`: `hutch` or `start-cmd`; `stream`).
    pub fields: std::collections::BTreeMap<String, String>,
}

/// `GET /sandboxes/{id}/logs` (E2B's `SandboxLogs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxLogs {
    /// The lines.
    pub logs: Vec<SandboxLogLine>,
    /// The same, structured.
    pub log_entries: Vec<SandboxLogEntry>,
}

/// `GET /v2/sandboxes/{id}/logs` (E2B's `SandboxLogsV2Response`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogsV2 {
    /// The entries.
    pub logs: Vec<SandboxLogEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listed_sandbox_uses_e2b_names() {
        let wire = json!({
            "templateID": "tpl1",
            "alias": "base",
            "sandboxID": "sbx1",
            "clientID": "hutch",
            "startedAt": "2025-01-02T03:04:05Z",
            "endAt": "2025-01-02T03:09:05Z",
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 2048,
            "hutchPids": 1024,
            "state": "paused",
            "envdVersion": "0.2.0",
            "metadata": {"owner": "me"},
            "domain": null,
            "envdAccessToken": "tok",
            "lifecycle": {"onTimeout": "pause", "autoResume": true},
            "pauseMode": "filesystem",
            "hutchAutoPauseMemory": false,
        });
        let s: ListedSandbox = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(s.sandbox_id, "sbx1");
        assert_eq!(s.template_id, "tpl1");
        assert_eq!(s.memory_mb, 512);
        assert_eq!(s.disk_size_mb, 2048);
        assert_eq!(s.hutch_pids, Some(1024));
        assert!(s.lifecycle.auto_resume);
        assert!(s.is_paused_filesystem());
        assert_eq!(serde_json::to_value(&s).unwrap(), wire);

        // Optional fields are left out, `alias` and `domain` sent as null,
        // and an answer without `lifecycle` still reads.
        let running = json!({
            "templateID": "tpl1",
            "alias": null,
            "sandboxID": "sbx2",
            "clientID": "hutch",
            "startedAt": "2025-01-02T03:04:05Z",
            "endAt": "2025-01-02T03:09:05Z",
            "cpuCount": 1,
            "memoryMB": 256,
            "diskSizeMB": 1024,
            "state": "running",
            "envdVersion": "0.2.0",
            "metadata": {},
            "domain": null,
        });
        let s: ListedSandbox = serde_json::from_value(running.clone()).unwrap();
        assert_eq!(s.lifecycle, LifecycleInfo::default());
        assert!(!s.is_paused());
        let mut expected = running;
        expected["lifecycle"] = json!({"onTimeout": "", "autoResume": false});
        assert_eq!(serde_json::to_value(&s).unwrap(), expected);
    }

    #[test]
    fn new_sandbox_sends_only_what_is_set() {
        let body = NewSandbox {
            template_id: "base".into(),
            env_vars: Some(BTreeMap::new()),
            metadata: Some(BTreeMap::from([("k".into(), "v".into())])),
            allow_internet_access: Some(false),
            network: Some(SandboxNetwork {
                allow_out: Some(vec!["1.1.1.1".into()]),
                deny_out: Some(vec![]),
                ..Default::default()
            }),
            memory_mb: Some(256),
            disk_size_mb: Some(1024),
            auto_resume: Some(AutoResume { enabled: true }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "templateID": "base",
                "envVars": {},
                "metadata": {"k": "v"},
                "allow_internet_access": false,
                "network": {"allowOut": ["1.1.1.1"], "denyOut": []},
                "memoryMB": 256,
                "diskSizeMB": 1024,
                "autoResume": {"enabled": true},
            })
        );
        // E2B's spellings and fields Hutch ignores are accepted.
        let parsed: NewSandbox = serde_json::from_value(json!({
            "templateID": "t",
            "allowInternetAccess": true,
            "network": {"allow_out": ["10.0.0.0/8"], "allowPublicTraffic": true},
            "volumeMounts": [],
        }))
        .unwrap();
        assert_eq!(parsed.allow_internet_access, Some(true));
        assert_eq!(
            parsed.network.unwrap().allow_out,
            Some(vec!["10.0.0.0/8".to_owned()])
        );
        assert_eq!(
            serde_json::to_value(PauseSandbox::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(ConnectSandbox::default()).unwrap(),
            json!({})
        );
    }
}
