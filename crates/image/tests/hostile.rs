//! Hostile images: layers that try to write outside their directory, device nodes and setuid
//! files, compression bombs, blobs that lie about their digest or size, and manifests that
//! loop, nest or are gigantic, from OCI layouts and from a real registry. Each is refused with
//! a clear error or confined to the layer directory; nothing outside the store changes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use hutch_image::{ImageError, LayerStore, MAX_METADATA_SIZE, PullOptions, pull};
use hutch_test_support::{Registry, RegistryAuthMode, TestDir};
use serde_json::json;

// ----- A tar writer for entries no tar tool writes -----

/// Tar entries with arbitrary name bytes, PAX records and device numbers.
#[derive(Default)]
struct Tar {
    bytes: Vec<u8>,
}

struct Spec<'a> {
    name: &'a [u8],
    kind: tar::EntryType,
    data: &'a [u8],
    link: &'a [u8],
    mode: u32,
    dev: (u32, u32),
}

impl Tar {
    fn raw(&mut self, s: Spec<'_>) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            let n = s.name.len().min(100);
            old.name[..n].copy_from_slice(&s.name[..n]);
            let l = s.link.len().min(100);
            old.linkname[..l].copy_from_slice(&s.link[..l]);
        }
        header.set_entry_type(s.kind);
        header.set_size(s.data.len() as u64);
        header.set_mode(s.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(BASE_MTIME as u64);
        header.set_device_major(s.dev.0).unwrap();
        header.set_device_minor(s.dev.1).unwrap();
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(s.data);
        let pad = (512 - s.data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn plain(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], mode: u32) -> &mut Self {
        self.raw(Spec {
            name,
            kind,
            data: b"",
            link,
            mode,
            dev: (0, 0),
        })
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(Spec {
            name: name.as_bytes(),
            kind: tar::EntryType::Regular,
            data,
            link: b"",
            mode: 0o644,
            dev: (0, 0),
        })
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.plain(
            name.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            0o777,
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.plain(
            name.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            0o644,
        )
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.plain(name.as_bytes(), tar::EntryType::Directory, b"", 0o755)
    }

    fn device(&mut self, name: &str, kind: tar::EntryType, dev: (u32, u32)) -> &mut Self {
        self.raw(Spec {
            name: name.as_bytes(),
            kind,
            data: b"",
            link: b"",
            mode: 0o666,
            dev,
        })
    }

    /// A PAX extended header whose `path` record gives the next entry's name (any length,
    /// any bytes).
    fn pax_path(&mut self, path: &[u8]) -> &mut Self {
        let mut record = Vec::new();
        let body_len = b" path=".len() + path.len() + 1;
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        record.extend_from_slice(len.to_string().as_bytes());
        record.extend_from_slice(b" path=");
        record.extend_from_slice(path);
        record.push(b'\n');
        self.raw(Spec {
            name: b"PaxHeaders/x",
            kind: tar::EntryType::XHeader,
            data: &record,
            link: b"",
            mode: 0o644,
            dev: (0, 0),
        })
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

// ----- Watching the world outside the store -----

/// Everything under `dir` except the store: path -> (kind, mode, size, content or link target).
fn snapshot(dir: &Path, store: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path == store {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!(
                    "dir {:o} opaque={:?}",
                    meta.mode(),
                    xattr(&path, "trusted.overlay.opaque")
                )
            } else {
                format!(
                    "file {:o} {} {:?}",
                    meta.mode(),
                    meta.ino(),
                    fs::read(&path).unwrap()
                )
            };
            out.insert(path, what);
        }
    }
    out
}

/// A store next to a sentinel file and an empty `outside/` directory, all under one temporary
/// directory whose state (minus the store) is compared before and after each hostile input.
struct Arena {
    work: tempfile::TempDir,
    store: LayerStore,
    before: BTreeMap<PathBuf, String>,
}

impl Arena {
    fn new() -> Arena {
        let work = tempfile::tempdir().unwrap();
        fs::write(work.path().join("sentinel"), b"do not touch\n").unwrap();
        fs::create_dir(work.path().join("outside")).unwrap();
        let store = LayerStore::open(&work.path().join("store")).unwrap();
        let before = snapshot(work.path(), &work.path().join("store"));
        Arena {
            work,
            store,
            before,
        }
    }

    fn path(&self) -> &Path {
        self.work.path()
    }

    fn sentinel(&self) -> PathBuf {
        self.path().join("sentinel")
    }

    fn outside(&self) -> PathBuf {
        self.path().join("outside")
    }

    /// Nothing outside the store was created, changed or removed.
    fn assert_untouched(&self, case: &str) {
        let after = snapshot(self.path(), &self.path().join("store"));
        assert_eq!(
            after, self.before,
            "{case}: something outside the store changed"
        );
        assert_eq!(
            fs::read(self.sentinel()).unwrap(),
            b"do not touch\n",
            "{case}"
        );
        // Nor in the store's root, beside its own directories.
        let mut top: Vec<String> = fs::read_dir(self.store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["sha256", "tmp"], "{case}");
    }

    /// Adds a layer that must be refused; returns the error. Nothing may be kept.
    fn refused(&self, case: &str, layer: &[u8]) -> ImageError {
        let layers_before = store_contents(self.store.root()).0;
        let err = self
            .store
            .add_layer_tar(&mut &layer[..])
            .expect_err(&format!("{case}: the layer was accepted"));
        let (layers, staging) = store_contents(self.store.root());
        assert_eq!(layers, layers_before, "{case}: a layer was kept");
        assert!(staging.is_empty(), "{case}: staging left: {staging:?}");
        self.assert_untouched(case);
        err
    }

    /// Adds a layer that must be accepted, confined; returns its directory.
    fn confined(&self, case: &str, layer: &[u8]) -> PathBuf {
        let id = self
            .store
            .add_layer_tar(&mut &layer[..])
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        self.assert_untouched(case);
        assert!(store_contents(self.store.root()).1.is_empty(), "{case}");
        self.store.layer_dir(&id)
    }
}

fn in_layer(layer: &Path, host_path: &Path) -> PathBuf {
    layer.join(host_path.strip_prefix("/").unwrap())
}

#[test]
fn hostile_layer_entries_are_refused_or_confined() {
    let a = Arena::new();
    let outside = a.outside();
    let outside_s = outside.to_str().unwrap();
    let work_s = a.path().to_str().unwrap();
    let sentinel_s = a.sentinel().to_str().unwrap().to_owned();

    // A symlink out of the layer in one layer, written through in the next: each layer is
    // extracted into a directory of its own, so the second one has no such link to follow.
    let first = a.confined(
        "escaping symlink layer",
        &Tar::default().symlink("esc", outside_s).finish(),
    );
    let second = a.confined(
        "write through an earlier layer's symlink",
        &Tar::default().file("esc/pwned", b"x").finish(),
    );
    assert_eq!(fs::read_link(first.join("esc")).unwrap(), outside);
    assert!(second.join("esc").is_dir());
    assert_eq!(fs::read(second.join("esc/pwned")).unwrap(), b"x");

    // Hard links: to `../` (normalized inside the layer), to an absolute host path, and
    // through a symlink to the host: none may name a host file. Where the normalized target
    // is not a file of the layer, the layer is refused.
    for (case, tar) in [
        (
            "hard link to ../",
            Tar::default().hardlink("hl", "../../../sentinel").finish(),
        ),
        (
            "hard link to an absolute host path",
            Tar::default().hardlink("hl", &sentinel_s).finish(),
        ),
        (
            "hard link through an absolute symlink",
            Tar::default()
                .symlink("s", work_s)
                .hardlink("hl", "s/sentinel")
                .finish(),
        ),
        (
            "hard link through a climbing symlink",
            Tar::default()
                .symlink("up", "../../../../../../..")
                .hardlink("hl", &format!("up{sentinel_s}"))
                .finish(),
        ),
    ] {
        let err = a.refused(case, &tar);
        assert!(matches!(err, ImageError::Corrupt { .. }), "{case}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("hard link") && msg.contains("not an earlier file of the layer"),
            "{case}: {msg}"
        );
    }
    // Where the layer has a file at that path, the link is to the layer's own file.
    let dir = a.confined(
        "hard link to an absolute path the layer has",
        &Tar::default()
            .file(&sentinel_s, b"layer's own")
            .symlink("s", work_s)
            .hardlink("hl", "s/sentinel")
            .hardlink("hl2", &sentinel_s)
            .finish(),
    );
    let own = fs::metadata(in_layer(&dir, &a.sentinel())).unwrap();
    let host = fs::metadata(a.sentinel()).unwrap();
    for name in ["hl", "hl2"] {
        let m = fs::metadata(dir.join(name)).unwrap();
        assert_eq!(m.ino(), own.ino(), "{name}");
        assert_ne!(m.ino(), host.ino(), "{name} is the host's file");
    }

    // A directory replaced by a symlink out of the layer, then written under.
    let dir = a.confined(
        "directory replaced by a symlink",
        &Tar::default()
            .dir("d/")
            .file("d/x", b"x")
            .symlink("d", outside_s)
            .file("d/y", b"y")
            .finish(),
    );
    assert!(fs::symlink_metadata(dir.join("d")).unwrap().is_symlink());
    assert_eq!(fs::read(in_layer(&dir, &outside).join("y")).unwrap(), b"y");

    // Whiteouts and opaque markers aimed outside: through `..`, an absolute path and a
    // symlink, they land inside the layer.
    let dir = a.confined(
        "whiteouts aimed outside",
        &Tar::default()
            .file("../../../.wh.sentinel", b"")
            .file(&format!("{work_s}/.wh.sentinel"), b"")
            .symlink("w", work_s)
            .file("w/outside/.wh..wh..opq", b"")
            .file("w/.wh.outside", b"")
            .finish(),
    );
    for p in [dir.join("sentinel"), in_layer(&dir, &a.sentinel())] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{p:?}");
    }
    let wh = fs::symlink_metadata(in_layer(&dir, &outside)).unwrap();
    assert!(wh.file_type().is_char_device(), "the later whiteout wins");
    assert_eq!(xattr(&outside, "trusted.overlay.opaque"), None);
    let err = a.refused(
        "whiteout of `..`",
        &Tar::default().file("a/.wh...", b"").finish(),
    );
    assert!(err.to_string().contains("names no file"), "{err}");

    // Names: a component longer than NAME_MAX, a path longer than PATH_MAX (both through
    // PAX records), a NUL inside a PAX path and a link target: refused, nothing kept.
    let long_component = vec![b'n'; 300];
    let mut long_path = Vec::new();
    for _ in 0..300 {
        long_path.extend_from_slice(b"dddddddddddddddddddd/");
    }
    long_path.extend_from_slice(b"f");
    for (case, name) in [
        ("component over NAME_MAX", long_component.as_slice()),
        ("path over PATH_MAX", long_path.as_slice()),
    ] {
        let tar = Tar::default().pax_path(name).file("short", b"x").finish();
        let err = a.refused(case, &tar);
        assert!(matches!(err, ImageError::Extract { .. }), "{case}: {err}");
        assert!(err.to_string().contains("too long"), "{case}: {err}");
    }
    let err = a.refused(
        "NUL in a PAX path",
        &Tar::default()
            .pax_path(b"a\0/../../../sentinel")
            .file("short", b"x")
            .finish(),
    );
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("NUL"), "{err}");
    // A ustar name field ends at its first NUL: what follows it is not part of the name.
    let dir = a.confined(
        "NUL in a ustar name",
        &Tar::default().file("ok\0/../../sentinel", b"z").finish(),
    );
    assert_eq!(fs::read(dir.join("ok")).unwrap(), b"z");
    // Names that are not UTF-8 are kept byte for byte, inside the layer.
    let name = b"bin/\xff\xfe-\x01name";
    let dir = a.confined(
        "non-UTF-8 name",
        &Tar::default()
            .raw(Spec {
                name,
                kind: tar::EntryType::Regular,
                data: b"bytes",
                link: b"",
                mode: 0o644,
                dev: (0, 0),
            })
            .finish(),
    );
    let found: Vec<Vec<u8>> = fs::read_dir(dir.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(found, [b"\xff\xfe-\x01name".to_vec()]);
}

#[test]
fn device_nodes_are_dropped_and_setuid_bits_are_kept() {
    let a = Arena::new();
    let mut tar = Tar::default();
    tar.device("dev/sda", tar::EntryType::Block, (8, 0))
        .device("dev/mem", tar::EntryType::Char, (1, 1))
        .device("dev/net/tun", tar::EntryType::Char, (10, 200))
        .device("usr/.keep-whiteout", tar::EntryType::Char, (0, 0))
        .plain(b"bin/su", tar::EntryType::Regular, b"", 0o4755)
        .plain(b"bin/wall", tar::EntryType::Regular, b"", 0o2755);
    let dir = a.confined("devices and setuid", &tar.finish());
    for p in ["dev/sda", "dev/mem", "dev/net/tun"] {
        assert!(
            fs::symlink_metadata(dir.join(p)).is_err(),
            "{p} was extracted"
        );
    }
    // A character device 0:0 is an overlayfs whiteout and is kept as one.
    let wh = fs::symlink_metadata(dir.join("usr/.keep-whiteout")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // Setuid and setgid bits stay (a sandbox runs with no_new_privs, which the kernel applies
    // to every exec, so they raise nothing there).
    let su = fs::metadata(dir.join("bin/su")).unwrap();
    assert_eq!((su.mode() & 0o7777, su.uid()), (0o4755, 0));
    let wall = fs::metadata(dir.join("bin/wall")).unwrap();
    assert_eq!(wall.mode() & 0o7777, 0o2755);
}

/// A gzip'd tar holding one file of `size` zero bytes: the tar header in one gzip member,
/// then the zeros as members of at most 1 MiB each, all alike (gzip streams may be
/// concatenated), so that building it is fast and it stays about 1000 times smaller than
/// what it expands to.
fn zero_bomb(size: u64) -> Vec<u8> {
    let gz = |bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(BASE_MTIME as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = gz(header.as_bytes());
    const MIB: u64 = 1 << 20;
    let full = gz(&vec![0u8; MIB as usize]);
    let mut left = size.div_ceil(512) * 512 + 1024;
    while left >= MIB {
        out.extend_from_slice(&full);
        left -= MIB;
    }
    if left > 0 {
        out.extend_from_slice(&gz(&vec![0u8; left as usize]));
    }
    out
}

const BOMB_LIMIT: u64 = 1 << 20;

#[test]
fn compression_bombs_stop_at_the_unpacked_size_limit() {
    let a = Arena::new();
    let store = a.store.clone().with_max_unpacked_size(BOMB_LIMIT);
    assert_eq!(store.max_unpacked_size(), Some(BOMB_LIMIT));
    let check = |case: &str, bytes: &[u8], what: &str| {
        let err = store.add_layer_tar(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(err, ImageError::TooLarge { .. }),
            "{case}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(what) && msg.contains(&BOMB_LIMIT.to_string()),
            "{case}: {msg}"
        );
        assert_eq!(store_contents(store.root()), (vec![], vec![]), "{case}");
        a.assert_untouched(case);
    };

    // 64 MiB of zeros in a ~64 KiB blob: refused at the header, which declares the size.
    let bomb = zero_bomb(64 << 20);
    assert!(bomb.len() < 256 << 10, "{}", bomb.len());
    check("one huge file", &bomb, "compression bomb");

    // Many files, each small, adding up past the limit.
    let mut many = Tar::default();
    for i in 0..40 {
        many.file(&format!("f{i}"), &[7u8; 64 << 10]);
    }
    check("many files", &gzip(&many.finish()), "compression bomb");

    // A small tar followed by megabytes of data past its end-of-archive marker: the whole
    // decompressed stream counts, not only what the tar's entries hold.
    let mut tail = Tar::default().file("small", b"x").finish();
    tail.extend(std::iter::repeat_n(0u8, 4 << 20));
    check("data past the end", &gzip(&tail), "compression bomb");

    // A compressed image archive is bounded the same way as it is decompressed.
    let err = store
        .import_tar_stream(&mut &bomb[..], None, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("decompressed archive"), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));

    // An image in an OCI layout whose layer is the bomb.
    let layout = a.path().join("outside-layout");
    let desc = put_image(
        &layout,
        config_json(&[], "amd64"),
        &[(bomb.clone(), format!("sha256:{}", "0".repeat(64)))],
    );
    write_index(&layout, vec![desc]);
    let err = store.import(&layout, None, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
    fs::remove_dir_all(&layout).unwrap();

    // Under the limit, the same kind of layer goes in.
    let ok = zero_bomb(BOMB_LIMIT / 2);
    store.add_layer_tar(&mut &ok[..]).unwrap();
    a.assert_untouched("layer under the limit");
}

/// A one-file layer: (gzip blob, diff id).
fn small_layer(name: &str) -> (Vec<u8>, String) {
    simple_layer(&[(name, b"content\n")])
}

/// An edit of a manifest (and of the layout it is in).
type Edit<'a> = dyn Fn(&mut serde_json::Value, &Path) + 'a;

#[test]
fn layout_blobs_that_lie_about_their_size_or_digest_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let (blob, diff_id) = small_layer("a");
    // Another valid layer with a blob of the same size.
    let other_blob = (b'b'..=b'z')
        .map(|c| small_layer(&(c as char).to_string()).0)
        .find(|b| b.len() == blob.len())
        .expect("a layer of the same size");
    let lies: [(&str, Box<Edit<'_>>); 3] = [
        (
            "size mismatch",
            Box::new(|m, _| {
                let s = m["layers"][0]["size"].as_u64().unwrap();
                m["layers"][0]["size"] = json!(s - 10);
            }),
        ),
        (
            "size mismatch",
            Box::new(|m, _| {
                let s = m["layers"][0]["size"].as_u64().unwrap();
                m["layers"][0]["size"] = json!(s + 10);
            }),
        ),
        // The blob at the layer's digest is another valid layer of the same size.
        (
            "digest mismatch",
            Box::new(|m, layout| {
                let d = m["layers"][0]["digest"].as_str().unwrap();
                fs::write(blob_path(layout, d), &other_blob).unwrap();
            }),
        ),
    ];
    for (i, (want, lie)) in lies.iter().enumerate() {
        let layout = work.path().join(format!("layout-{i}"));
        let desc = put_image(
            &layout,
            config_json(&[], "amd64"),
            &[(blob.clone(), diff_id.clone())],
        );
        let mut manifest = read_json(&blob_path(&layout, desc["digest"].as_str().unwrap()));
        lie(&mut manifest, &layout);
        let desc = put_blob(&layout, MT_MANIFEST, manifest.to_string().as_bytes());
        write_index(&layout, vec![desc]);
        let store = LayerStore::open(&work.path().join(format!("store-{i}"))).unwrap();
        let err = store.import(&layout, None, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{want}: {err:?}");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(store_contents(store.root()), (vec![], vec![]));
    }
}

#[test]
fn layout_manifests_that_loop_nest_or_are_gigantic_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let (blob, diff_id) = small_layer("a");
    let import = |layout: &Path| store.import(layout, None, &mut |_| {}).unwrap_err();

    // An index that names itself: content addressing makes a real loop impossible, so the
    // blob stored under the digest it names is not that digest's content.
    let layout = work.path().join("loop");
    let image = put_image(
        &layout,
        config_json(&[], "amd64"),
        &[(blob.clone(), diff_id.clone())],
    );
    let fake = format!("sha256:{}", "ab".repeat(32));
    let looping = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_INDEX, "digest": fake, "size": 0}, image]});
    let bytes = looping.to_string();
    fs::write(blob_path(&layout, &fake), &bytes).unwrap();
    let fixed = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_INDEX, "digest": fake, "size": bytes.len()}, image]});
    fs::write(blob_path(&layout, &fake), fixed.to_string()).unwrap();
    write_index(
        &layout,
        vec![json!({"mediaType": MT_INDEX, "digest": fake, "size": fixed.to_string().len()})],
    );
    let err = import(&layout);
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");

    // Indexes nested five deep.
    let layout = work.path().join("deep");
    let mut desc = put_image(
        &layout,
        config_json(&[], "amd64"),
        &[(blob.clone(), diff_id.clone())],
    );
    for _ in 0..5 {
        let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]});
        desc = put_blob(&layout, MT_INDEX, index.to_string().as_bytes());
    }
    write_index(&layout, vec![desc]);
    let err = import(&layout);
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("nested more than 4 deep"), "{err}");

    // A 100 MB manifest (a sparse file: it takes no disk), once with an honest descriptor and
    // once with one that says it is small; a 100 MB config, and a 100 MB index.json. None is
    // read: the size is checked first.
    let huge = 100_000_000u64;
    let sparse = |path: &Path| {
        fs::File::create(path).unwrap().set_len(huge).unwrap();
    };
    for (case, declared) in [("honest", huge), ("lying", 300)] {
        let layout = work.path().join(format!("huge-manifest-{case}"));
        write_index(&layout, vec![]);
        let hex = "cd".repeat(32);
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        sparse(&layout.join("blobs/sha256").join(&hex));
        write_index(
            &layout,
            vec![
                json!({"mediaType": MT_MANIFEST, "digest": format!("sha256:{hex}"), "size": declared}),
            ],
        );
        let err = import(&layout);
        assert!(
            matches!(err, ImageError::TooLarge { .. }),
            "{case}: {err:?}"
        );
        assert!(
            err.to_string().contains(&MAX_METADATA_SIZE.to_string()),
            "{case}: {err}"
        );
    }
    let layout = work.path().join("huge-config");
    let image = put_image(&layout, config_json(&[], "amd64"), &[(blob, diff_id)]);
    let mut manifest = read_json(&blob_path(&layout, image["digest"].as_str().unwrap()));
    sparse(&blob_path(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    manifest["config"]["size"] = json!(huge);
    write_index(
        &layout,
        vec![put_blob(
            &layout,
            MT_MANIFEST,
            manifest.to_string().as_bytes(),
        )],
    );
    let err = import(&layout);
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("image config"), "{err}");
    sparse(&layout.join("index.json"));
    let err = import(&layout);
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("index.json"), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}

