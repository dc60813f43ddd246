//! Versioned template metadata.

use serde::{Deserialize, Serialize};

use crate::{ImageConfig, ImageError};

/// The schema version [`TemplateMetadata::to_json`] writes and [`TemplateMetadata::from_json`]
/// accepts.
pub const TEMPLATE_SCHEMA_VERSION: u32 = 1;

/// What a template is and what it was made from; stored by the server as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Always [`TEMPLATE_SCHEMA_VERSION`] for metadata made by this build.
    pub schema_version: u32,
    /// Template id.
    pub id: String,
    /// Human-facing name.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Where the template came from.
    pub source: TemplateSource,
    /// What the image config said, recorded as is.
    pub image: ImageConfig,
    /// The template's environment (image and template layers resolved once), in order.
    pub env: Vec<(String, String)>,
    /// Default user (resolved).
    pub user: Option<String>,
    /// Default working directory (resolved).
    pub workdir: Option<String>,
    /// Diff ids of the layers, base first.
    pub layers: Vec<String>,
    /// Whether processes may gain privileges through setuid binaries such
    /// as `sudo` (no `no_new_privs`). Off unless the template asks for it.
    #[serde(default)]
    pub allow_privilege_escalation: bool,
    /// Command started in the background in every sandbox of the template
    /// (with the template's environment), before the sandbox is handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Command run until it exits 0 before a sandbox of the template counts
    /// as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// Resource limits its sandboxes get unless a create asks for others;
    /// `None` (and every unset field) means the server's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TemplateLimits>,
}

/// A template's default resource limits, in the units and names of E2B's
/// create body. Each field left `None` falls back to the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateLimits {
    /// CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,
    /// Memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "memoryMB")]
    pub memory_mb: Option<u64>,
    /// Disk (the writable layer), MiB.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "diskSizeMB"
    )]
    pub disk_size_mb: Option<u64>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// Where a template came from. Serialized with a `"kind"` tag: `{"kind":"image", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum TemplateSource {
    /// Imported from an image.
    Image {
        /// The path or reference the image was imported from.
        path_or_ref: String,
        /// Digest of the imported manifest.
        manifest_digest: String,
        /// Digest of the image config.
        config_digest: String,
    },
    /// Built from a Dockerfile or through the template API.
    Build {
        /// `dockerfile` or `template-api`.
        frontend: String,
        /// What the build started from (template name or image reference).
        from: String,
        /// Number of steps.
        steps: usize,
    },
    /// Built by Hutch from a recipe (the default `base` template).
    Recipe {
        /// Which recipe, e.g. `debian-base`.
        recipe: String,
        /// What it was built from, e.g. `mmdebstrap bookworm`.
        description: String,
    },
}

impl TemplateMetadata {
    /// Serializes to JSON (camelCase keys).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("template metadata always serializes")
    }

    /// Parses JSON written by [`TemplateMetadata::to_json`]. Metadata with another
    /// `schemaVersion` is refused with [`ImageError::UnsupportedSchemaVersion`].
    pub fn from_json(s: &str) -> Result<Self, ImageError> {
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|cause| ImageError::MetadataJson { cause })?;
        let found = value
            .get("schemaVersion")
            .and_then(serde_json::Value::as_u64);
        if found != Some(u64::from(TEMPLATE_SCHEMA_VERSION)) {
            return Err(ImageError::UnsupportedSchemaVersion {
                found: found.unwrap_or(0),
                supported: TEMPLATE_SCHEMA_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|cause| ImageError::MetadataJson { cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TemplateMetadata {
        TemplateMetadata {
            schema_version: TEMPLATE_SCHEMA_VERSION,
            id: "tpl_1".into(),
            name: "busybox".into(),
            created_at: "2025-01-02T03:04:05Z".into(),
            source: TemplateSource::Image {
                path_or_ref: "/srv/busybox.tar".into(),
                manifest_digest: format!("sha256:{}", "a".repeat(64)),
                config_digest: format!("sha256:{}", "b".repeat(64)),
            },
            image: ImageConfig {
                env: vec!["PATH=/bin".into(), "EMPTY=".into()],
                working_dir: Some("/work".into()),
                user: None,
                entrypoint: None,
                cmd: Some(vec!["sh".into()]),
            },
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new()),
            ],
            user: Some("root".into()),
            workdir: Some("/work".into()),
            layers: vec![format!("sha256:{}", "c".repeat(64))],
            allow_privilege_escalation: false,
            start_cmd: None,
            ready_cmd: None,
            limits: None,
        }
    }

    #[test]
    fn limits_are_optional_and_round_trip() {
        let mut meta = sample();
        assert!(!meta.to_json().contains("limits"), "absent when unset");
        meta.limits = Some(TemplateLimits {
            cpu_count: Some(1),
            memory_mb: Some(256),
            disk_size_mb: None,
            pids: Some(100),
        });
        let json = meta.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["limits"],
            serde_json::json!({"cpuCount": 1, "memoryMB": 256, "pids": 100})
        );
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(TemplateMetadata::from_json(&json).unwrap(), meta);
    }

    #[test]
    fn round_trips_with_camel_case_and_kind_tag() {
        let meta = sample();
        let json = meta.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(v["createdAt"], "2025-01-02T03:04:05Z");
        assert_eq!(v["source"]["kind"], "image");
        assert_eq!(v["source"]["pathOrRef"], "/srv/busybox.tar");
        assert!(v["source"]["manifestDigest"].is_string());
        assert_eq!(v["image"]["workingDir"], "/work");
        assert_eq!(v["env"][1], serde_json::json!(["EMPTY", ""]));
        assert_eq!(TemplateMetadata::from_json(&json).unwrap(), meta);
    }

    #[test]
    fn rejects_other_schema_versions() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["schemaVersion"] = 2.into();
        let err = TemplateMetadata::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(
            err,
            ImageError::UnsupportedSchemaVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("schema version 2"), "{err}");

        v.as_object_mut().unwrap().remove("schemaVersion");
        assert!(matches!(
            TemplateMetadata::from_json(&v.to_string()),
            Err(ImageError::UnsupportedSchemaVersion { found: 0, .. })
        ));
        assert!(matches!(
            TemplateMetadata::from_json("{not json"),
            Err(ImageError::MetadataJson { .. })
        ));
    }
}
