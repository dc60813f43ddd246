//! Short-pathed temporary directories under the target directory.

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::mounts::{runc_force_clean, unmount_all_under};
use crate::paths::{random_name, target_dir};

/// Longest accepted [`TestDir`] path. Unix socket paths are limited to 107 bytes and the
/// server puts sockets a few levels below its data directory.
const MAX_TEST_DIR_LEN: usize = 64;

/// A unique directory `<target>/ht/<8 random chars>` (not under `/tmp`, and short, because
/// unix socket paths below it must fit in `sun_path`).
///
/// On drop, everything mounted at or below it is detached (found via `/proc/self/mountinfo`),
/// then the directory is removed. If a mount refuses to go away the directory is left in place
/// (with a warning) rather than deleting through the mount.
///
/// Derefs to [`Path`], so `dir.join("x")` works.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    /// Remove the directory on drop (false for guards over directories owned elsewhere).
    remove: bool,
    /// Force-delete runc containers under `<path>/runc` on drop.
    runc_cleanup: bool,
}

impl TestDir {
    /// Creates a new empty directory. Panics if the path would be too long for unix sockets.
    pub fn new() -> TestDir {
        let base = target_dir().join("ht");
        fs::create_dir_all(&base)
            .unwrap_or_else(|e| panic!("TestDir: cannot create {}: {e}", base.display()));
        loop {
            let path = base.join(random_name(8));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let len = path.as_os_str().len();
                    assert!(
                        len <= MAX_TEST_DIR_LEN,
                        "TestDir path {} is {len} bytes, over {MAX_TEST_DIR_LEN}: unix socket \
                         paths below it would not fit; use a shorter CARGO_TARGET_DIR",
                        path.display()
                    );
                    return TestDir {
                        path,
                        remove: true,
                        runc_cleanup: false,
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("TestDir: cannot create {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the guard: nothing is unmounted or removed; returns the path.
    pub fn keep(mut self) -> PathBuf {
        self.remove = false;
        self.runc_cleanup = false;
        let path = std::mem::take(&mut self.path);
        std::mem::forget(self);
        path
    }

    /// Makes the guard also force-delete runc containers under `<path>/runc` on drop.
    pub(crate) fn with_runc_cleanup(mut self) -> TestDir {
        self.runc_cleanup = true;
        self
    }

    /// A guard over a directory owned by someone else: on drop it cleans up runc containers
    /// and mounts below `path` but does not remove it.
    pub(crate) fn cleanup_guard(path: PathBuf) -> TestDir {
        TestDir {
            path,
            remove: false,
            runc_cleanup: true,
        }
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.runc_cleanup
            && let Err(e) = runc_force_clean(&self.path.join("runc"))
        {
            eprintln!(
                "warning: TestDir {}: runc cleanup failed: {e:#}",
                self.path.display()
            );
        }
        if self.runc_cleanup {
            crate::leaks::network_force_clean(&self.path);
        }
        if let Err(e) = unmount_all_under(&self.path) {
            eprintln!(
                "warning: TestDir {}: {e:#}; leaving the directory in place",
                self.path.display()
            );
            return;
        }
        if self.remove {
            match fs::remove_dir_all(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!(
                    "warning: TestDir {}: cannot remove: {e}",
                    self.path.display()
                ),
            }
        }
    }
}
