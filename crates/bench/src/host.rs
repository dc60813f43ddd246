//! The host-clean check shared by `--density` and `--load`: after the
//! benchmark's sandboxes are killed, nothing of them may be left on the
//! host.
//!
//! Read from the kernel and the file system, never from Hutch's own
//! bookkeeping ([`HostResources`]): mounts, loop devices, network
//! namespaces, interfaces, nftables set elements, address claims, cgroups,
//! runc state, sandbox directories — and the disk under the data directory:
//! every file there, but the database, must be one that was there before
//! the benchmark's first create, no larger than it was then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use hutch_test_support::HostResources;

/// How long teardowns still running behind the kills may take.
const SETTLE: Duration = Duration::from_secs(60);

/// The files under a data directory, taken before the benchmark's first
/// create.
pub(crate) struct HostCheck {
    data_dir: PathBuf,
    files: BTreeMap<PathBuf, u64>,
}

impl HostCheck {
    pub(crate) fn before(data_dir: &Path) -> HostCheck {
        HostCheck {
            data_dir: data_dir.to_owned(),
            files: files_under(data_dir),
        }
    }

    /// Fails, listing what is left, unless nothing of sandboxes `ids` (nor
    /// of any other sandbox of the data directory) is left on the host and
    /// no file under the data directory is new or has grown — waiting a
    /// little for teardowns finishing behind the kills.
    pub(crate) async fn leftovers(&self, ids: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = HostResources::measure(&self.data_dir, ids);
            let grown = self.grown();
            if left.is_empty() && grown.is_empty() {
                println!("left on the host after the teardown: nothing");
                return Ok(());
            }
            if Instant::now() > deadline {
                let mut report = String::new();
                if !left.is_empty() {
                    report += &left.to_string();
                }
                if !grown.is_empty() {
                    report += &format!(
                        "{} files new or grown under the data dir: {}",
                        grown.len(),
                        grown.join(", ")
                    );
                }
                bail!("left on the host after the teardown:\n{report}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Files under the data directory, but the database, that are new or
    /// larger than before.
    fn grown(&self) -> Vec<String> {
        files_under(&self.data_dir)
            .into_iter()
            .filter(|(path, size)| {
                !is_database(path) && self.files.get(path).is_none_or(|before| size > before)
            })
            .map(|(path, size)| format!("{} ({size} bytes)", path.display()))
            .collect()
    }
}

/// The SQLite database and its journals: they keep the killed sandboxes'
/// rows and logs, by design.
fn is_database(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("hutch.db"))
}

/// Every regular file below `dir` with its size in blocks' bytes (what it
/// takes on disk), by path relative to `dir`. Mount points below it are
/// not entered (the sandboxes' mounts are [`HostResources`]' to count).
fn files_under(dir: &Path) -> BTreeMap<PathBuf, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut files = BTreeMap::new();
    let Ok(root) = std::fs::metadata(dir) else {
        return files;
    };
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let path = entry.path();
            if meta.is_dir() {
                if meta.dev() == root.dev() {
                    stack.push(path);
                }
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_owned();
                files.insert(rel, meta.blocks() * 512);
            }
        }
    }
    files
}
