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
use hutch_protocol::api::{
    BuildEnd, BuildLogKind, BuildSpec, BuildStreamLine, LogLevel, LogStream, TemplateLimits,
};
use indicatif::{ProgressBar, ProgressStyle};

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
    /// Default limits of the template's sandboxes.
    pub limits: Option<TemplateLimits>,
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
    let spec = BuildSpec {
        name: args.name.clone(),
        dockerfile,
        build_args: args.build_args,
        no_cache: args.no_cache,
        start_cmd: args.start_cmd,
        ready_cmd: args.ready_cmd,
        ready_timeout_secs: args.ready_timeout,
        limits: args.limits,
    };
    let spec = serde_json::to_string(&spec).context("encoding the build spec")?;
    let file = tokio::fs::File::open(packed.path())
        .await
        .context("reopening the packed context")?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let request = api
        .request(
            reqwest::Method::POST,
            &format!("/hutch/v1/builds?spec={}", encode(&spec)),
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
            let Ok(obj) = serde_json::from_slice::<BuildStreamLine>(&line) else {
                continue;
            };
            let line = match obj {
                BuildStreamLine::Log(line) => line,
                BuildStreamLine::End(BuildEnd::Done { template }) => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    println!(
                        "built template {name} (id {}) in {:.1} s",
                        template.id,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(0);
                }
                BuildStreamLine::End(BuildEnd::Error { message, exit_code }) => {
                    if let Some(b) = bar.take() {
                        b.abandon();
                    }
                    eprintln!("error: build of template '{name}' failed: {message}");
                    return Ok(exit_code.filter(|c| *c != 0).unwrap_or(1));
                }
            };
            match line.kind {
                BuildLogKind::Step { .. } => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    if tty {
                        let b = ProgressBar::new_spinner().with_style(
                            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        b.set_message(line.message);
                        b.enable_steady_tick(Duration::from_millis(120));
                        bar = Some(b);
                    } else {
                        eprintln!("{}", line.message);
                    }
                }
                BuildLogKind::Cached => match &bar {
                    Some(b) => b.set_message(format!("{} (cached)", b.message())),
                    None => eprintln!("  cached"),
                },
                BuildLogKind::Output { stream } => {
                    let marker = match stream {
                        LogStream::Stderr => "!",
                        LogStream::Stdout => "|",
                    };
                    print(&bar, format!("  {marker} {}", line.message));
                }
                // The final `error` object repeats the failure.
                BuildLogKind::Note if line.level == LogLevel::Error => {}
                BuildLogKind::Note => print(&bar, line.message),
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
