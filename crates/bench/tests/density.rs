//! The density benchmark, small: 100 idle Debian sandboxes on one server,
//! then all killed. The benchmark itself fails unless every create succeeds,
//! an idle sandbox stays within its memory budget and nothing at all is left
//! on the host afterwards (mounts, loop devices, network namespaces,
//! interfaces, nftables elements, address claims, cgroups, runc state,
//! directories). Latencies are printed, never asserted: the 1,000-sandbox
//! figures in `docs/benchmarks.md` come from `hutch-bench --density 1000`.

use std::process::Command;

#[test]
fn a_hundred_idle_sandboxes_come_and_go_leaving_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_hutch-bench"))
        .args(["--density", "100"])
        .output()
        .expect("run hutch-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "hutch-bench --density 100 failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("left on the host after the teardown: nothing"),
        "{stdout}"
    );
    assert!(stdout.contains("#51–#100"), "{stdout}");
}
