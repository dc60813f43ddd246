//! Sandbox logs (`GET /sandboxes/{id}/logs`, `GET /v2/sandboxes/{id}/logs`):
//! what happened to a sandbox — created, paused, resumed, network rules
//! replaced, snapshotted, timed out, killed — what its template's start
//! command printed, line by line (stdout at `info`, stderr at `error`), then
//! how it ended, and its agent's own log (processes started and killed,
//! errors; `source` `agent`, at the level the line gives), read from the
//! sandbox's console log every [`AGENT_LOG_INTERVAL`].
//!
//! Kept in the server's memory: at most [`KEPT_ENTRIES`] per sandbox (the
//! oldest go first), for the sandbox's life and [`KEPT_AFTER_END`] after it
//! ends; a server restart starts them afresh.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutch_protocol::api::LogLevel;
use hutch_runtime::{CommandEvent, OutputStream};

use crate::time;

/// Entries kept per sandbox.
pub(crate) const KEPT_ENTRIES: usize = 10_000;

/// How long a sandbox's log is kept after it ends, ms.
pub(crate) const KEPT_AFTER_END: i64 = 3_600_000;

/// Longest line kept; longer ones are cut there.
const MAX_LINE: usize = 16 * 1024;

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Unix ms.
    pub at_ms: i64,
    /// How much it matters.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Where it comes from: `source` (`hutch` or `start-cmd`) and, for
    /// output, `stream`.
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<Entry>,
    /// An unfinished line of stdout and of stderr.
    partial: [Vec<u8>; 2],
    /// When the sandbox ended (unix ms).
    ended_at: Option<i64>,
}

impl Log {
    fn push(&mut self, entry: Entry) {
        if self.entries.len() >= KEPT_ENTRIES {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }
}

/// Every sandbox's log (a handle: clones share it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Journal {
    logs: Arc<Mutex<HashMap<String, Log>>>,
    /// How far each running sandbox's console log has been read.
    consoles: Arc<Mutex<HashMap<String, u64>>>,
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Log>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records something that happened to sandbox `id`.
    pub(crate) fn event(&self, id: &str, level: LogLevel, message: impl Into<String>) {
        let entry = Entry {
            at_ms: time::now_ms(),
            level,
            message: message.into(),
            fields: fields(&[("source", "hutch")]),
        };
        self.lock().entry(id.to_owned()).or_default().push(entry);
    }

