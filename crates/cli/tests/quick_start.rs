//! The README's quick start on a fresh machine: in a clean Debian 12 root
//! file system, the set-up step's package installation (`scripts/lib.sh`,
//! as `scripts/up.sh` runs it) is enough to build every crate of the
//! workspace and the static agent. See `tests/fresh/build-on-fresh-debian.sh`.

use std::path::Path;
use std::process::Command;

use hutch_test_support::cache_dir;

#[test]
fn the_set_up_step_builds_hutch_on_a_fresh_debian_12() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fresh/build-on-fresh-debian.sh");
    let out = Command::new(&script)
        .arg(cache_dir())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |s: &str| {
        s.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success() && stdout.contains("fresh machine: OK"),
        "building on a fresh Debian 12 failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        tail(&stdout),
        tail(&stderr)
    );
}
