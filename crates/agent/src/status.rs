//! How a finished process is described on the wire.
//!
//! The E2B agent is written in Go and reports `os.ProcessState`: `exitCode`
//! is `ExitCode()` (-1 for a signal death), `exited` is `Exited()`, `status`
//! is `String()` ("exit status 3", "signal: killed", "... (core dumped)"),
//! and `error` is the text of the error `Wait` returned, which for a
//! non-zero exit or a signal is that same string. SDKs show these strings to
//! users, so they are reproduced exactly.

/// The end of a process, as sent in the `end` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, or -1 when a signal ended the process.
    pub exit_code: i32,
    /// Whether the process exited normally (not killed by a signal).
    pub exited: bool,
    /// `exit status N` or `signal: NAME`.
    pub status: String,
    /// Set when the process did not exit with status 0.
    pub error: Option<String>,
}

impl ExitInfo {
    /// Decodes a raw `waitpid` status.
    pub fn from_wait_status(status: i32) -> ExitInfo {
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            let text = format!("exit status {code}");
            ExitInfo {
                exit_code: code,
                exited: true,
                error: (code != 0).then(|| text.clone()),
                status: text,
            }
        } else if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            let mut text = format!("signal: {}", signal_name(signal));
            if libc::WCOREDUMP(status) {
                text.push_str(" (core dumped)");
            }
            ExitInfo {
                exit_code: -1,
                exited: false,
                error: Some(text.clone()),
                status: text,
            }
        } else {
            let text = format!("unknown wait status {status:#x}");
            ExitInfo {
                exit_code: -1,
                exited: false,
                error: Some(text.clone()),
                status: text,
            }
        }
    }
}

/// A signal's description as Go's `syscall.Signal.String()` gives it on
/// Linux.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals_read_like_go() {
        let ok = ExitInfo::from_wait_status(0);
        assert_eq!(ok.exit_code, 0);
        assert!(ok.exited);
        assert_eq!(ok.status, "exit status 0");
        assert_eq!(ok.error, None);

        let three = ExitInfo::from_wait_status(3 << 8);
        assert_eq!(three.exit_code, 3);
        assert_eq!(three.status, "exit status 3");
        assert_eq!(three.error.as_deref(), Some("exit status 3"));

        let killed = ExitInfo::from_wait_status(libc::SIGKILL);
        assert_eq!(killed.exit_code, -1);
        assert!(!killed.exited);
        assert_eq!(killed.status, "signal: killed");

        let core = ExitInfo::from_wait_status(libc::SIGSEGV | 0x80);
        assert_eq!(core.status, "signal: segmentation fault (core dumped)");

        assert_eq!(signal_name(64), "signal 64");
    }
}
