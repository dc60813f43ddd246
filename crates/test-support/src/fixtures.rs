//! Real OCI image fixtures, built once and cached under `<target>/hutch-test-cache`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::layout::{Entries, ImageConfig, LayoutBuilder, append_tree};
use crate::paths::{FileLock, cache_dir, random_name, run};

/// Bump when what a fixture contains changes; the cache is keyed by this alone.
pub const FIXTURE_VERSION: u32 = 1;

/// The tag every fixture layout (and converted archive) carries.
pub const IMAGE_TAG: &str = "latest";

/// The image config `Env` of every fixture, exactly as in environment.md's cases.
pub const IMAGE_ENV: [&str; 6] = [
    "PATH=/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "MY_APP_CONFIG=/etc/myapp/config.json",
    "PYTHONPATH=/app/lib",
    "EMPTY_VAR=",
    "TRICKY=a=b c  d",
    "OVERRIDE=image",
];

/// The image config `WorkingDir` of every fixture. `User` is left unset (root).
pub const IMAGE_WORKDIR: &str = "/app";

/// The image config `Cmd` of [`busybox_image`].
pub const IMAGE_CMD_BUSYBOX: [&str; 1] = ["/bin/sh"];

/// The image config `Cmd` of [`debian_image`].
pub const IMAGE_CMD_DEBIAN: [&str; 1] = ["/bin/bash"];

/// What `/opt/tool/bin/mytool` prints (plus a newline) in every fixture.
pub const MYTOOL_OUTPUT: &str = "mytool";

const MYTOOL: &str = "#!/bin/sh\necho mytool\n";
const MYAPP_CONFIG: &str = "{\"name\": \"myapp\"}\n";

/// Debian's busybox has no `printenv` applet; this stands in for it.
const PRINTENV_SH: &str = r#"#!/bin/sh
# printenv [NAME...]: print the whole environment, or the value of each NAME.
[ "$#" -eq 0 ] && exec env
__printenv_status=0
for __printenv_name in "$@"; do
    case "$__printenv_name" in
        '' | [0-9]* | *[!A-Za-z0-9_]*) __printenv_status=1; continue ;;
    esac
    if eval "[ -n \"\${$__printenv_name+set}\" ]"; then
        eval "printf '%s\n' \"\$$__printenv_name\""
    else
        __printenv_status=1
    fi
done
exit "$__printenv_status"
"#;

/// A small image from `/bin/busybox`, as an OCI image layout directory (tag [`IMAGE_TAG`]).
///
/// Layer 1: `/bin/busybox` with every applet symlinked in `/bin` (plus a `printenv` script),
/// `/etc/passwd` and `/etc/group` with `root` (0) and `user` (1000:1000, home `/home/user`,
/// shell `/bin/sh`), `/root`, `/home/user` (owned 1000:1000), `/tmp` (1777), `/app`.
/// Layer 2: `/opt/tool/bin/mytool` (prints `mytool`) and `/etc/myapp/config.json`.
/// Config: `Env` = [`IMAGE_ENV`], `WorkingDir` = [`IMAGE_WORKDIR`], no `User`, no bash.
pub fn busybox_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| cached_fixture("busybox", build_busybox))
        .clone()
}

/// A Debian 12 (bookworm) image built with `mmdebstrap --variant=minbase` including bash,
/// sudo, python3, coreutils, procps and ca-certificates, as an OCI image layout directory
/// (tag [`IMAGE_TAG`], one layer). Adds user `user` (uid/gid 1000, home `/home/user`, shell
/// `/bin/bash`, passwordless sudo via `/etc/sudoers.d/user`), `/opt/tool/bin/mytool`, `/app`
/// and `/etc/myapp/config.json`. Same config as [`busybox_image`] (`Cmd` `/bin/bash`).
///
/// Needs root and the Debian mirror (`$HUTCH_DEBIAN_MIRROR`, default
/// `http://deb.debian.org/debian`); takes about a minute the first time, then is cached.
pub fn debian_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| cached_fixture("debian", build_debian))
        .clone()
}

/// `layout` (an OCI layout with tag [`IMAGE_TAG`]) converted by skopeo to an `oci-archive`
/// tar file, cached (keyed by the layout's `index.json`).
pub fn as_oci_archive(layout: &Path) -> PathBuf {
    converted(layout, "oci-archive", |out| {
        format!("oci-archive:{}:{IMAGE_TAG}", out.display())
    })
}

