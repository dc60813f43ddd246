//! Workspace binaries, built on first use.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

use crate::paths::{FileLock, cache_dir, describe, tail, workspace_root};

/// The `hutch` CLI/server binary (debug profile). `$HUTCH_BIN` if set; otherwise
/// `cargo build -p hutch-cli --bin hutch`, run once per test process under a file lock.
pub fn hutch_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        binary(
            "HUTCH_BIN",
            "hutch",
            &["build", "-p", "hutch-cli", "--bin", "hutch"],
        )
    })
    .clone()
}

/// The in-sandbox agent, a static musl binary built with the `agent` profile. `$HUTCH_ENVD_BIN`
/// if set; otherwise `cargo build -p hutch-envd --bin hutch-envd --profile agent
/// --target x86_64-unknown-linux-musl`, run once per test process under a file lock.
pub fn envd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        binary(
            "HUTCH_ENVD_BIN",
            "hutch-envd",
            &[
                "build",
                "-p",
                "hutch-envd",
                "--bin",
                "hutch-envd",
                "--profile",
                "agent",
                "--target",
                "x86_64-unknown-linux-musl",
            ],
        )
    })
    .clone()
}

fn binary(env_var: &str, bin_name: &str, cargo_args: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${env_var} is set to {}, which is not a file",
            path.display()
        );
        return path;
    }
    cargo_build(bin_name, cargo_args)
        .unwrap_or_else(|e| panic!("building the `{bin_name}` binary failed: {e:#}"))
}

/// Runs `cargo <args> --message-format=json` in the workspace and returns the path of the
/// executable artifact named `bin_name` that cargo reports.
fn cargo_build(bin_name: &str, args: &[&str]) -> Result<PathBuf> {
    let _lock = FileLock::acquire(&cache_dir().join("locks/cargo-build.lock"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args)
        .arg("--message-format=json")
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    let line = describe(&cmd);
    eprintln!("hutch-test-support: {line}");
    let output = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut executable = None;
    let mut diagnostics = Vec::new();
    for message in stdout.lines().filter(|l| l.starts_with('{')) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(message) else {
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact")
                if message["target"]["name"] == bin_name
                    && message["target"]["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == "bin")) =>
            {
                if let Some(exe) = message["executable"].as_str() {
                    executable = Some(PathBuf::from(exe));
                }
            }
            Some("compiler-message") if message["message"]["level"] == "error" => {
                if let Some(rendered) = message["message"]["rendered"].as_str() {
                    diagnostics.push(rendered.to_owned());
                }
            }
            _ => {}
        }
    }
    if !output.status.success() {
        bail!(
            "`{line}` failed ({})\n{}\n--- cargo stderr ---\n{}",
            output.status,
            diagnostics.join("\n"),
            tail(&String::from_utf8_lossy(&output.stderr), 40)
        );
    }
    let executable = executable
        .with_context(|| format!("`{line}` succeeded but reported no `{bin_name}` executable"))?;
    ensure_file(&executable)?;
    Ok(executable)
}

fn ensure_file(path: &Path) -> Result<()> {
    if !path.is_file() {
        bail!("cargo reported {} but it is not a file", path.display());
    }
    Ok(())
}
