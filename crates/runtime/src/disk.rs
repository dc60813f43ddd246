//! The sandbox's disk: a file system of its own, of a fixed size, holding
//! its overlay upper and work directories.
//!
//! Hutch's data directory may sit on any local file system, usually one
//! without project quotas, so per-directory limits are not available.
//! Instead each sandbox gets a sparse image file (`state_dir/<id>/disk.img`,
//! `disk_mb` long) formatted as ext4 and mounted through a loop device at
//! `state_dir/<id>/disk`. Writes inside the sandbox that would go past the
//! size fail with `ENOSPC` in the sandbox; the host's file system only ever
//! holds the blocks the sandbox really wrote, never more than the image
//! size.
//!
//! The image is made to be cheap to create (a few milliseconds; see
//! `docs/security.md`):
//!
//! * `mkfs.ext4` without a journal (a running sandbox is disposable: after
//!   a host crash it is destroyed, never re-adopted, so there is nothing to
//!   recover; a disk kept by a filesystem pause was unmounted cleanly, and
//!   is checked with `e2fsck -p` before it is mounted again, see
//!   [`mount_kept`]), with no blocks reserved for root, and with lazily
//!   initialised inode tables; it is mounted with `noinit_itable`, so the
//!   kernel never zeroes them in the background either (the sparse file
//!   reads as zeros);
//! * the loop device is configured in one `LOOP_CONFIGURE` call with
//!   direct I/O (no second copy of the data in the host's page cache) and
//!   **autoclear**: the kernel detaches it by itself when the file system
//!   is unmounted, or when the runtime dies before mounting it. So every
//!   path — destroy, failed boot, crash of the server — frees the loop
//!   device once the mount is gone, and teardown only has to unmount.
//!   [`detach_loops_under`] is a safety net for devices found bound to an
//!   image anyway.
//!
//! The host mount is `nosuid,nodev,noatime`: a setuid file a sandbox
//! writes is inert if something on the host reaches it through the
//! state directory. Inside the sandbox, files are reached through the
//! overlay mount, whose own flags apply.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::MountFlags;

use crate::error::{IoContext, RuntimeError};
use crate::toolns::ToolNamespace;

/// Smallest disk a sandbox can have, in MiB: ext4's own metadata takes a
/// few hundred KiB, and a template's first writes need room.
pub const MIN_DISK_MB: u64 = 16;

/// Largest disk a sandbox can have, in MiB (16 TiB, ext4's limit with 4 KiB
/// blocks and no 64-bit flag is far above any sensible value).
pub const MAX_DISK_MB: u64 = 16 * 1024 * 1024;

/// The `mkfs.ext4` binary, looked up in `PATH`.
const MKFS: &str = "mkfs.ext4";

/// The `e2fsck` binary, looked up in `PATH`.
const FSCK: &str = "e2fsck";

/// `mkfs.ext4` options: quiet, no journal, no reserved blocks, lazy inode
/// tables, no discard pass over the (sparse, all-hole) file.
const MKFS_ARGS: [&str; 7] = [
    "-q",
    "-F",
    "-O",
    "^has_journal",
    "-m0",
    "-E",
    "lazy_itable_init=1,nodiscard",
];

/// Mount data for the ext4 file system.
const MOUNT_DATA: &str = "noinit_itable";

/// How often attaching retries when another process took the free loop
/// device first.
const LOOP_ATTEMPTS: usize = 32;

// The loop driver's ioctls and flags (linux/loop.h).
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn new(backing: &Path, flags: u32) -> LoopInfo64 {
        let mut name = [0u8; 64];
        let bytes = backing.as_os_str().as_bytes();
        // The kernel shows this name only for information (it keeps the
        // real file); keep the end, which names the sandbox.
        let tail = &bytes[bytes.len().saturating_sub(63)..];
        name[..tail.len()].copy_from_slice(tail);
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: name,
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// Whether a disk size is within [`MIN_DISK_MB`]..=[`MAX_DISK_MB`].
pub(crate) fn check_size(size_mb: u64) -> Result<(), String> {
    if size_mb < MIN_DISK_MB {
        return Err(format!(
            "disk of {size_mb} MiB is below the minimum of {MIN_DISK_MB} MiB"
        ));
    }
    if size_mb > MAX_DISK_MB {
        return Err(format!(
            "disk of {size_mb} MiB is above the maximum of {MAX_DISK_MB} MiB"
        ));
    }
    Ok(())
}

/// Creates the sparse image `image` of `size_mb` MiB, formats it and mounts
/// it at `mountpoint` (which must exist). Blocking. On error, whatever was
/// mounted stays mounted (the caller's teardown unmounts everything under
/// the sandbox directory) and no loop device is left bound.
pub(crate) fn create(
    image: &Path,
    mountpoint: &Path,
    size_mb: u64,
    tools: &ToolNamespace,
) -> Result<(), RuntimeError> {
    create_image(image, mountpoint, size_mb, Journal::Without, tools)
}

/// Whether a new file system keeps a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Journal {
    /// Without: a sandbox's disk (disposable).
    Without,
    /// With: a volume (its data outlives sandboxes and host crashes).
    With,
}

