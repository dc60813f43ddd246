//! How a process ended, as the agent reports it in its `EndEvent`, turned
//! into the exit code a shell would show. Used wherever Hutch passes a
//! command's result on: `hutch exec`/`hutch run` and template builds.

use crate::envd::process::process_event::EndEvent;

/// The exit code to pass on: the command's own, or 128 + the signal that
/// killed it (as shells report it).
pub fn exit_code(end: &EndEvent) -> u8 {
    if let Some(sig) = signal_of(&end.status) {
        return 128u8.saturating_add(sig);
    }
    if end.exited {
        return u8::try_from(end.exit_code.rem_euclid(256)).unwrap_or(1);
    }
    u8::try_from(end.exit_code)
        .ok()
        .filter(|&c| c != 0)
        .unwrap_or(1)
}

/// The signal named by an exit status such as `signal: killed` (Go's
/// form), `killed by signal 9` or `signal 15`.
pub fn signal_of(status: &str) -> Option<u8> {
    let s = status.trim().to_ascii_lowercase();
    let rest = s
        .strip_prefix("signal:")
        .or_else(|| s.strip_prefix("killed by signal"))
        .or_else(|| s.strip_prefix("signal"))?
        .trim();
    let rest = rest.split(" (core dumped)").next().unwrap_or(rest).trim();
    if let Ok(n) = rest.parse::<u8>() {
        return Some(n);
    }
    let named = [
        ("hangup", 1),
        ("interrupt", 2),
        ("quit", 3),
        ("illegal instruction", 4),
        ("trace/breakpoint trap", 5),
        ("aborted", 6),
        ("bus error", 7),
        ("floating point exception", 8),
        ("killed", 9),
        ("user defined signal 1", 10),
        ("segmentation fault", 11),
        ("user defined signal 2", 12),
        ("broken pipe", 13),
        ("alarm clock", 14),
        ("terminated", 15),
        ("sigkill", 9),
        ("sigterm", 15),
        ("sigint", 2),
    ];
    named.iter().find(|(n, _)| *n == rest).map(|&(_, sig)| sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(exit_code: i32, exited: bool, status: &str) -> EndEvent {
        EndEvent {
            exit_code,
            exited,
            status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&end(0, true, "exit status 0")), 0);
        assert_eq!(exit_code(&end(3, true, "exit status 3")), 3);
        assert_eq!(exit_code(&end(-1, false, "signal: killed")), 137);
        assert_eq!(exit_code(&end(-1, false, "signal: terminated")), 143);
        assert_eq!(exit_code(&end(-1, false, "killed by signal 2")), 130);
        assert_eq!(
            exit_code(&end(-1, false, "signal: segmentation fault (core dumped)")),
            139
        );
        assert_eq!(exit_code(&end(137, false, "")), 137);
        assert_eq!(exit_code(&end(-1, false, "")), 1);
    }
}
