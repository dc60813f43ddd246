//! The runtime's configuration and the checks made on it.

use std::path::{Path, PathBuf};

use crate::*;

/// Where the runtime keeps its state and which binaries it uses.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-sandbox directories (`DATA_DIR/sandboxes`).
    pub state_dir: PathBuf,
    /// runc's `--root` (`DATA_DIR/runc`), private to Hutch.
    pub runc_root: PathBuf,
    /// Volumes ([`crate::volumes`]; `DATA_DIR/volumes`).
    pub volumes_dir: PathBuf,
    /// The runc binary; a bare name is looked up in `PATH`.
    pub runc: PathBuf,
    /// Host path of the static `hutch-envd` binary bound into sandboxes.
    pub envd: PathBuf,
    /// Cgroup parent of all sandboxes (relative to each hierarchy's root).
    pub cgroup_parent: String,
    /// How sandboxes are networked ([`network`]).
    pub network: NetworkConfig,
}

impl RuntimeConfig {
    /// The standard layout under a data directory: `data_dir/sandboxes`,
    /// `data_dir/runc`, runc from `PATH`, cgroup parent `hutch`.
    pub fn new(data_dir: &Path, envd: PathBuf) -> Self {
        RuntimeConfig {
            state_dir: data_dir.join("sandboxes"),
            runc_root: data_dir.join("runc"),
            volumes_dir: data_dir.join("volumes"),
            runc: PathBuf::from(DEFAULT_RUNC),
            envd,
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_owned(),
            network: NetworkConfig::default(),
        }
    }
}

/// Checks a sandbox id: it becomes a path component, a hostname and a runc
/// container id.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let err = |reason| {
        Err(RuntimeError::InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return err("empty");
    }
    if id.len() > MAX_ID_LEN {
        return err("longer than 63 characters");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Checks the cgroup parent and returns it without surrounding slashes.
pub(crate) fn check_cgroup_parent(parent: &str) -> Result<String, RuntimeError> {
    let trimmed = parent.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(RuntimeError::InvalidConfig(format!(
            "cgroup_parent {parent:?} must be a relative cgroup path of [A-Za-z0-9_.-] components"
        )))
    }
}

/// Whether `path` is an ELF executable that names a program interpreter
/// (`PT_INTERP`), i.e. is dynamically linked and would not run in an image
/// without the host's libc. Anything unreadable or not a 64-bit
/// little-endian ELF (a script, say) is not.
pub fn elf_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if data.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| u32_at(phoff + i * usize::from(phentsize)) == Some(PT_INTERP))
}

#[cfg(test)]
mod elf_tests {
    use super::elf_interpreter;

    #[test]
    fn tells_dynamic_from_static_executables() {
        // /bin/ls on Debian is dynamically linked; busybox-static is not.
        assert!(elf_interpreter(std::path::Path::new("/bin/ls")));
        if std::path::Path::new("/bin/busybox").exists() {
            assert!(!elf_interpreter(std::path::Path::new("/bin/busybox")));
        }
        assert!(!elf_interpreter(std::path::Path::new("/etc/passwd")));
        assert!(!elf_interpreter(std::path::Path::new("/no/such/file")));
    }
}