    /// Records the lines of sandbox `id`'s agent log in `text` (whole
    /// lines), each at the level it names.
    pub(crate) fn agent_lines(&self, id: &str, text: &str) {
        let now = time::now_ms();
        let mut logs = self.lock();
        let log = logs.entry(id.to_owned()).or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut message = line.to_owned();
            cut(&mut message);
            log.push(Entry {
                at_ms: now,
                level: agent_level(line),
                message,
                fields: fields(&[("source", "agent")]),
            });
        }
    }

    /// Records what the start command of sandbox `id` did: its output,
    /// split into lines, and its end.
    pub(crate) fn start_command(&self, id: &str, event: CommandEvent) {
        let now = time::now_ms();
        let mut logs = self.lock();
        let log = logs.entry(id.to_owned()).or_default();
        match event {
            CommandEvent::Output(stream, bytes) => {
                let (slot, name, level) = match stream {
                    OutputStream::Stdout => (0, "stdout", LogLevel::Info),
                    OutputStream::Stderr => (1, "stderr", LogLevel::Error),
                };
                log.partial[slot].extend_from_slice(&bytes);
                while let Some(end) = log.partial[slot].iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = log.partial[slot].drain(..=end).collect();
                    log.push(output_entry(now, level, name, &line[..end]));
                }
                if log.partial[slot].len() >= MAX_LINE {
                    let line = std::mem::take(&mut log.partial[slot]);
                    log.push(output_entry(now, level, name, &line));
                }
            }
            CommandEvent::Ended(how) => {
                for (slot, name, level) in [
                    (0, "stdout", LogLevel::Info),
                    (1, "stderr", LogLevel::Error),
                ] {
                    let rest = std::mem::take(&mut log.partial[slot]);
                    if !rest.is_empty() {
                        log.push(output_entry(now, level, name, &rest));
                    }
                }
                log.push(Entry {
                    at_ms: now,
                    level: LogLevel::Info,
                    message: format!("start command ended: {how}"),
                    fields: fields(&[("source", "start-cmd")]),
                });
            }
        }
    }

    /// Notes that sandbox `id` ended: its log is kept for
    /// [`KEPT_AFTER_END`] more, and logs that ended longer ago go.
    pub(crate) fn ended(&self, id: &str) {
        let now = time::now_ms();
        let mut logs = self.lock();
        if let Some(log) = logs.get_mut(id) {
            log.ended_at = Some(now);
        }
        logs.retain(|_, log| log.ended_at.is_none_or(|t| now - t < KEPT_AFTER_END));
    }

    /// Forgets sandbox `id` (a pooled sandbox destroyed unclaimed). Its
    /// start command's end may still come: it lands in a log already
    /// expired, which the next [`Journal::ended`] removes.
    pub(crate) fn forget(&self, id: &str) {
        let mut logs = self.lock();
        let log = logs.entry(id.to_owned()).or_default();
        log.entries.clear();
        log.ended_at = Some(i64::MIN / 2);
    }

    /// The entries of sandbox `id`, oldest first.
    pub(crate) fn entries(&self, id: &str) -> Vec<Entry> {
        self.lock()
            .get(id)
            .map(|log| log.entries.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn output_entry(at_ms: i64, level: LogLevel, stream: &str, line: &[u8]) -> Entry {
    let line = &line[..line.len().min(MAX_LINE)];
    let text = String::from_utf8_lossy(line);
    Entry {
        at_ms,
        level,
        message: text.strip_suffix('\r').unwrap_or(&text).to_owned(),
        fields: fields(&[("source", "start-cmd"), ("stream", stream)]),
    }
}

/// Which entries a logs call asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    /// Unix ms: only entries from then on (forward) or up to then
    /// (backward).
    pub cursor: Option<i64>,
    /// At most this many.
    pub limit: usize,
    /// Oldest first from the cursor; else newest first.
    pub forward: bool,
    /// Only entries at this level or above.
    pub min_level: Option<LogLevel>,
    /// Only entries whose message contains this (case-insensitive).
    pub search: Option<String>,
}

/// The entries of `all` (oldest first) that `q` asks for.
pub(crate) fn select(all: Vec<Entry>, q: &Query) -> Vec<Entry> {
    let search = q.search.as_ref().map(|s| s.to_lowercase());
    let wanted = |e: &Entry| {
        q.min_level.is_none_or(|l| e.level >= l)
            && search
                .as_ref()
                .is_none_or(|s| e.message.to_lowercase().contains(s))
            && match q.cursor {
                None => true,
                Some(c) if q.forward => e.at_ms >= c,
                Some(c) => e.at_ms <= c,
            }
    };
    let picked = all.into_iter().filter(wanted);
    if q.forward {
        picked.take(q.limit).collect()
    } else {
        let mut newest: Vec<Entry> = picked.collect();
        newest.reverse();
        newest.truncate(q.limit);
        newest
    }
}

/// The level an agent log line names (`2026-… INFO started process …`):
/// its first word that is a level; `info` when none is.
fn agent_level(line: &str) -> LogLevel {
    line.split_whitespace()
        .take(2)
        .find_map(|w| match w {
            "ERROR" => Some(LogLevel::Error),
            "WARN" => Some(LogLevel::Warn),
            "DEBUG" | "TRACE" => Some(LogLevel::Debug),
            "INFO" => Some(LogLevel::Info),
            _ => None,
        })
        .unwrap_or(LogLevel::Info)
}

/// Cuts `line` to [`MAX_LINE`] bytes (at a character boundary).
fn cut(line: &mut String) {
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
}

/// How often the running sandboxes' agent logs are read.
pub(crate) const AGENT_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// Reads the new lines of every running sandbox's agent log into the
/// journal, every [`AGENT_LOG_INTERVAL`], until the server stops.
pub(crate) fn spawn_agent_log_reader(st: Arc<crate::state::AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AGENT_LOG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = st.reaper_stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            read_agent_logs(&st).await;
        }
    });
}