/// `layout` (an OCI layout with tag [`IMAGE_TAG`]) converted by skopeo to a `docker-archive`
/// tar file (as `docker save` writes, tagged `hutch-fixture/<name>:latest`), cached (keyed by
/// the layout's `index.json`).
pub fn as_docker_archive(layout: &Path) -> PathBuf {
    let name = layout_name(layout);
    converted(layout, "docker-archive", |out| {
        format!(
            "docker-archive:{}:hutch-fixture/{}:{IMAGE_TAG}",
            out.display(),
            name.to_ascii_lowercase()
        )
    })
}

fn layout_name(layout: &Path) -> String {
    layout
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned())
}

fn converted(layout: &Path, format: &str, dest: impl Fn(&Path) -> String) -> PathBuf {
    let result = (|| -> Result<PathBuf> {
        let index = fs::read(layout.join("index.json"))
            .with_context(|| format!("{} is not an OCI layout", layout.display()))?;
        let key = &hex::encode(Sha256::digest(&index))[..12];
        let name = layout_name(layout);
        let suffix = format!(".{format}.tar");
        let cache = cache_dir();
        let out = cache.join(format!("{name}-{key}{suffix}"));
        if out.is_file() {
            return Ok(out);
        }
        let _lock = FileLock::acquire(&cache.join(format!("locks/{name}{suffix}.lock")))?;
        if out.is_file() {
            return Ok(out);
        }
        // Conversions of an earlier build of this layout are stale now.
        for entry in fs::read_dir(&cache)? {
            let file_name = entry?.file_name();
            let file_name = file_name.to_string_lossy();
            if let Some(old_key) = file_name
                .strip_prefix(&format!("{name}-"))
                .and_then(|rest| rest.strip_suffix(&suffix))
                && old_key.len() == 12
                && old_key.bytes().all(|b| b.is_ascii_hexdigit())
            {
                let _ = fs::remove_file(cache.join(&*file_name));
            }
        }
        let tmp = cache.join(format!(".tmp-{}", random_name(8)));
        let copied = run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(format!("oci:{}:{IMAGE_TAG}", layout.display()))
            .arg(dest(&tmp)));
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &out)?;
        Ok(out)
    })();
    result.unwrap_or_else(|e| panic!("converting {} to {format} failed: {e:#}", layout.display()))
}

/// Returns `<cache>/<name>-v<FIXTURE_VERSION>`, building it first if needed: `build(work, out)`
/// must create the layout at `out` (inside the scratch directory `work`); it is then renamed
/// into place, so the cached path only ever holds a complete layout.
fn cached_fixture(name: &str, build: fn(&Path, &Path) -> Result<()>) -> PathBuf {
    let cache = cache_dir();
    let dest = cache.join(format!("{name}-v{FIXTURE_VERSION}"));
    if dest.join("index.json").is_file() {
        return dest;
    }
    let result = (|| -> Result<()> {
        let _lock = FileLock::acquire(&cache.join(format!("locks/{name}.lock")))?;
        if dest.join("index.json").is_file() {
            return Ok(());
        }
        // Holding the lock, any scratch directory for this fixture is left from a crash.
        let prefix = format!(".tmp-{name}-");
        for entry in fs::read_dir(&cache)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_scratch(&entry.path());
            }
        }
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        let work = cache.join(format!("{prefix}{}", random_name(8)));
        fs::create_dir(&work)?;
        let started = Instant::now();
        eprintln!(
            "hutch-test-support: building fixture image `{name}` in {}",
            work.display()
        );
        let out = work.join("layout");
        let built = build(&work, &out).and_then(|()| {
            fs::rename(&out, &dest)
                .with_context(|| format!("renaming {} to {}", out.display(), dest.display()))
        });
        remove_scratch(&work);
        built?;
        eprintln!(
            "hutch-test-support: fixture image `{name}` built in {:.1?}",
            started.elapsed()
        );
        Ok(())
    })();
    if let Err(e) = result {
        panic!("building fixture image `{name}` failed: {e:#}");
    }
    dest
}

fn remove_scratch(dir: &Path) {
    if let Err(e) = crate::mounts::unmount_all_under(dir) {
        eprintln!("warning: {e:#}; leaving {} in place", dir.display());
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        eprintln!("warning: cannot remove {}: {e}", dir.display());
    }
}

