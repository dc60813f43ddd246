//! The load test, small: 8 concurrent clients of one server through the
//! official Python SDK, 2 rounds each (create, commands, a file written,
//! read back and listed, kill). The benchmark itself fails if any operation
//! fails or answers wrongly, or if anything at all is left on the host
//! afterwards (mounts, loop devices, network namespaces, interfaces,
//! nftables elements, address claims, cgroups, runc state, directories,
//! files under the data directory). Latencies are printed, never asserted:
//! the figures in `docs/benchmarks.md` come from `hutch-bench --load 200`.

use std::process::Command;

#[test]
fn eight_sdk_clients_at_once_make_no_errors_and_leave_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_hutch-bench"))
        .args(["--load", "8", "--rounds", "2"])
        .output()
        .expect("run hutch-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "hutch-bench --load 8 --rounds 2 failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("\nerrors: 0\n"), "{stdout}");
    assert!(
        stdout.contains("rounds without an error: 16 of 16"),
        "{stdout}"
    );
    assert!(
        stdout.contains("left on the host after the teardown: nothing"),
        "{stdout}"
    );
    // Every operation of every round was measured.
    for op in [
        "create",
        "run echo",
        "run exit 3",
        "run 60 KB output",
        "write file",
        "read file",
        "list dir",
        "kill",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(op) && l[op.len()..].starts_with("  "))
            .unwrap_or_else(|| panic!("no row for {op}:\n{stdout}"));
        let count: usize = row[op.len()..]
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no count in {row:?}"));
        assert_eq!(count, 16, "{row}");
    }
}