/// One round of [`spawn_agent_log_reader`].
pub(crate) async fn read_agent_logs(st: &crate::state::AppState) {
    let running: Vec<String> = st
        .live()
        .iter()
        .filter(|(_, s)| s.agent_pid.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let journal = &st.logs;
    let offsets: Vec<(String, u64)> = {
        let mut consoles = journal.consoles.lock().unwrap_or_else(|p| p.into_inner());
        consoles.retain(|id, _| running.contains(id));
        running
            .into_iter()
            .map(|id| {
                let offset = consoles.get(&id).copied().unwrap_or(0);
                (id, offset)
            })
            .collect()
    };
    for (id, offset) in offsets {
        // A sandbox that has no log yet, or is gone meanwhile, is read at
        // the next round.
        if let Ok(chunk) = st.node.console_log(&id, offset).await {
            if !chunk.text.is_empty() {
                journal.agent_lines(&id, &chunk.text);
            }
            let mut consoles = journal.consoles.lock().unwrap_or_else(|p| p.into_inner());
            consoles.insert(id, chunk.next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ConsoleChunk, read_lines};
    use std::io::Write;

    fn lines(path: &std::path::Path, offset: u64) -> (String, u64) {
        let ConsoleChunk { text, next } = read_lines(path, offset).unwrap();
        (text, next)
    }

    #[test]
    fn agent_log_lines_are_read_once_whole_and_leveled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(
            &path,
            "2026-12-07T00:00:00Z  INFO started process pid=7\n2026-12-07T00:00:01Z  WARN low\npart",
        )
        .unwrap();
        let (text, offset) = lines(&path, 0);
        assert_eq!(text.lines().count(), 2, "the unfinished line waits");
        let j = Journal::default();
        j.agent_lines("s", &text);
        let entries = j.entries("s");
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.level, e.fields["source"].as_str()))
                .collect::<Vec<_>>(),
            [(LogLevel::Info, "agent"), (LogLevel::Warn, "agent")]
        );
        assert!(entries[0].message.contains("started process pid=7"));
        // The rest once it is whole; nothing twice.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"ial and more\n")
            .unwrap();
        let (text, next) = lines(&path, offset);
        assert_eq!(text, "partial and more\n");
        assert_eq!(agent_level(&text), LogLevel::Info, "no level: info");
        assert_eq!(agent_level("2026-12-07T00:00:00Z ERROR x"), LogLevel::Error);
        assert_eq!(lines(&path, next).0, "");
        // Rotated (shorter than read so far): on from its end.
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(lines(&path, next), (String::new(), 6));
    }

    fn out(stream: OutputStream, s: &str) -> CommandEvent {
        CommandEvent::Output(stream, s.as_bytes().to_vec())
    }

    #[test]
    fn start_command_output_is_split_into_lines() {
        let j = Journal::default();
        j.event("s", LogLevel::Info, "sandbox created");
        j.start_command("s", out(OutputStream::Stdout, "one\ntw"));
        j.start_command("s", out(OutputStream::Stderr, "oops\r\n"));
        j.start_command("s", out(OutputStream::Stdout, "o\nthree"));
        j.start_command("s", CommandEvent::Ended("exit status 1".into()));
        let got: Vec<(LogLevel, String, Option<String>)> = j
            .entries("s")
            .into_iter()
            .map(|e| (e.level, e.message, e.fields.get("stream").cloned()))
            .collect();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            got,
            [
                (LogLevel::Info, "sandbox created".into(), None),
                (LogLevel::Info, "one".into(), s("stdout")),
                (LogLevel::Error, "oops".into(), s("stderr")),
                (LogLevel::Info, "two".into(), s("stdout")),
                (LogLevel::Info, "three".into(), s("stdout")),
                (
                    LogLevel::Info,
                    "start command ended: exit status 1".into(),
                    None
                ),
            ]
        );
        assert!(j.entries("other").is_empty());
        j.forget("s");
        assert!(j.entries("s").is_empty());
        j.start_command("s", CommandEvent::Ended("late".into()));
        j.ended("other");
        assert!(
            j.entries("s").is_empty(),
            "a forgotten log goes at the next end"
        );
    }

    #[test]
    fn a_log_keeps_its_newest_entries() {
        let j = Journal::default();
        for i in 0..KEPT_ENTRIES + 5 {
            j.event("s", LogLevel::Debug, format!("e{i}"));
        }
        let all = j.entries("s");
        assert_eq!(all.len(), KEPT_ENTRIES);
        assert_eq!(all[0].message, "e5");
        j.start_command(
            "s",
            CommandEvent::Output(OutputStream::Stdout, vec![b'x'; MAX_LINE + 10]),
        );
        let last = j.entries("s").pop().unwrap();
        assert_eq!(last.message.len(), MAX_LINE, "a long line is cut");
    }

    #[test]
    fn queries_filter_and_page() {
        let entry = |at_ms, level, message: &str| Entry {
            at_ms,
            level,
            message: message.into(),
            fields: BTreeMap::new(),
        };
        let all = vec![
            entry(10, LogLevel::Info, "Starting"),
            entry(20, LogLevel::Error, "failed: disk"),
            entry(30, LogLevel::Info, "started"),
            entry(40, LogLevel::Warn, "slow"),
        ];
        let messages = |q: Query| -> Vec<String> {
            select(all.clone(), &q)
                .into_iter()
                .map(|e| e.message)
                .collect()
        };
        let q = Query {
            limit: 100,
            forward: true,
            ..Default::default()
        };
        assert_eq!(messages(q.clone()).len(), 4);
        assert_eq!(
            messages(Query {
                cursor: Some(20),
                limit: 2,
                ..q.clone()
            }),
            ["failed: disk", "started"]
        );
        assert_eq!(
            messages(Query {
                cursor: Some(30),
                forward: false,
                ..q.clone()
            }),
            ["started", "failed: disk", "Starting"]
        );
        assert_eq!(
            messages(Query {
                min_level: Some(LogLevel::Warn),
                ..q.clone()
            }),
            ["failed: disk", "slow"]
        );
        assert_eq!(
            messages(Query {
                search: Some("START".into()),
                ..q
            }),
            ["Starting", "started"]
        );
    }
}
