//! The official E2B SDKs, installed at pinned versions for the
//! wire-compatibility tests.

use std::path::PathBuf;
use std::process::Command;

use crate::paths::{FileLock, cache_dir, run};

/// The E2B Python SDK release from before the `/v2/sandboxes` route change.
pub const E2B_PYTHON_OLD: &str = "2.50.0";
/// The last E2B Python SDK release line that checks an API key's shape
/// (`e2b_` and hex) before sending anything; its check stays on.
pub const E2B_PYTHON_KEY_CHECK: &str = "2.45.1";
/// A recent E2B Python SDK release (uses `/v2/sandboxes`).
pub const E2B_PYTHON_NEW: &str = "2.63.0";

/// A Python interpreter with exactly `e2b==version` installed, in a virtual
/// environment cached under the test cache (created on first use, under a
/// file lock). `$HUTCH_E2B_PYTHON_<version with _ for .>` overrides it.
pub fn e2b_python(version: &str) -> PathBuf {
    let var = format!("HUTCH_E2B_PYTHON_{}", version.replace('.', "_"));
    if let Some(p) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    python_with(
        &format!("e2b-python-{version}"),
        &[&format!("e2b=={version}")],
    )
}

/// Runs `crates/cli/tests/sdk/<script> deb` with the official SDK `version`
/// against `server` (the Debian test image imported as `deb` first), with
/// more environment `env`; panics unless it ends with its `OK` line.
pub fn run_e2b_python_script(
    version: &str,
    script: &str,
    server: &crate::TestServer,
    env: &[(&str, &str)],
) {
    // The SDK tests use sudo as `user`, as with E2B's base template.
    server.import(
        &crate::debian_image(),
        "deb",
        &["--allow-privilege-escalation"],
    );
    e2b_python_run(version, script, &["deb"], server, env);
}

/// Runs `crates/cli/tests/sdk/<script> ARGS` with the official SDK
/// `version` against `server` (its API, its front door and its key, the
/// SDK's own checks on), with more environment `env`; its stdout, once it
/// ended with its `OK` line (else a panic saying why).
pub fn e2b_python_run(
    version: &str,
    script: &str,
    args: &[&str],
    server: &crate::TestServer,
    env: &[(&str, &str)],
) -> String {
    let python = e2b_python(version);
    let script = crate::workspace_root()
        .join("crates/cli/tests/sdk")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .env("E2B_API_URL", server.url())
        .env("E2B_SANDBOX_URL", server.url())
        .env("E2B_VOLUME_API_URL", server.url())
        .env("E2B_API_KEY", server.api_key())
        // The SDK's own key check stays on, whatever the caller's shell says.
        .env_remove("E2B_VALIDATE_API_KEY")
        // No bytecode of the shared checks module in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("E2B_DEBUG")
        .env_remove("E2B_DOMAIN")
        .envs(env.iter().copied())
        .output()
        .expect("running python");
    assert_script_ok(
        &out,
        &format!("e2b {version} {} {}", script.display(), args.join(" ")),
        server,
    )
}

/// Panics, with `what`, the script's exit status and output and the tail
/// of `server`'s log, unless `out` is a successful run whose stdout ends
/// with a line `OK` or `OK <n> checks` (the scripts' last word); its
/// stdout.
pub fn assert_script_ok(
    out: &std::process::Output,
    what: &str,
    server: &crate::TestServer,
) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success()
            && stdout
                .lines()
                .last()
                .is_some_and(|l| l == "OK" || l.starts_with("OK ")),
        "{what}: {}\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_tail(120)
    );
    stdout
}

/// A Python interpreter with exactly `packages` (pinned requirements such
/// as `docker==7.1.0`) installed from PyPI, in a virtual environment
/// `name` cached under the test cache (created on first use, under a file
/// lock).
pub fn python_with(name: &str, packages: &[&str]) -> PathBuf {
    let dir = cache_dir().join(name);
    let python = dir.join("bin").join("python");
    let done = dir.join(".installed");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&done).is_ok_and(|d| d == wanted) {
        return python;
    }
    std::fs::create_dir_all(cache_dir()).expect("creating the test cache");
    let _lock = FileLock::acquire(&cache_dir().join(format!("{name}.lock")))
        .expect("locking the Python install");
    if std::fs::read_to_string(&done).is_ok_and(|d| d == wanted) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))
        .unwrap_or_else(|e| panic!("creating a Python venv {name}: {e:#}"));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages))
    .unwrap_or_else(|e| panic!("installing {} from PyPI: {e:#}", packages.join(" ")));
    std::fs::write(&done, wanted).expect("marking the packages installed");
    python
}

/// A directory whose `node_modules` holds the npm packages that
/// `project/package.json` and `project/package-lock.json` pin (the official
/// `e2b` SDK), installed with `npm ci` into the test cache on first use
/// (keyed by the lock file's hash, under a file lock). `$HUTCH_E2B_JS_DIR`
/// overrides it.
pub fn e2b_js(project: &std::path::Path) -> PathBuf {
    use sha2::Digest;
    if let Some(p) = std::env::var_os("HUTCH_E2B_JS_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let read = |name: &str| {
        std::fs::read(project.join(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", project.join(name).display()))
    };
    let (manifest, lock) = (read("package.json"), read("package-lock.json"));
    let hash = hex::encode(&sha2::Sha256::digest([&manifest[..], &lock[..]].concat())[..8]);
    let dir = cache_dir().join(format!("e2b-js-{hash}"));
    let done = dir.join(".installed");
    if done.exists() {
        return dir;
    }
    std::fs::create_dir_all(cache_dir()).expect("creating the test cache");
    let _lock = FileLock::acquire(&cache_dir().join(format!("e2b-js-{hash}.lock")))
        .expect("locking the SDK install");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the SDK directory");
    std::fs::write(dir.join("package.json"), manifest).expect("writing package.json");
    std::fs::write(dir.join("package-lock.json"), lock).expect("writing package-lock.json");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
    .unwrap_or_else(|e| {
        panic!(
            "installing the pinned npm packages of {}: {e:#}",
            project.display()
        )
    });
    std::fs::write(&done, hash).expect("marking the SDK installed");
    dir
}

/// The MCP Python SDK release the `hutch mcp` tests drive it with.
pub const MCP_PYTHON: &str = "mcp==2.3.0";

/// What a client script printed: `name: value` lines, then `OK`.
pub struct ScriptLines {
    pub stdout: String,
}

impl ScriptLines {
    /// The value of the line `name: value`; panics, showing the output,
    /// when there is none.
    pub fn line(&self, name: &str) -> String {
        let prefix = format!("{name}: ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no '{name}' line in:\n{}", self.stdout))
            .to_string()
    }
}

/// Runs `script` (an MCP client on the official MCP Python SDK, pinned at
/// [`MCP_PYTHON`]) with the `hutch` binary and `args` as its arguments,
/// `HUTCH_SERVER` and `HUTCH_API_KEY` pointing at `server`; panics with
/// its output and the server's log unless it ends with `OK`.
pub fn mcp_client(
    server: &crate::TestServer,
    script: &std::path::Path,
    args: &[&str],
) -> ScriptLines {
    let python = python_with("mcp-python-2.3.0", &[MCP_PYTHON]);
    let out = Command::new(python)
        .arg(script)
        .arg(crate::hutch_bin())
        .args(args)
        .env("HUTCH_SERVER", server.url())
        .env("HUTCH_API_KEY", server.api_key())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python");
    let stdout = assert_script_ok(&out, &script.display().to_string(), server);
    ScriptLines { stdout }
}
