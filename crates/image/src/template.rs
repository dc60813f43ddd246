//! Versioned template metadata: the document the server stores for a
//! template, which the REST API shows unchanged. Its type is the API's
//! ([`hutch_protocol::api::Template`]), so the stored form and the wire form
//! cannot drift apart; this module adds its versioned (de)serialization.

use crate::ImageError;

pub use hutch_protocol::api::{Template as TemplateMetadata, TemplateLimits, TemplateSource};

/// The schema version [`TemplateDocument::to_json`] writes and
/// [`TemplateDocument::from_json`] accepts.
pub const TEMPLATE_SCHEMA_VERSION: u32 = 1;

/// A template's metadata as stored: JSON with a `schemaVersion`.
pub trait TemplateDocument: Sized {
    /// Serializes to JSON (camelCase keys).
    fn to_json(&self) -> String;

    /// Parses JSON written by [`TemplateDocument::to_json`]. Metadata with
    /// another `schemaVersion` is refused with
    /// [`ImageError::UnsupportedSchemaVersion`].
    fn from_json(s: &str) -> Result<Self, ImageError>;
}

impl TemplateDocument for TemplateMetadata {
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("template metadata always serializes")
    }

    fn from_json(s: &str) -> Result<Self, ImageError> {
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
    use crate::ImageConfig;

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
