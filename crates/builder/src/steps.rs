//! The filesystem steps Hutch carries out itself, without a sandbox: `COPY`
//! and `ADD`, `USER` (creating a missing user) and `WORKDIR` (creating a
//! missing directory). Each writes one layer tar on top of a
//! [`LayerStack`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use hutch_env::Accounts;

use crate::BuildError;
use crate::context::{self, Selected};
use crate::layer::{LayerWriter, Owner};
use crate::rootfs::{LayerStack, components};

/// Users created by `USER` get ids from here up (Debian's `FIRST_UID`).
const FIRST_UID: u32 = 1000;
/// ... and below this (Debian's `LAST_UID`).
const LAST_UID: u32 = 59999;

/// The accounts of the root filesystem so far.
pub fn accounts(stack: &LayerStack) -> Accounts {
    let read = |p| {
        stack
            .read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Accounts::parse(&read("/etc/passwd"), &read("/etc/group"))
}

/// Resolves a `--chown` value against the accounts so far.
pub fn owner(stack: &LayerStack, spec: &str) -> Result<Owner, BuildError> {
    let accounts = accounts(stack);
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let resolved = accounts
        .resolve_user(&match group {
            Some(g) => format!("{user}:{g}"),
            None => user.to_owned(),
        })
        .map_err(|e| BuildError::Step(format!("--chown={spec}: {e}")))?;
    // `--chown=user` alone gives the user's primary group, as Docker does.
    Ok(Owner {
        uid: resolved.uid,
        gid: resolved.gid,
    })
}

/// Absolute form of `path` against the working directory `workdir`.
pub fn absolute(workdir: Option<&str>, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_owned();
    }
    let base = workdir.unwrap_or("/");
    format!("{}/{}", base.trim_end_matches('/'), path)
}

/// What a `COPY` writes: sources already selected in `root`.
pub struct CopyPlan<'a> {
    /// The context (or uploaded file set) directory.
    pub root: &'a Path,
    /// Selected sources, per source argument.
    pub selected: Vec<Vec<Selected>>,
    /// Destination, absolute, as written (a trailing `/` means a directory).
    pub dest: String,
    /// Owner of everything written.
    pub owner: Owner,
    /// Mode override.
    pub chmod: Option<u32>,
    /// `ADD`: extract local archives.
    pub extract: bool,
}

/// Writes a `COPY`/`ADD` layer.
pub fn copy_layer(
    stack: &LayerStack,
    plan: &CopyPlan<'_>,
    out: &mut dyn Write,
) -> Result<(), BuildError> {
    let all: Vec<&Selected> = plan.selected.iter().flatten().collect();
    let many = all.len() > 1 || all.iter().any(|s| s.from_pattern);
    let dest_is_dir = plan.dest.ends_with('/')
        || many
        || (all.len() == 1 && all[0].is_dir)
        || stack
            .lookup(&resolve_dest(stack, &plan.dest))
            .is_some_and(|f| f.meta.is_dir());
    if many && !plan.dest.ends_with('/') {
        return Err(BuildError::Step(format!(
            "copying several sources needs a destination directory ending in `/` (got `{}`)",
            plan.dest
        )));
    }
    let dest = resolve_dest(stack, &plan.dest);
    let mut w = LayerWriter::new(stack, out);
    if dest_is_dir {
        w.dir(&dest, plan.owner, 0o755, false)?;
    } else {
        w.parents(&dest, plan.owner)?;
    }
    for s in &all {
        let host = plan.root.join(&s.rel);
        // Where this source lands.
        let target = if s.is_dir {
            // A directory's contents go into the destination.
            dest.clone()
        } else if dest_is_dir {
            let name = s.rel.file_name().map(|n| n.to_string_lossy().into_owned());
            format!(
                "{}/{}",
                dest.trim_end_matches('/'),
                name.unwrap_or_default()
            )
        } else {
            dest.clone()
        };
        if s.is_dir {
            for rel in context::walk(plan.root, std::slice::from_ref(s))? {
                let Ok(inner) = rel.strip_prefix(&s.rel) else {
                    continue;
                };
                if inner.as_os_str().is_empty() {
                    continue;
                }
                let path = format!(
                    "{}/{}",
                    target.trim_end_matches('/'),
                    inner.to_string_lossy()
                );
                w.copy_node(&path, &plan.root.join(&rel), plan.owner, plan.chmod)?;
            }
        } else if plan.extract && is_archive(&host) {
            extract_into(&mut w, &host, &dest, plan)?;
        } else {
            w.copy_node(&target, &host, plan.owner, plan.chmod)?;
        }
    }
    w.finish()
}