// ----- From a registry -----

/// Writes blobs, manifests and tags straight into a registry's storage (the layout of
/// distribution's filesystem driver), so that it serves what no client would push.
struct Storage<'a> {
    registry: &'a Registry,
    repo: &'a str,
}

impl Storage<'_> {
    fn v2(&self) -> PathBuf {
        self.registry.storage_dir().join("docker/registry/v2")
    }

    fn link(path: PathBuf, digest: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, digest).unwrap();
    }

    /// Stores `bytes` as a blob of the repository; returns its digest.
    fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let data = self.registry.blob_path(&digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let hex = &digest[7..];
        Self::link(
            self.v2()
                .join("repositories")
                .join(self.repo)
                .join("_layers/sha256")
                .join(hex)
                .join("link"),
            &digest,
        );
        digest
    }

    /// Stores a manifest (any bytes) and, if `tag` is given, tags it; returns its digest.
    fn manifest(&self, bytes: &[u8], tag: Option<&str>) -> String {
        let digest = sha256(bytes);
        let data = self.registry.blob_path(&digest);
        fs::create_dir_all(data.parent().unwrap()).unwrap();
        fs::write(&data, bytes).unwrap();
        let hex = &digest[7..];
        let m = self
            .v2()
            .join("repositories")
            .join(self.repo)
            .join("_manifests");
        Self::link(m.join("revisions/sha256").join(hex).join("link"), &digest);
        if let Some(tag) = tag {
            Self::link(m.join("tags").join(tag).join("current/link"), &digest);
            Self::link(
                m.join("tags")
                    .join(tag)
                    .join("index/sha256")
                    .join(hex)
                    .join("link"),
                &digest,
            );
        }
        digest
    }

    /// An image manifest over one config and layers given as (blob, declared size).
    fn image(&self, config: &serde_json::Value, layers: &[(&[u8], u64)]) -> serde_json::Value {
        let config = config.to_string();
        let cd = self.blob(config.as_bytes());
        let layers: Vec<_> = layers
            .iter()
            .map(|(bytes, size)| json!({"mediaType": MT_LAYER_GZIP, "digest": self.blob(bytes), "size": size}))
            .collect();
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cd, "size": config.len()},
            "layers": layers})
    }
}

