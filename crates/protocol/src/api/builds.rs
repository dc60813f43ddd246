//! `POST /hutch/v1/builds`: a template built from a Dockerfile, its log
//! streamed back as NDJSON.
//!
//! The query parameter `spec` holds a [`BuildSpec`] as JSON; the body is
//! the build context as a tar. The answer is one JSON object per line
//! ([`BuildStreamLine`]): log lines ([`BuildLogLine`]), then one
//! [`BuildEnd`].

use serde::{Deserialize, Serialize};

use super::templates::{Template, TemplateLimits};

/// A Dockerfile build, as `hutch template build` sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildSpec {
    /// Template name.
    pub name: String,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// `--build-arg` values, in order.
    #[serde(default)]
    pub build_args: Vec<(String, String)>,
    /// Ignore the layer cache.
    #[serde(default)]
    pub no_cache: bool,
    /// Start command for every sandbox of the template.
    pub start_cmd: Option<String>,
    /// Ready command.
    pub ready_cmd: Option<String>,
    /// How long the ready command may take, in seconds (default 120).
    pub ready_timeout_secs: Option<u64>,
    /// Default limits of the template's sandboxes.
    #[serde(default)]
    pub limits: Option<TemplateLimits>,
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildLogLine {
    /// Unix ms.
    pub timestamp: i64,
    /// How much it matters.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// What produced it (`type` and its fields), for clients that show
    /// structure.
    #[serde(flatten)]
    pub kind: BuildLogKind,
}

/// What a log line is: `{"type": "step" | "cached" | "output" | "note", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BuildLogKind {
    /// A step starts.
    Step {
        /// 1-based.
        index: usize,
        /// Of how many.
        total: usize,
    },
    /// The step was served from the cache.
    Cached,
    /// Output of the running step.
    Output {
        /// Which stream of the step it came from.
        stream: LogStream,
    },
    /// Anything else.
    Note,
}

/// A log line's level (E2B's log levels), lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Progress.
    Info,
    /// Something to look at (a step's stderr).
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// Every level, lowest first.
    pub const ALL: [LogLevel; 4] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    /// The level of that name (`debug`, `info`, `warn`, `error`).
    pub fn from_name(name: &str) -> Option<LogLevel> {
        LogLevel::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Which output stream of a build step a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The last line of a build's stream: `{"type": "done" | "error", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BuildEnd {
    /// The template was built and registered.
    #[serde(rename_all = "camelCase")]
    Done {
        /// The template.
        template: Box<Template>,
    },
    /// The build failed; no template was registered.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Why.
        message: String,
        /// The failing step's exit code, when a command failed (null
        /// otherwise).
        exit_code: Option<u8>,
    },
}

/// One line of a build's NDJSON stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum BuildStreamLine {
    /// A log line.
    Log(BuildLogLine),
    /// The end.
    End(BuildEnd),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_lines_are_flat_objects() {
        let line = BuildLogLine {
            timestamp: 1_700_000_000_123,
            level: LogLevel::Warn,
            message: "oops".into(),
            kind: BuildLogKind::Output {
                stream: LogStream::Stderr,
            },
        };
        let wire = json!({"timestamp": 1_700_000_000_123_i64, "level": "warn", "message": "oops",
                          "type": "output", "stream": "stderr"});
        assert_eq!(serde_json::to_value(&line).unwrap(), wire);
        let parsed: BuildStreamLine = serde_json::from_value(wire).unwrap();
        assert_eq!(parsed, BuildStreamLine::Log(line));

        let step = json!({"timestamp": 1, "level": "info", "message": "[1/2] RUN x",
                          "type": "step", "index": 1, "total": 2});
        let parsed: BuildStreamLine = serde_json::from_value(step.clone()).unwrap();
        assert!(matches!(
            parsed,
            BuildStreamLine::Log(BuildLogLine {
                kind: BuildLogKind::Step { index: 1, total: 2 },
                ..
            })
        ));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), step);
    }

    #[test]
    fn the_stream_ends_with_done_or_error() {
        let wire = json!({"type": "error", "message": "step 2 failed", "exitCode": 3});
        let parsed: BuildStreamLine = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            parsed,
            BuildStreamLine::End(BuildEnd::Error {
                message: "step 2 failed".into(),
                exit_code: Some(3)
            })
        );
        assert_eq!(serde_json::to_value(&parsed).unwrap(), wire);
        let no_code = BuildEnd::Error {
            message: "x".into(),
            exit_code: None,
        };
        assert_eq!(
            serde_json::to_value(&no_code).unwrap(),
            json!({"type": "error", "message": "x", "exitCode": null})
        );
        assert!(serde_json::from_str::<BuildStreamLine>(r#"{"type":"later"}"#).is_err());
    }

    #[test]
    fn specs_round_trip() {
        let spec = BuildSpec {
            name: "app".into(),
            dockerfile: "FROM base\n".into(),
            build_args: vec![("A".into(), "1".into())],
            limits: Some(TemplateLimits {
                cpu_count: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<BuildSpec>(&text).unwrap(), spec);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["buildArgs"], json!([["A", "1"]]));
        assert_eq!(v["limits"], json!({"cpuCount": 1}));
        assert!(
            serde_json::from_str::<BuildSpec>(r#"{"name":"a","dockerfile":"","x":1}"#).is_err()
        );
    }
}
