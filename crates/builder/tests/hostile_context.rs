//! Hostile build contexts: context tars whose entries try to leave the context directory, and
//! `COPY`/`ADD` sources that climb out of it, name host paths or go through symlinks that
//! point outside. Each is refused with a clear error or confined to the context; no host file
//! outside the context is written or read into a layer.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use hutch_builder::BuildError;
use hutch_builder::context::{self, Selected};
use hutch_builder::layer::Owner;
use hutch_builder::rootfs::LayerStack;
use hutch_builder::steps::{self, CopyPlan};

const SECRET: &[u8] = b"host secret, never in a layer\n";

/// A temporary directory with `secret` and `outside/secret.tar` (an archive holding a file
/// `stolen`) beside the context directory `ctx/`.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret"), SECRET).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(SECRET.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "stolen", SECRET).unwrap();
        fs::write(
            dir.path().join("outside/secret.tar"),
            b.into_inner().unwrap(),
        )
        .unwrap();
        fs::create_dir(dir.path().join("ctx")).unwrap();
        World { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ctx(&self) -> PathBuf {
        self.path().join("ctx")
    }

    /// Everything outside the context: path -> (kind, mode, content).
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.path().to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.ctx() {
                    continue;
                }
                let m = fs::symlink_metadata(&p).unwrap();
                let v = if m.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", m.mode())
                } else {
                    format!("{:o} {:?}", m.mode(), fs::read(&p).ok())
                };
                out.insert(p, v);
            }
        }
        out
    }
}

/// A context tar with entries named exactly as given (`..` and absolute paths included).
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(&mut self, name: &str, kind: tar::EntryType, data: &[u8], link: &str) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_device_major(if kind == tar::EntryType::Char { 1 } else { 0 })
            .unwrap();
        h.set_device_minor(if kind == tar::EntryType::Char { 1 } else { 0 })
            .unwrap();
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0
            .extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, tar::EntryType::Regular, data, "")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Symlink, b"", target)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, tar::EntryType::Link, b"", target)
    }

    fn finish(&self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.extend(std::iter::repeat_n(0u8, 1024));
        v
    }
}

fn context_error(r: Result<(), BuildError>, case: &str) -> String {
    match r {
        Err(e @ BuildError::Context(_)) => e.to_string(),
        other => panic!("{case}: expected a context error, got {other:?}"),
    }
}

#[test]
fn context_tars_cannot_write_outside_the_context() {
    let w = World::new();
    let before = w.outside_state();
    let outside = w.path().join("outside");
    let secret = w.path().join("secret");
    let unpack = |case: &str, tar: Vec<u8>| {
        let dir = w.path().join("ctx").join(case.replace(' ', "-"));
        fs::create_dir(&dir).unwrap();
        let result = context::unpack(&mut tar.as_slice(), &dir);
        assert_eq!(
            w.outside_state(),
            before,
            "{case}: something outside changed"
        );
        (dir, result)
    };

    let (_, r) = unpack(
        "dotdot",
        RawTar::default().file("../../escape", b"x").finish(),
    );
    let msg = context_error(r, "dotdot");
    assert!(
        msg.contains("../../escape") && msg.contains("leaves it"),
        "{msg}"
    );

    let (_, r) = unpack(
        "through symlink",
        RawTar::default()
            .symlink("link", outside.to_str().unwrap())
            .file("link/pwned", b"x")
            .finish(),
    );
    let msg = context_error(r, "through symlink");
    assert!(msg.contains("outside of destination"), "{msg}");

    for (case, tar) in [
        (
            "hardlink absolute",
            RawTar::default()
                .hardlink("hl", secret.to_str().unwrap())
                .finish(),
        ),
        (
            "hardlink dotdot",
            RawTar::default().hardlink("hl", "../../secret").finish(),
        ),
        (
            "hardlink via symlink",
            RawTar::default()
                .symlink("up", w.path().to_str().unwrap())
                .hardlink("hl", "up/secret")
                .finish(),
        ),
    ] {
        let (_, r) = unpack(case, tar);
        let msg = context_error(r, case);
        assert!(msg.contains("cannot unpack the context"), "{case}: {msg}");
    }
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

    // Absolute paths land inside; a file replaces a symlink in its place instead of being
    // written through it; a device node becomes an empty regular file.
    let victim = outside.join("victim");
    let (dir, r) = unpack(
        "confined",
        RawTar::default()
            .file("/abs/file", b"abs")
            .symlink("victim", victim.to_str().unwrap())
            .file("victim", b"replaced")
            .entry("dev-mem", tar::EntryType::Char, b"", "")
            .finish(),
    );
    r.unwrap();
    assert_eq!(fs::read(dir.join("abs/file")).unwrap(), b"abs");
    assert_eq!(fs::read(dir.join("victim")).unwrap(), b"replaced");
    assert!(!victim.exists());
    let dev = fs::symlink_metadata(dir.join("dev-mem")).unwrap();
    assert!(dev.is_file() && dev.len() == 0);
}

