//! `hutch template import | pull | list | rm`.

use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use hutch_protocol::api::{PullEvent, Template, TemplatePullRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use crate::client::{Api, ServerReplied, encode};

/// Size of the chunks the upload is sent in.
const CHUNK: usize = 256 * 1024;

/// Feeds the request body from a blocking producer thread, counting bytes.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    bar: Option<ProgressBar>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload was stopped"))?;
        if let Some(bar) = &self.bar {
            bar.inc(buf.len() as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "uploading {bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("uploading {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

/// Writes an OCI layout directory as a tar with the layout at its root.
fn tar_layout(dir: &Path, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            builder.append_dir_all(&name, &path)?;
        } else {
            builder.append_path_with_name(&path, &name)?;
        }
    }
    builder.into_inner()?.flush()
}

/// Copies a file in [`CHUNK`]-sized writes.
fn copy_file(path: &Path, mut out: impl Write) -> io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}

pub(crate) async fn import(
    api: &Api,
    source: &Path,
    name: &str,
    reference: Option<&str>,
    allow_privilege_escalation: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let meta = std::fs::metadata(source).map_err(|e| {
        anyhow!(
            "cannot read {}: {}",
            source.display(),
            crate::client::root_cause(&e)
        )
    })?;
    let display = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let bar = progress_bar(meta.is_file().then_some(meta.len()));

    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let writer = ChannelWriter {
        tx: tx.clone(),
        bar: bar.clone(),
    };
    let producer_source = source.to_path_buf();
    let is_dir = meta.is_dir();
    let producer = std::thread::spawn(move || {
        let out = io::BufWriter::with_capacity(CHUNK, writer);
        let result = if is_dir {
            tar_layout(&producer_source, out)
        } else {
            copy_file(&producer_source, out)
        };
        if let Err(e) = &result {
            // Abort the upload so the server does not import a cut image.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut path = format!(
        "/hutch/v1/templates?name={}&source={}",
        encode(name),
        encode(&display.to_string_lossy())
    );
    if let Some(r) = reference {
        path.push_str(&format!("&reference={}", encode(r)));
    }
    if allow_privilege_escalation {
        path.push_str("&allowPrivilegeEscalation=true");
    }
    let request = api
        .request(reqwest::Method::POST, &path)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .body(reqwest::Body::wrap_stream(stream));
    let sent = api.send(request).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let produced = producer
        .join()
        .map_err(|_| anyhow!("the upload thread panicked"))?;
    let resp = match (sent, produced) {
        // The server's verdict first: it may have stopped reading early.
        (Err(e), _) if e.is::<ServerReplied>() => return Err(e),
        (_, Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => {
            return Err(anyhow!(
                "cannot read {}: {}",
                source.display(),
                crate::client::root_cause(&e)
            ));
        }
        (sent, _) => sent?,
    };
    let info: Template = resp.json().await.context("reading the server's answer")?;
    report(&info, "imported", as_json)
}

/// Reads a password from stdin: the first line, without its line ending.
pub(crate) fn read_password() -> anyhow::Result<String> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(crate::UsageError("--password-stdin: stdin holds no password".into()).into());
    }
    Ok(password)
}

/// A progress bar per layer, drawn on stderr when it is a terminal.
struct LayerBars {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl LayerBars {
    fn new() -> LayerBars {
        let target = if io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        LayerBars {
            multi: MultiProgress::with_draw_target(target),
            bars: Vec::new(),
        }
    }

    fn layers(&mut self, n: usize) {
        let style = ProgressStyle::with_template(
            "{prefix} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        while self.bars.len() < n {
            let bar = self
                .multi
                .add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_message("waiting");
            self.bars.push(bar);
        }
    }

    fn update(
        &mut self,
        index: usize,
        digest: &str,
        total: u64,
        done: u64,
        reused: bool,
        complete: bool,
    ) {
        self.layers(index + 1);
        let bar = &self.bars[index];
        let short = digest.strip_prefix("sha256:").unwrap_or(digest);
        bar.set_prefix(short.chars().take(12).collect::<String>());
        bar.set_length(total);
        bar.set_position(done);
        if complete {
            bar.finish_with_message(if reused { "already present" } else { "done" });
        } else {
            bar.set_message("downloading");
        }
    }

    fn clear(&self) {
        for bar in &self.bars {
            bar.finish();
        }
        let _ = self.multi.clear();
    }
}

pub(crate) async fn pull(
    api: &Api,
    reference: &str,
    name: &str,
    credentials: Option<(String, String)>,
    allow_privilege_escalation: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let (username, password) = credentials.unzip();
    let body = TemplatePullRequest {
        name: name.to_owned(),
        reference: reference.to_owned(),
        username,
        password,
        allow_privilege_escalation,
    };
    let request = api
        .request(reqwest::Method::POST, "/hutch/v1/templates/pull")
        .header(reqwest::header::ACCEPT, "application/x-ndjson")
        .json(&body);
    let mut resp = api.send(request).await?;
    let mut bars = LayerBars::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut outcome: Option<Result<Box<Template>, String>> = None;
    while outcome.is_none() {
        let chunk = resp.chunk().await.map_err(|e| api.transport_error(&e))?;
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: PullEvent = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "unexpected answer from the server: {}",
                    String::from_utf8_lossy(&line).trim()
                )
            })?;
            match event {
                PullEvent::Resolved { layers, .. } => bars.layers(layers),
                PullEvent::Layer {
                    index,
                    digest,
                    total,
                    done,
                    reused,
                    complete,
                } => bars.update(index, &digest, total, done, reused, complete),
                PullEvent::Done { template } => outcome = Some(Ok(template)),
                PullEvent::Error { message, .. } => outcome = Some(Err(message)),
                PullEvent::Unknown => {}
            }
        }
    }
    bars.clear();
    match outcome {
        Some(Ok(info)) => {
            report(&info, "pulled", as_json)?;
            Ok(())
        }
        Some(Err(message)) => Err(ServerReplied {
            message,
            status: None,
        }
        .into()),
        None => Err(anyhow!(
            "the server stopped answering before the pull of {reference} finished"
        )),
    }
}

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let value: serde_json::Value = api.get_json("/hutch/v1/templates").await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let templates: Vec<Template> = api.get_json("/hutch/v1/templates").await?;
    let rows: Vec<Vec<String>> = templates
        .into_iter()
        .map(|t| vec![t.name, t.id, t.layers.len().to_string(), t.created_at])
        .collect();
    print_table(&["NAME", "ID", "LAYERS", "CREATED"], &rows);
    Ok(())
}

pub(crate) async fn remove(api: &Api, name: &str) -> anyhow::Result<()> {
    api.delete(&format!("/hutch/v1/templates/{}", encode(name)))
        .await?;
    println!("removed template {name}");
    Ok(())
}

/// Says that template `info` was `done` (imported, pulled): a line, or its
/// JSON.
fn report(info: &Template, done: &str, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(info)?);
    } else {
        println!("{done} template {} (id {})", info.name, info.id);
    }
    Ok(())
}

/// Prints a table: columns separated by two spaces, the last unpadded.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                text.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}
