//! Where things live (workspace, target directory, caches), file locks and small utilities.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir.join("../..");
        root.canonicalize()
            .unwrap_or_else(|e| panic!("cannot resolve workspace root {}: {e}", root.display()))
    })
}

/// The cargo target directory: `$CARGO_TARGET_DIR` if set, else the one holding the running
/// test binary (the nearest ancestor with cargo's `CACHEDIR.TAG`), else `<workspace>/target`.
pub fn target_dir() -> &'static Path {
    static TARGET: OnceLock<PathBuf> = OnceLock::new();
    TARGET.get_or_init(|| {
        let dir = if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty())
        {
            workspace_root().join(dir)
        } else {
            std::env::current_exe()
                .ok()
                .and_then(|exe| {
                    exe.ancestors()
                        .skip(1)
                        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                        .map(Path::to_path_buf)
                })
                .unwrap_or_else(|| workspace_root().join("target"))
        };
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create target dir {}: {e}", dir.display()));
        dir.canonicalize()
            .unwrap_or_else(|e| panic!("cannot resolve target dir {}: {e}", dir.display()))
    })
}

/// `<target>/hutch-test-cache`: image fixtures, converted archives and lock files.
pub fn cache_dir() -> PathBuf {
    let dir = target_dir().join("hutch-test-cache");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create cache dir {}: {e}", dir.display()));
    dir
}

/// `len` random characters from `[a-z0-9]`.
pub(crate) fn random_name(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// An exclusive `flock` on a file, released on drop. Works across processes and, because each
/// lock opens its own file description, across threads of one process.
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(FileLock { _file: file })
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Renders a command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            s.push_str(&format!("{arg:?}"));
        } else {
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` to completion with captured output; errors (with the output's tail) unless it
/// exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let output = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stdout), 40),
            tail(&String::from_utf8_lossy(&output.stderr), 40),
        );
    }
    Ok(output)
}
