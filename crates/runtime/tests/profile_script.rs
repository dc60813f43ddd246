//! The login-PATH script (`assets/00-hutch-path.sh`), run by the host's
//! shells: it must restore the PATH a shell was executed with after
//! something (Debian's /etc/profile) overwrote it.

use std::path::Path;
use std::process::Command;

fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/00-hutch-path.sh")
        .display()
        .to_string()
}

fn have(shell: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {shell}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `shell <flags> <code>` with exactly `env` as its environment and
/// returns its stdout.
fn run(shell: &[&str], env: &[(&str, &str)], code: &str) -> String {
    let mut cmd = Command::new("env");
    cmd.arg("-i");
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    // `env` itself needs no PATH: the shells are given by absolute path.
    cmd.args(shell).arg(code);
    let out = cmd.output().expect("run shell");
    assert!(
        out.status.success(),
        "{shell:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
}

fn shells() -> Vec<Vec<&'static str>> {
    let mut v = Vec::new();
    if have("bash") {
        v.push(vec!["/bin/bash", "-c"]);
        // bash as sh (POSIX mode) still takes the bash branch.
        v.push(vec!["/bin/bash", "--posix", "-c"]);
    }
    if have("dash") {
        v.push(vec!["/bin/dash", "-c"]);
    }
    if Path::new("/bin/busybox").exists() {
        v.push(vec!["/bin/busybox", "sh", "-c"]);
    }
    assert!(!v.is_empty(), "no shell to test with");
    v
}

#[test]
fn restores_exec_time_path() {
    let code = format!(". {}; echo \"$PATH\"", script());
    for sh in shells() {
        let code = format!("PATH=/other; {code}");
        let out = run(&sh, &[("PATH", "/custom:/bin")], &code);
        assert_eq!(out, "/custom:/bin", "{sh:?}");
    }
}

#[test]
fn keeps_path_exported() {
    for sh in shells() {
        let code = format!(
            "PATH=/other; . {}; /usr/bin/env | /bin/grep '^PATH='",
            script()
        );
        let out = run(&sh, &[("PATH", "/custom:/usr/bin:/bin")], &code);
        assert_eq!(out, "PATH=/custom:/usr/bin:/bin", "{sh:?}");
    }
}

#[test]
fn does_nothing_without_path_in_environ() {
    for sh in shells() {
        let code = format!("PATH=/other; . {}; echo \"$PATH\"", script());
        let out = run(&sh, &[("HOME", "/root")], &code);
        assert_eq!(out, "/other", "{sh:?}");
    }
}

#[test]
fn leaves_no_variables_and_survives_set_eu() {
    for sh in shells() {
        let code = format!(
            "set -eu; PATH=/other; . {}; echo \"$PATH\"; set | grep -c '^__hutch' || true",
            script()
        );
        let out = run(&sh, &[("PATH", "/usr/bin:/bin")], &code);
        assert_eq!(out, "/usr/bin:/bin\n0", "{sh:?}");
    }
}

#[test]
fn paths_with_spaces_and_first_of_duplicates() {
    for sh in shells() {
        let code = format!("PATH=/other; . {}; echo \"$PATH\"", script());
        let out = run(&sh, &[("PATH", "/my dir/bin:/bin")], &code);
        assert_eq!(out, "/my dir/bin:/bin", "{sh:?}");
    }
}

/// The real use: a login shell reads Debian's /etc/profile, which
/// overwrites PATH; the script (sourced from /etc/profile.d) restores it.
#[test]
fn undoes_debian_etc_profile() {
    assert!(
        Path::new("/etc/profile").exists() && have("bash"),
        "this test needs Debian's /etc/profile and bash"
    );
    let code = format!(". /etc/profile; . {}; echo \"$PATH\"", script());
    for sh in [
        vec!["/bin/bash", "--noprofile", "--norc", "-c"],
        vec!["/bin/dash", "-c"],
    ] {
        let out = run(&sh, &[("PATH", "/opt/tool/bin:/usr/bin:/bin")], &code);
        assert_eq!(out, "/opt/tool/bin:/usr/bin:/bin", "{sh:?}");
    }
}

/// Under bash the script uses builtins only: it works with no external
/// commands reachable and `strace` sees no fork.
#[test]
fn bash_forks_nothing() {
    assert!(have("bash"), "this test needs bash");
    let code = format!("PATH=/nonexistent; . {}; echo \"$PATH\"", script());
    let out = run(&["/bin/bash", "-c"], &[("PATH", "/custom:/bin")], &code);
    assert_eq!(out, "/custom:/bin");

    assert!(
        have("strace"),
        "the fork check needs strace (apt-get install strace)"
    );
    let trace = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("strace")
        .arg("-f")
        .arg("-e")
        .arg("trace=fork,vfork,clone,clone3,execve")
        .arg("-o")
        .arg(trace.path())
        .args(["/bin/bash", "-c"])
        // The final `:` keeps bash from exec'ing the last command in place.
        .arg(format!(". {}; :", script()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(trace.path()).unwrap();
    // strace lines read `<pid> <syscall>(<args>) = <result>`: look at the
    // syscall name only (paths in the arguments may contain anything).
    let syscall = |l: &str| -> String {
        l.split_whitespace()
            .nth(1)
            .and_then(|s| s.split('(').next())
            .unwrap_or_default()
            .to_owned()
    };
    let spawns: Vec<&str> = log
        .lines()
        .filter(|l| matches!(syscall(l).as_str(), "clone" | "clone3" | "fork" | "vfork"))
        .collect();
    assert!(spawns.is_empty(), "bash forked: {spawns:?}");
    let execs = log.lines().filter(|l| syscall(l) == "execve").count();
    assert_eq!(execs, 1, "only bash itself is executed: {log}");
}
