//! The agent's own log: a bounded, rotated file that never fails the agent.
//!
//! In a sandbox the agent's stderr is the sandbox's console log, a file on
//! the sandbox's own disk that the host opened for it (read and append).
//! [`ConsoleLog`] writes log lines there and keeps the file bounded: once it
//! grows past its limit, the newest half is kept (copied to the start, the
//! rest cut off) behind a line saying so. Nothing about the file can make
//! the agent fail: a full disk, a file the sandbox truncated or filled
//! through `/proc/1/fd/2`, a descriptor that is a pipe or a terminal (when
//! run on its own) — write errors are dropped, and rotation is only tried
//! on a regular file.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

/// Size past which the log is rotated.
pub const DEFAULT_LIMIT: u64 = 4 << 20;

/// What a rotated log starts with.
pub const ROTATED_MARKER: &str = "[hutch-envd: earlier log lines dropped]\n";

/// A bounded log on a file descriptor (normally stderr).
#[derive(Debug)]
pub struct ConsoleLog {
    fd: i32,
    limit: u64,
    lock: Mutex<()>,
}

impl ConsoleLog {
    /// A log on the process's stderr, rotated past `limit` bytes.
    pub fn stderr(limit: u64) -> ConsoleLog {
        ConsoleLog::on_fd(io::stderr().as_raw_fd(), limit)
    }

    /// A log on `fd`, which must stay open for the life of the log.
    pub fn on_fd(fd: i32, limit: u64) -> ConsoleLog {
        ConsoleLog {
            fd,
            limit: limit.max(2),
            lock: Mutex::new(()),
        }
    }

    fn borrowed(&self) -> BorrowedFd<'_> {
        // SAFETY: the caller of `on_fd` keeps the descriptor open.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// Appends `line` (best effort), rotating first if it would pass the
    /// limit.
    pub fn append(&self, line: &[u8]) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let fd = self.borrowed();
        if let Ok(stat) = rustix::fs::fstat(fd)
            && rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::RegularFile
            && (stat.st_size as u64).saturating_add(line.len() as u64) > self.limit
        {
            self.rotate(stat.st_size as u64);
        }
        write_all(fd, line);
    }

    /// Keeps the newest half of the file. Best effort: a descriptor opened
    /// without read access is emptied instead.
    fn rotate(&self, size: u64) {
        let fd = self.borrowed();
        let keep = (self.limit / 2).min(size);
        let mut tail = vec![0u8; keep as usize];
        let mut got = 0usize;
        while got < tail.len() {
            match rustix::io::pread(fd, &mut tail[got..], size - keep + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        tail.truncate(got);
        // Start at a line boundary.
        let start = tail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(tail.len(), |i| i + 1);
        if rustix::fs::ftruncate(fd, 0).is_err() {
            return;
        }
        let _ = write_all(fd, ROTATED_MARKER.as_bytes()) && write_all(fd, &tail[start..]);
    }
}

/// Writes all of `data` to `fd`; whether it could (errors are dropped).
fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) | Err(_) => return false,
            Ok(n) => data = &data[n..],
        }
    }
    true
}

/// A [`Write`] handle for `tracing-subscriber`: each event's text is
/// buffered and appended as one piece when the handle is dropped.
pub struct LineWriter<'a> {
    log: &'a ConsoleLog,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        self.log.append(&self.buf);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ConsoleLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            log: self,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn open_rw_append(path: &std::path::Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn stays_under_its_limit_and_keeps_the_newest_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        let file = open_rw_append(&path);
        let log = ConsoleLog::on_fd(file.as_raw_fd(), 1000);
        for i in 0..500 {
            log.append(format!("line {i:04}\n").as_bytes());
            assert!(std::fs::metadata(&path).unwrap().len() <= 1000);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(ROTATED_MARKER), "{text}");
        assert!(text.ends_with("line 0499\n"), "{text}");
        // Whole lines only, newest last, none lost in the kept part.
        let numbers: Vec<u32> = text
            .lines()
            .skip(1)
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn write_failures_are_ignored() {
        // A descriptor opened read-only: every write fails, nothing panics.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ro.log");
        std::fs::write(&path, "x".repeat(2000)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let log = ConsoleLog::on_fd(file.as_raw_fd(), 1000);
        log.append(b"lost\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x".repeat(2000));
        // /dev/full: ENOSPC on every write.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let log = ConsoleLog::on_fd(full.as_raw_fd(), 1000);
        for _ in 0..10 {
            log.append(b"lost\n");
        }
    }
}