/// The destination with symlinks in its directory part resolved inside the
/// root (so `COPY x /bin/` on a usr-merged system lands in `/usr/bin`).
fn resolve_dest(stack: &LayerStack, dest: &str) -> String {
    let trimmed = dest.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".to_owned();
    }
    // The last component too, when it is an existing symlink to a
    // directory and the destination is a directory.
    let resolved = if dest.ends_with('/') {
        stack.resolve(trimmed)
    } else {
        stack.resolve_parent(trimmed)
    };
    resolved.unwrap_or_else(|| trimmed.to_owned())
}

/// Opens a context file without following a symlink in its place: a
/// symlink in the context is copied as a symlink, never read through.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Whether `path` is a tar archive (plain, gzip or zstd); a symlink is not
/// (it is copied as a link, so `ADD` never extracts a file outside the
/// context that a symlink points at).
fn is_archive(path: &Path) -> bool {
    let Ok(f) = open_nofollow(path) else {
        return false;
    };
    let Ok(mut reader) = decompressed(f) else {
        return false;
    };
    let mut block = vec![0u8; 512];
    reader.read_exact(&mut block).is_ok() && &block[257..262] == b"ustar"
}

fn decompressed(f: std::fs::File) -> std::io::Result<Box<dyn Read>> {
    let mut r = BufReader::new(f);
    let head = r.fill_buf()?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// `ADD archive dest/`: the archive's entries under `dest`, confined to it.
fn extract_into(
    w: &mut LayerWriter<'_>,
    archive: &Path,
    dest: &str,
    plan: &CopyPlan<'_>,
) -> Result<(), BuildError> {
    let f = open_nofollow(archive)
        .map_err(|e| BuildError::Step(format!("cannot open {}: {e}", archive.display())))?;
    let reader = decompressed(f)
        .map_err(|e| BuildError::Step(format!("cannot read {}: {e}", archive.display())))?;
    let mut tar = tar::Archive::new(reader);
    let tmp = tempfile::tempdir()
        .map_err(|e| BuildError::Step(format!("cannot create a temporary directory: {e}")))?;
    let bad =
        |e: std::io::Error| BuildError::Step(format!("cannot extract {}: {e}", archive.display()));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let parts = components(&path.to_string_lossy());
        if parts.iter().any(|p| p == "..") || parts.is_empty() {
            continue;
        }
        let rel = parts.join("/");
        let target = format!("{}/{rel}", dest.trim_end_matches('/'));
        let header = entry.header().clone();
        let owner = if plan.chmod.is_some() || header.uid().is_err() {
            plan.owner
        } else {
            // Archive entries keep their owners, as with `docker build`.
            Owner {
                uid: header.uid().unwrap_or(0) as u32,
                gid: header.gid().unwrap_or(0) as u32,
            }
        };
        // Stage the entry on disk, then copy it like a context file.
        let staged: PathBuf = tmp.path().join("entry");
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&staged);
        match header.entry_type() {
            tar::EntryType::Directory => {
                w.dir(&target, owner, header.mode().unwrap_or(0o755), true)?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Symlink => {
                entry.unpack(&staged).map_err(bad)?;
            }
            // Hard links, devices and other entries are not copied.
            _ => continue,
        }
        w.parents(&target, plan.owner)?;
        w.copy_node(&target, &staged, owner, plan.chmod)?;
    }
    Ok(())
}