#[test]
fn a_context_that_expands_without_end_is_refused() {
    let w = World::new();
    // 4 MiB of zeros in one file, gzip'd to some 40 KiB.
    let mut tar = RawTar::default();
    tar.file("zeros", &vec![0u8; 4 << 20]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.finish()).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let dir = w.ctx();
    let limit = 1 << 20;
    let err = context::unpack_limited(&mut bomb.as_slice(), &dir, limit).unwrap_err();
    assert!(matches!(err, BuildError::Context(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("compression bomb") && msg.contains(&limit.to_string()),
        "{msg}"
    );
    let written = fs::metadata(dir.join("zeros")).map_or(0, |m| m.len());
    assert!(written <= limit, "{written} bytes written");
    // Under the limit, the same context unpacks.
    let ok = w.path().join("ok");
    fs::create_dir(&ok).unwrap();
    context::unpack_limited(&mut bomb.as_slice(), &ok, 16 << 20).unwrap();
    assert_eq!(fs::metadata(ok.join("zeros")).unwrap().len(), 4 << 20);
}

/// The entries of a layer tar: path -> (type, link target, content).
fn layer_entries(tar: &[u8]) -> BTreeMap<String, (tar::EntryType, String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(path, (kind, link, data));
    }
    out
}

fn copy(ctx: &Path, sources: &[&str], extract: bool) -> Result<Vec<u8>, BuildError> {
    let selected: Vec<Vec<Selected>> = sources
        .iter()
        .map(|s| context::select(ctx, s))
        .collect::<Result<_, _>>()?;
    let flat: Vec<Selected> = selected.iter().flatten().cloned().collect();
    context::digest(ctx, &flat)?;
    let stack = LayerStack::new(Vec::new());
    let mut out = Vec::new();
    steps::copy_layer(
        &stack,
        &CopyPlan {
            root: ctx,
            selected,
            dest: "/dst/".to_owned(),
            owner: Owner::ROOT,
            chmod: None,
            extract,
        },
        &mut out,
    )?;
    Ok(out)
}

#[test]
fn copy_sources_cannot_read_host_files_outside_the_context() {
    let w = World::new();
    let ctx = w.ctx();
    fs::write(ctx.join("file.txt"), b"in context").unwrap();
    symlink(w.path().join("secret"), ctx.join("secret-link")).unwrap();
    symlink("..", ctx.join("up")).unwrap();
    symlink(w.path().join("outside"), ctx.join("outdir")).unwrap();
    symlink(w.path().join("outside/secret.tar"), ctx.join("evil.tar")).unwrap();
    fs::create_dir(ctx.join("d")).unwrap();
    symlink("/etc/passwd", ctx.join("d/passwd")).unwrap();
    symlink("../../secret", ctx.join("d/climb")).unwrap();

    // Sources that climb out, or go through a symlink that leads out: refused.
    for (source, want) in [
        ("../secret", "outside the build context"),
        ("d/../../secret", "outside the build context"),
        ("up/secret", "through a symlink"),
        ("outdir/secret.tar", "through a symlink"),
        ("up/outside/", "through a symlink"),
    ] {
        let err = copy(&ctx, &[source], false).expect_err(source);
        assert!(matches!(err, BuildError::Context(_)), "{source}: {err:?}");
        assert!(err.to_string().contains(want), "{source}: {err}");
    }
    // An absolute source is a path in the context, not on the host.
    let err = copy(&ctx, &["/etc/passwd"], false).unwrap_err();
    assert!(
        err.to_string().contains("not found in the build context"),
        "{err}"
    );

    // Symlinks that point outside are copied as symlinks: their target is a path inside the
    // sandbox, and the host file is never read. With `ADD`, a symlink to an archive outside
    // is not extracted either.
    let layer = copy(&ctx, &["secret-link", "d", "evil.tar", "file.txt"], true).unwrap();
    let entries = layer_entries(&layer);
    let link = |p: &str| {
        let (kind, target, _) = &entries[p];
        assert_eq!(*kind, tar::EntryType::Symlink, "{p}: {entries:?}");
        target.clone()
    };
    assert_eq!(
        link("dst/secret-link"),
        w.path().join("secret").to_str().unwrap()
    );
    assert_eq!(link("dst/passwd"), "/etc/passwd");
    assert_eq!(link("dst/climb"), "../../secret");
    assert_eq!(
        link("dst/evil.tar"),
        w.path().join("outside/secret.tar").to_str().unwrap()
    );
    assert_eq!(entries["dst/file.txt"].2, b"in context");
    assert!(!entries.keys().any(|k| k.contains("stolen")), "{entries:?}");
    assert!(
        !entries
            .values()
            .any(|(_, _, data)| data.windows(SECRET.len()).any(|w| w == SECRET)),
        "a host file's content is in the layer"
    );

    // Patterns walk the context without following symlinks into the host.
    let layer = copy(&ctx, &["*"], false).unwrap();
    let entries = layer_entries(&layer);
    assert_eq!(entries["dst/outdir"].0, tar::EntryType::Symlink);
    assert!(!entries.keys().any(|k| k.contains("secret.tar/")));
    assert!(
        !entries
            .values()
            .any(|(_, _, data)| data.windows(SECRET.len()).any(|w| w == SECRET)),
        "a host file's content is in the layer"
    );
}
