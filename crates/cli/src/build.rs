//! `hutch template build`: builds a template from a Dockerfile.
//!
//! The context directory is packed (`.dockerignore` applied) into a
//! temporary tar and streamed to the server with the Dockerfile's text; the
//! server's build log comes back as NDJSON and is shown live: one line per
//! step (a spinner with the elapsed time on a terminal), the step's output
//! indented below it, `cached` for steps served from the layer cache.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::client::{Api, encode};

/// What `hutch template build` was given.
pub(crate) struct BuildArgs {
    pub name: String,
    pub context: PathBuf,
    pub dockerfile: Option<PathBuf>,
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub ready_timeout: Option<u64>,
    /// Default limits of the template's sandboxes, as JSON.
    pub limits: Option<serde_json::Value>,
}

/// One NDJSON object of the build log.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogObject {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    template: Option<serde_json::Value>,
    #[serde(default)]
    exit_code: Option<u8>,
}

/// Runs the build; returns the exit code (0, or the failing step's).
pub(crate) async fn build(api: &Api, args: BuildArgs) -> anyhow::Result<u8> {
    let context = &args.context;
    if !context.is_dir() {
        return Err(anyhow!(
            "the build context {} is not a directory",
            context.display()
        ));
    }
    let dockerfile_path = args
        .dockerfile
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let dockerfile = std::fs::read_to_string(&dockerfile_path).map_err(|e| {
        anyhow!(
            "cannot read the Dockerfile {}: {}",
            dockerfile_path.display(),
            crate::client::root_cause(&e)
        )
    })?;

    let packed = pack_context(context).await?;
    let spec = serde_json::json!({
        "name": args.name,
        "dockerfile": dockerfile,
        "buildArgs": args.build_args,
        "noCache": args.no_cache,
        "startCmd": args.start_cmd,
        "readyCmd": args.ready_cmd,
        "readyTimeoutSecs": args.ready_timeout,
        "limits": args.limits,
    });
    let file = tokio::fs::File::open(packed.path())
        .await
        .context("reopening the packed context")?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let request = api
        .request(
            reqwest::Method::POST,
            &format!("/hutch/v1/builds?spec={}", encode(&spec.to_string())),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .timeout(Duration::from_secs(24 * 3600))
        .body(body);
    let resp = api.send(request).await?;
    show_log(resp, &args.name).await
}

/// Packs the context into a temporary file.
async fn pack_context(context: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = context.to_owned();
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
        let mut out = io::BufWriter::new(tmp.reopen().context("opening a temporary file")?);
        hutch_builder::context::pack(&dir, &mut out).map_err(|e| anyhow!("{e}"))?;
        drop(out);
        Ok(tmp)
    })
    .await
    .map_err(|e| anyhow!("packing task failed: {e}"))?
}

/// Shows the streamed log; returns the exit code.
async fn show_log(resp: reqwest::Response, name: &str) -> anyhow::Result<u8> {
    let started = Instant::now();
    let tty = io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    let print = |bar: &Option<ProgressBar>, line: String| match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            anyhow!(
                "the connection to the server broke during the build: {}",
                crate::client::root_cause(&e)
            )
        })?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(obj) = serde_json::from_slice::<LogObject>(&line) else {
                continue;
            };
            match obj.kind.as_str() {
                "step" => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    if tty {
                        let b = ProgressBar::new_spinner().with_style(
                            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        b.set_message(obj.message.clone());
                        b.enable_steady_tick(Duration::from_millis(120));
                        bar = Some(b);
                    } else {
                        eprintln!("{}", obj.message);
                    }
                }
                "cached" => match &bar {
                    Some(b) => b.set_message(format!("{} (cached)", b.message())),
                    None => eprintln!("  cached"),
                },
                "output" => {
                    let marker = if obj.stream.as_deref() == Some("stderr") {
                        "!"
                    } else {
                        "|"
                    };
                    print(&bar, format!("  {marker} {}", obj.message));
                }
                // The final `error` object repeats the failure.
                "note" if obj.level == "error" => {}
                "note" => print(&bar, obj.message),
                "done" => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    let id = obj
                        .template
                        .as_ref()
                        .and_then(|t| t["id"].as_str())
                        .unwrap_or("?")
                        .to_owned();
                    println!(
                        "built template {name} (id {id}) in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(0);
                }
                "error" => {
                    if let Some(b) = bar.take() {
                        b.abandon();
                    }
                    eprintln!("error: build of template '{name}' failed: {}", obj.message);
                    return Ok(obj.exit_code.filter(|c| *c != 0).unwrap_or(1));
                }
                _ => {}
            }
        }
    }
    if let Some(b) = bar.take() {
        b.abandon();
    }
    Err(anyhow!(
        "the server ended the build log without a result (did it stop?)"
    ))
}