fn config_for(diff_ids: &[&str]) -> serde_json::Value {
    let mut c = config_json(&[], "amd64");
    c["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    c
}

/// Whether an error is of the expected variant.
type IsKind = fn(&ImageError) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_images_that_lie_nest_bomb_or_are_gigantic_are_refused() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let storage = Storage {
        registry: &registry,
        repo: "hostile/image",
    };
    let (blob, diff_id) = small_layer("a");
    let real = blob.len() as u64;
    let config = config_for(&[&diff_id]);

    let lie_small = storage.image(&config, &[(&blob, real - 10)]);
    storage.manifest(lie_small.to_string().as_bytes(), Some("size-small"));
    let lie_large = storage.image(&config, &[(&blob, real + 10)]);
    storage.manifest(lie_large.to_string().as_bytes(), Some("size-large"));

    // The config's descriptor understates its size.
    let mut config_lie = storage.image(&config, &[(&blob, real)]);
    config_lie["config"]["size"] = json!(10);
    storage.manifest(config_lie.to_string().as_bytes(), Some("config-small"));
    // ... or declares a gigantic one.
    let mut config_huge = storage.image(&config, &[(&blob, real)]);
    config_huge["config"]["size"] = json!(100_000_000u64);
    storage.manifest(config_huge.to_string().as_bytes(), Some("config-huge"));

    // A manifest list whose linux/amd64 entry is itself a manifest list.
    let good = storage.image(&config, &[(&blob, real)]);
    let good_bytes = good.to_string();
    let good_digest = storage.manifest(good_bytes.as_bytes(), Some("good"));
    let platform = json!({"os": "linux", "architecture": "amd64"});
    let inner = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_MANIFEST, "digest": good_digest, "size": good_bytes.len(), "platform": platform}]})
    .to_string();
    let inner_digest = storage.manifest(inner.as_bytes(), None);
    let outer = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_INDEX, "digest": inner_digest, "size": inner.len(), "platform": platform}]});
    storage.manifest(outer.to_string().as_bytes(), Some("nested"));
    // A list entry that declares a gigantic manifest.
    let huge_entry = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_MANIFEST, "digest": good_digest, "size": 100_000_000u64, "platform": platform}]});
    storage.manifest(huge_entry.to_string().as_bytes(), Some("huge-entry"));

    // A manifest larger than the limit (valid JSON, padded with an annotation).
    let mut big = good.clone();
    big["annotations"] = json!({"pad": "x".repeat(MAX_METADATA_SIZE as usize + 1024)});
    storage.manifest(big.to_string().as_bytes(), Some("huge-manifest"));

    // A compression bomb layer.
    let bomb = zero_bomb(64 << 20);
    let bomb_id = format!("sha256:{}", "0".repeat(64));
    let bomb_image = storage.image(&config_for(&[&bomb_id]), &[(&bomb, bomb.len() as u64)]);
    storage.manifest(bomb_image.to_string().as_bytes(), Some("bomb"));

    let dir = TestDir::new();
    let store = LayerStore::open(&dir.join("store"))
        .unwrap()
        .with_max_unpacked_size(BOMB_LIMIT);
    let opts = PullOptions {
        docker_config: Some(dir.join("no-docker-config.json")),
        ..PullOptions::default()
    };
    let cases: [(&str, IsKind, &str); 8] = [
        (
            "size-small",
            |e| matches!(e, ImageError::Corrupt { .. }),
            "more than the",
        ),
        (
            "size-large",
            |e| matches!(e, ImageError::Corrupt { .. }),
            "size mismatch",
        ),
        (
            "config-small",
            |e| matches!(e, ImageError::Corrupt { .. }),
            "more than the 10 bytes",
        ),
        (
            "config-huge",
            |e| matches!(e, ImageError::TooLarge { .. }),
            "not fetched",
        ),
        (
            "nested",
            |e| matches!(e, ImageError::Unsupported { .. }),
            "itself a manifest list",
        ),
        (
            "huge-entry",
            |e| matches!(e, ImageError::TooLarge { .. }),
            "not fetched",
        ),
        // docker-registry will not serve a manifest over 4 MiB itself (a hostile server that
        // does is below).
        (
            "huge-manifest",
            |e| matches!(e, ImageError::Registry { .. }),
            "fetching the manifest",
        ),
        (
            "bomb",
            |e| matches!(e, ImageError::TooLarge { .. }),
            "compression bomb",
        ),
    ];
    for (tag, kind, text) in cases {
        let reference = registry.reference(&format!("hostile/image:{tag}"));
        let err = pull(&store, &reference, &opts, &mut |_| {})
            .await
            .expect_err(tag);
        assert!(kind(&err), "{tag}: {err:?}");
        assert!(err.to_string().contains(text), "{tag}: {err}");
        assert_eq!(
            store_contents(store.root()),
            (vec![], vec![]),
            "{tag}: something was kept"
        );
    }
    // The honest image from the same storage pulls.
    let image = pull(
        &store,
        &registry.reference("hostile/image:good"),
        &opts,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(image.layers, std::slice::from_ref(&diff_id));
    assert!(store.has_layer(&diff_id));
}

