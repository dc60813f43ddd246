//! Finding and removing mounts and runc containers left behind under a directory.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths::run;

/// Every mount point at or below `dir` in this process's mount namespace, in
/// `/proc/self/mountinfo` order (parents before the mounts stacked on them). Panics if
/// mountinfo cannot be read.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    try_mounts_under(dir).unwrap_or_else(|e| panic!("mounts_under({}): {e:#}", dir.display()))
}

fn try_mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info)
        .into_iter()
        .filter(|mount_point| mount_point.starts_with(&dir))
        .collect())
}

/// The mount points (field 5) of a mountinfo file, with its octal escapes decoded.
fn parse_mountinfo(info: &[u8]) -> Vec<PathBuf> {
    info.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape_octal(field))))
        .collect()
}

/// Decodes the `\NNN` escapes the kernel uses for space, tab, newline and backslash.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Detaches (`umount2(MNT_DETACH)`) every mount at or below `dir`, deepest first, until
/// mountinfo shows none left. Errors naming the mounts that would not go away.
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    let mut last_errors = Vec::new();
    for _ in 0..10 {
        let mut mounts = try_mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        // Deepest first; for the same path, the most recent (topmost) mount first.
        mounts.reverse();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        last_errors.clear();
        for mount in &mounts {
            if let Err(e) = rustix::mount::unmount(mount, rustix::mount::UnmountFlags::DETACH) {
                // EINVAL: already gone with its parent's detach.
                if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                    last_errors.push(format!("{}: {e}", mount.display()));
                }
            }
        }
    }
    let left = try_mounts_under(dir)?;
    if left.is_empty() {
        return Ok(());
    }
    bail!(
        "mounts under {} would not unmount: {:?} (errors: {:?})",
        dir.display(),
        left,
        last_errors
    )
}

/// Force-deletes every container runc knows under `runc_root` (`runc --root R list -q`, then
/// `runc --root R delete --force ID`). Returns the ids deleted; a missing root is not an error.
pub fn runc_force_clean(runc_root: &Path) -> Result<Vec<String>> {
    if !runc_root.is_dir() {
        return Ok(Vec::new());
    }
    let output = run(Command::new("runc")
        .arg("--root")
        .arg(runc_root)
        .args(["list", "-q"]))?;
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    let mut errors = Vec::new();
    for id in &ids {
        if let Err(e) = run(Command::new("runc")
            .arg("--root")
            .arg(runc_root)
            .args(["delete", "--force", id]))
        {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_points_with_escapes() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            90 22 0:50 / /work/a\\040b/c\\134d rw - tmpfs tmpfs rw\n\
            91 22 0:51 / /odd\\04 rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo(info),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/work/a b/c\\d"),
                PathBuf::from("/odd\\04"),
            ]
        );
    }
}