/// [`create`], with or without a journal.
pub(crate) fn create_image(
    image: &Path,
    mountpoint: &Path,
    size_mb: u64,
    journal: Journal,
    tools: &ToolNamespace,
) -> Result<(), RuntimeError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .ctx(|| format!("create {}", image.display()))?;
    file.set_len(size_mb * 1024 * 1024)
        .ctx(|| format!("size {}", image.display()))?;
    drop(file);
    mkfs(image, journal, tools)?;
    mount_image(image, mountpoint)
}

/// Mounts the image of a disk kept by a filesystem pause at `mountpoint`
/// (which must exist). The image keeps its size. It was unmounted cleanly
/// when the sandbox stopped; `e2fsck -p` checks it first anyway (it only
/// reads the superblock of a clean file system), so that a host crash
/// halfway through a resume cannot leave a damaged file system mounted.
/// Blocking; the same guarantees as [`create`] on error.
pub(crate) fn mount_kept(
    image: &Path,
    mountpoint: &Path,
    tools: &ToolNamespace,
) -> Result<(), RuntimeError> {
    let meta = std::fs::metadata(image).ctx(|| format!("stat {}", image.display()))?;
    if !meta.is_file() {
        return Err(RuntimeError::io(
            format!("open {}", image.display()),
            std::io::Error::other("not a regular file"),
        ));
    }
    fsck(image, tools)?;
    mount_image(image, mountpoint)
}

/// Runs `e2fsck -p` (preen: fix what is safe, without asking) on an
/// unmounted image. Exit codes 0 (clean) and 1 (errors corrected) are
/// fine; anything else is an error.
fn fsck(image: &Path, tools: &ToolNamespace) -> Result<(), RuntimeError> {
    let mut cmd = Command::new(FSCK);
    tools.apply(&mut cmd);
    let out = cmd
        .arg("-p")
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("run {FSCK} (install e2fsprogs)"))?;
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(RuntimeError::io(
            format!("{FSCK} -p {}", image.display()),
            std::io::Error::other(format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        )),
    }
}

/// Waits up to `timeout` until no loop device is bound to a file under
/// `dir` (autoclear detaches a device shortly after its file system is
/// unmounted). Whether none is left.
pub(crate) fn wait_loops_released(dir: &Path, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if loops_under(dir).is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs `mkfs.ext4` on the image (in the tools' namespace: it reads the
/// whole mount table).
fn mkfs(image: &Path, journal: Journal, tools: &ToolNamespace) -> Result<(), RuntimeError> {
    let mut cmd = Command::new(MKFS);
    tools.apply(&mut cmd);
    let args: Vec<&str> = match journal {
        Journal::Without => MKFS_ARGS.to_vec(),
        // The same, with the journal (initialised lazily too).
        Journal::With => vec![
            "-q",
            "-F",
            "-m0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ],
    };
    let out = cmd
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("run {MKFS} (install e2fsprogs)"))?;
    if !out.status.success() {
        let said = format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // mkfs reports a full host disk only in words: keep it recognisable.
        let kind = if said.contains("No space left on device") {
            std::io::ErrorKind::StorageFull
        } else {
            std::io::ErrorKind::Other
        };
        return Err(RuntimeError::io(
            format!("{MKFS} {}", image.display()),
            std::io::Error::new(kind, said),
        ));
    }
    Ok(())
}

/// Binds the image to a free loop device (autoclear) and mounts it.
fn mount_image(image: &Path, mountpoint: &Path) -> Result<(), RuntimeError> {
    let (device, path) = attach(image)?;
    let data = CString::new(MOUNT_DATA).expect("no NUL");
    let res = rustix::mount::mount(
        &path,
        mountpoint,
        "ext4",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME,
        &*data,
    );
    // Closing our descriptor leaves the mount as the device's only user:
    // unmounting it (or a failed mount, now) detaches the device.
    drop(device);
    res.map_err(std::io::Error::from).ctx(|| {
        format!(
            "mount {} ({}) at {}",
            path.display(),
            image.display(),
            mountpoint.display()
        )
    })
}

/// Binds `image` to a free loop device with autoclear and direct I/O;
/// returns the open device and its path.
fn attach(image: &Path) -> Result<(File, PathBuf), RuntimeError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .ctx(|| format!("open {}", image.display()))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .ctx(|| "open /dev/loop-control (is the loop module loaded?)".to_owned())?;
    let mut last = None;
    for _ in 0..LOOP_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(RuntimeError::io(
                "find a free loop device",
                std::io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            Err(e) => {
                return Err(RuntimeError::io(format!("open {}", path.display()), e));
            }
        };
        match configure(&device, &backing, image) {
            Ok(()) => return Ok((device, path)),
            // Someone else bound it between GET_FREE and now.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("bind {} to {}", image.display(), path.display()),
                    e,
                ));
            }
        }
    }
    Err(RuntimeError::io(
        format!("bind {} to a loop device", image.display()),
        last.unwrap_or_else(|| std::io::Error::other("no free loop device")),
    ))
}