/// `USER name[:group]`: writes a layer creating `name` (with a group of the
/// same name and a home directory with `/etc/skel`'s files) if it does not
/// exist, and a sudoers entry if `sudo`. Numeric users are never created.
/// Returns `false` (nothing written that matters) when there is nothing to do.
pub fn user_layer(
    stack: &LayerStack,
    spec: &str,
    sudo: bool,
    out: &mut dyn Write,
) -> Result<bool, BuildError> {
    let name = spec.split_once(':').map_or(spec, |(u, _)| u);
    let accounts = accounts(stack);
    let exists = name.parse::<u32>().is_ok()
        || name == "root"
        || accounts.passwd.iter().any(|e| e.name == name);
    if exists && !sudo {
        if let Some((_, group)) = spec.split_once(':') {
            accounts
                .resolve_user(spec)
                .map_err(|e| BuildError::Step(format!("USER {spec}: {e} (group `{group}`)")))?;
        }
        return Ok(false);
    }
    if !valid_user_name(name) {
        return Err(BuildError::Step(format!(
            "USER {spec}: `{name}` is not a valid user name"
        )));
    }
    let mut w = LayerWriter::new(stack, out);
    if !exists {
        let uid = (FIRST_UID..=LAST_UID)
            .find(|id| !accounts.passwd.iter().any(|e| e.uid == *id))
            .ok_or_else(|| BuildError::Step("no free user id".to_owned()))?;
        let (gid, new_group) = match accounts.group.iter().find(|g| g.name == name) {
            Some(g) => (g.gid, false),
            None => {
                let gid = if accounts.group.iter().any(|g| g.gid == uid) {
                    (FIRST_UID..=LAST_UID)
                        .find(|id| !accounts.group.iter().any(|g| g.gid == *id))
                        .ok_or_else(|| BuildError::Step("no free group id".to_owned()))?
                } else {
                    uid
                };
                (gid, true)
            }
        };
        let home = format!("/home/{name}");
        let shell = if stack.lookup("/bin/bash").is_some() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        append_line(
            &mut w,
            stack,
            "/etc/passwd",
            &format!("{name}:x:{uid}:{gid}::{home}:{shell}"),
            0o644,
        )?;
        if new_group {
            append_line(
                &mut w,
                stack,
                "/etc/group",
                &format!("{name}:x:{gid}:"),
                0o644,
            )?;
        }
        if stack.lookup("/etc/shadow").is_some() {
            append_line(
                &mut w,
                stack,
                "/etc/shadow",
                &format!("{name}:!:19000::::::"),
                0o640,
            )?;
        }
        if new_group && stack.lookup("/etc/gshadow").is_some() {
            append_line(&mut w, stack, "/etc/gshadow", &format!("{name}:!::"), 0o640)?;
        }
        let owner = Owner { uid, gid };
        w.dir(&home, owner, 0o750, true)?;
        copy_skel(&mut w, stack, &home, owner)?;
    }
    if sudo {
        w.file(
            &format!("/etc/sudoers.d/{name}"),
            Owner::ROOT,
            0o440,
            format!("{name} ALL=(ALL:ALL) NOPASSWD: ALL\n").as_bytes(),
        )?;
    }
    w.finish()?;
    Ok(true)
}

fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Writes `path` with `line` appended, keeping the owner and mode it has
/// (or `mode`, root-owned, if it is new).
fn append_line(
    w: &mut LayerWriter<'_>,
    stack: &LayerStack,
    path: &str,
    line: &str,
    mode: u32,
) -> Result<(), BuildError> {
    use std::os::unix::fs::MetadataExt;
    let mut content = stack.read(path).unwrap_or_default();
    if !content.is_empty() && !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
    let (owner, mode) = match stack.lookup(path) {
        Some(f) => (
            Owner {
                uid: f.meta.uid(),
                gid: f.meta.gid(),
            },
            f.meta.mode() & 0o7777,
        ),
        None => (Owner::ROOT, mode),
    };
    w.file(path, owner, mode, &content)
}

/// Copies `/etc/skel`'s regular files (one level and subdirectories) into
/// a new home, as `useradd -m` does.
fn copy_skel(
    w: &mut LayerWriter<'_>,
    stack: &LayerStack,
    home: &str,
    owner: Owner,
) -> Result<(), BuildError> {
    let Some(skel) = stack.lookup("/etc/skel") else {
        return Ok(());
    };
    if !skel.meta.is_dir() {
        return Ok(());
    }
    // Files are read through the stack, so lower layers' copies count.
    for name in [".bashrc", ".profile", ".bash_logout"] {
        if let Some(content) = stack.read(&format!("/etc/skel/{name}")) {
            w.file(&format!("{home}/{name}"), owner, 0o644, &content)?;
        }
    }
    Ok(())
}

/// `WORKDIR path`: writes a layer creating the directory (and missing
/// parents) owned by `owner` if it does not exist. `false` if it exists.
pub fn workdir_layer(
    stack: &LayerStack,
    path: &str,
    owner: Owner,
    out: &mut dyn Write,
) -> Result<bool, BuildError> {
    let resolved = stack.resolve(path).unwrap_or_else(|| path.to_owned());
    match stack.lookup(&resolved) {
        Some(f) if f.meta.is_dir() => return Ok(false),
        Some(_) => {
            return Err(BuildError::Step(format!(
                "WORKDIR {path}: it exists and is not a directory"
            )));
        }
        None => {}
    }
    let mut w = LayerWriter::new(stack, out);
    w.dir(&resolved, owner, 0o755, true)?;
    w.finish()?;
    Ok(true)
}