fn build_busybox(_work: &Path, out: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let binary = fs::read(busybox).context("reading /bin/busybox (install busybox-static)")?;
    let list = run(Command::new(busybox).arg("--list"))?;
    let applets: Vec<String> = String::from_utf8(list.stdout)?
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    for needed in [
        "sh", "env", "id", "cat", "sleep", "sed", "grep", "nc", "hostname",
    ] {
        ensure!(
            applets.iter().any(|a| a == needed),
            "/bin/busybox has no `{needed}` applet"
        );
    }

    let mut layout = LayoutBuilder::new(out)?;
    layout.add_layer(
        "busybox rootfs: /bin, /etc/passwd, /etc/group, home dirs",
        |tar| {
            let mut t = Entries { tar };
            for (dir, mode) in [
                ("app", 0o755),
                ("bin", 0o755),
                ("dev", 0o755),
                ("etc", 0o755),
                ("home", 0o755),
                ("proc", 0o555),
                ("root", 0o700),
                ("sys", 0o555),
                ("tmp", 0o1777),
            ] {
                t.dir(dir, mode)?;
            }
            t.dir_owned("home/user", 0o755, 1000, 1000)?;
            t.file("bin/busybox", 0o755, &binary)?;
            for applet in &applets {
                t.symlink(&format!("bin/{applet}"), "busybox")?;
            }
            if !applets.iter().any(|a| a == "printenv") {
                t.file("bin/printenv", 0o755, PRINTENV_SH.as_bytes())?;
            }
            t.file(
                "etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
            )?;
            t.file("etc/group", 0o644, b"root:x:0:\nuser:x:1000:\n")?;
            Ok(())
        },
    )?;
    layout.add_layer("/opt/tool/bin/mytool and /etc/myapp", |tar| {
        let mut t = Entries { tar };
        t.dir("etc", 0o755)?;
        t.dir("etc/myapp", 0o755)?;
        t.file("etc/myapp/config.json", 0o644, MYAPP_CONFIG.as_bytes())?;
        for dir in ["opt", "opt/tool", "opt/tool/bin"] {
            t.dir(dir, 0o755)?;
        }
        t.file("opt/tool/bin/mytool", 0o755, MYTOOL.as_bytes())?;
        Ok(())
    })?;
    layout.finish(
        &ImageConfig {
            env: &IMAGE_ENV,
            working_dir: IMAGE_WORKDIR,
            cmd: &IMAGE_CMD_BUSYBOX,
        },
        IMAGE_TAG,
    )
}

fn build_debian(work: &Path, out: &Path) -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "mmdebstrap needs root to build the Debian fixture"
    );
    let started = Instant::now();
    let rootfs = work.join("rootfs");
    let mirror = std::env::var("HUTCH_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    run(Command::new("mmdebstrap")
        .args([
            "--mode=root",
            "--variant=minbase",
            "--include=bash,sudo,python3,coreutils,procps,ca-certificates",
            "--quiet",
            "bookworm",
        ])
        .arg(&rootfs)
        .arg(&mirror)
        .env("SOURCE_DATE_EPOCH", crate::layout::EPOCH.to_string()))
    .context("mmdebstrap")?;
    eprintln!(
        "hutch-test-support: mmdebstrap finished after {:.1?}",
        started.elapsed()
    );

    let chroot = |args: &[&str]| -> Result<()> {
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(args)
            .env("SOURCE_DATE_EPOCH", crate::layout::EPOCH.to_string()))
        .map(drop)
    };
    chroot(&[
        "useradd",
        "--create-home",
        "--uid",
        "1000",
        "--user-group",
        "--shell",
        "/bin/bash",
        "user",
    ])?;
    write_file(
        &rootfs.join("etc/sudoers.d/user"),
        b"user ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    )?;
    chroot(&["visudo", "--check", "--file=/etc/sudoers.d/user"]).context("checking sudoers")?;
    for dir in ["opt/tool/bin", "app", "etc/myapp"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    write_file(
        &rootfs.join("opt/tool/bin/mytool"),
        MYTOOL.as_bytes(),
        0o755,
    )?;
    write_file(
        &rootfs.join("etc/myapp/config.json"),
        MYAPP_CONFIG.as_bytes(),
        0o644,
    )?;
    // mmdebstrap copies these from the build host; the runtime provides its own.
    let _ = fs::remove_file(rootfs.join("etc/hostname"));
    write_file(&rootfs.join("etc/resolv.conf"), b"", 0o644)?;
    for dir in ["dev", "proc", "sys"] {
        ensure!(
            crate::mounts::mounts_under(&rootfs.join(dir)).is_empty(),
            "mmdebstrap left mounts under {}",
            rootfs.join(dir).display()
        );
    }

    let mut layout = LayoutBuilder::new(out)?;
    layout.add_layer(
        "mmdebstrap --variant=minbase --include=bash,sudo,python3,coreutils,procps,ca-certificates bookworm; useradd user; /opt/tool, /app, /etc/myapp",
        |tar| append_tree(tar, &rootfs),
    )?;
    layout.finish(
        &ImageConfig {
            env: &IMAGE_ENV,
            working_dir: IMAGE_WORKDIR,
            cmd: &IMAGE_CMD_DEBIAN,
        },
        IMAGE_TAG,
    )
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}