/// Configures an unbound loop device: `LOOP_CONFIGURE` (Linux 5.8), or
/// `LOOP_SET_FD` + `LOOP_SET_STATUS64` on older kernels.
fn configure(device: &File, backing: &File, image: &Path) -> std::io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(std::io::Error::other)?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info: LoopInfo64::new(image, LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO),
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config`
    // is (layout checked above), valid for the duration of the call.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(err);
    }
    // An older kernel: two steps. A crash between them leaves the device
    // bound without autoclear; detach_loops_under() frees it at teardown.
    // SAFETY: LOOP_SET_FD takes a file descriptor by value.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let info = LoopInfo64::new(image, LO_FLAGS_AUTOCLEAR);
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, which `info`
    // is, valid for the duration of the call.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_STATUS64, &info) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD, 0) };
        return Err(err);
    }
    Ok(())
}

/// Loop devices whose backing file is under `dir`, as `(device, backing
/// file)`. Reads `/sys/block/loop*/loop/backing_file`.
pub(crate) fn loops_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        let backing = PathBuf::from(backing);
        if backing.starts_with(dir) {
            found.push((PathBuf::from("/dev").join(name), backing));
        }
    }
    found
}

/// Detaches the loop devices bound to files under `dir` (normally none:
/// autoclear detaches them when their file system is unmounted). A device
/// still in use is marked to detach once its last user goes. Best effort.
pub(crate) fn detach_loops_under(dir: &Path) {
    for (device, backing) in loops_under(dir) {
        tracing::warn!(
            device = %device.display(),
            backing = %backing.display(),
            "detaching a loop device left bound to a sandbox disk"
        );
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&device)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(device = %device.display(), error = %e, "cannot open loop device");
                continue;
            }
        };
        // SAFETY: LOOP_CLR_FD takes no argument.
        if unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(device = %device.display(), error = %e, "cannot detach loop device");
        }
    }
}

/// Detaches loop devices bound to a disk image under `state_dir` whose
/// sandbox directory (`state_dir/<id>`) is gone: the image can only have
/// been deleted while bound, and no teardown will find it any more.
pub(crate) fn detach_orphan_loops(state_dir: &Path) {
    for (_, backing) in loops_under(state_dir) {
        let Ok(rel) = backing.strip_prefix(state_dir) else {
            continue;
        };
        let Some(id) = rel.components().next() else {
            continue;
        };
        let dir = state_dir.join(id);
        if !dir.exists() {
            detach_loops_under(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_tools() -> ToolNamespace {
        ToolNamespace::host(Path::new("/nonexistent"))
    }

    #[test]
    fn sizes() {
        assert!(check_size(MIN_DISK_MB).is_ok());
        assert!(check_size(2048).is_ok());
        assert!(check_size(0).unwrap_err().contains("minimum"));
        assert!(check_size(MAX_DISK_MB + 1).unwrap_err().contains("maximum"));
    }

    #[test]
    fn loop_file_name_keeps_the_end() {
        let long = format!("/{}/sandboxes/abc/disk.img", "x".repeat(100));
        let info = LoopInfo64::new(Path::new(&long), LO_FLAGS_AUTOCLEAR);
        let end = info.lo_file_name.iter().position(|&b| b == 0).unwrap();
        assert_eq!(end, 63);
        assert!(info.lo_file_name[..end].ends_with(b"/sandboxes/abc/disk.img"));
        assert_eq!(info.lo_flags, LO_FLAGS_AUTOCLEAR);
    }

    /// Needs root, the loop driver and mkfs.ext4, like the runtime itself.
    #[test]
    fn a_disk_is_a_bounded_file_system_and_unmounting_frees_its_loop() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (loop devices, mount)"
        );
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        create(&image, &mnt, 16, &host_tools()).unwrap();
        assert_eq!(loops_under(dir.path()).len(), 1);
        // Sparse: far less than 16 MiB used on the host.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 16 * 1024 * 1024);
        assert!(meta.blocks() * 512 < 4 * 1024 * 1024, "{}", meta.blocks());
        // Bounded: writing past the size fails with ENOSPC.
        let mut f = File::create(mnt.join("big")).unwrap();
        let chunk = vec![7u8; 1024 * 1024];
        let err = (0..32)
            .try_for_each(|_| std::io::Write::write_all(&mut f, &chunk))
            .and_then(|()| f.sync_all())
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        drop(f);
        rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).unwrap();
        // Autoclear: the device is free once unmounted.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !loops_under(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(loops_under(dir.path()).is_empty());

        // Kept: mounted again, the file system is checked and its files are
        // there.
        mount_kept(&image, &mnt, &host_tools()).unwrap();
        assert_eq!(loops_under(dir.path()).len(), 1);
        assert!(mnt.join("big").exists());
        rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).unwrap();
        assert!(wait_loops_released(
            dir.path(),
            std::time::Duration::from_secs(5)
        ));
        assert!(mount_kept(&dir.path().join("missing.img"), &mnt, &host_tools()).is_err());
    }
}