/// A hostile server on loopback: it answers `/v2/` like a registry, then sends any manifest
/// asked for as an endless body of spaces (with a `Content-Length` of 100 MB for tag `claims`,
/// with none for the others), stopping after 64 MiB or when the client hangs up. Each
/// manifest connection reports how many bytes it got out.
fn endless_manifest_server() -> (u16, std::sync::mpsc::Receiver<(String, u64)>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                conn.set_write_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let mut out = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                    }
                    if !path.contains("/manifests/") {
                        let _ = out.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                              Content-Length: 2\r\n\r\n{}",
                        );
                        continue;
                    }
                    let length = if path.ends_with("/claims") {
                        "Content-Length: 100000000\r\n"
                    } else {
                        "Connection: close\r\n"
                    };
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {MT_MANIFEST}\r\n{length}\r\n{{");
                    let mut sent = 0u64;
                    if out.write_all(head.as_bytes()).is_ok() {
                        let chunk = [b' '; 64 << 10];
                        while sent < 64 << 20 && out.write_all(&chunk).is_ok() {
                            sent += chunk.len() as u64;
                        }
                    }
                    let _ = tx.send((path, sent));
                    return;
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_is_read_no_further_than_the_limit() {
    // docker-registry refuses to serve a manifest over 4 MiB, so this plays a registry that
    // does not.
    let (port, sent) = endless_manifest_server();
    let dir = TestDir::new();
    let store = LayerStore::open(&dir.join("store")).unwrap();
    let opts = PullOptions {
        docker_config: Some(dir.join("no-docker-config.json")),
        ..PullOptions::default()
    };
    for tag in ["claims", "endless"] {
        let reference = format!("127.0.0.1:{port}/hostile/image:{tag}");
        let err = pull(&store, &reference, &opts, &mut |_| {})
            .await
            .expect_err(tag);
        assert!(matches!(err, ImageError::TooLarge { .. }), "{tag}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("allowed for a manifest") && msg.contains("not read"),
            "{tag}: {msg}"
        );
        let (path, bytes) = sent
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the server reports");
        assert!(path.ends_with(tag), "{path}");
        // The client hung up long before the server's 64 MiB: what it got out is the 4 MiB
        // read at most, plus what the sockets' buffers hold.
        assert!(bytes < 24 << 20, "{tag}: the server sent {bytes} bytes");
    }
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}
