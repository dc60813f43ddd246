//! Single layer tars through `LayerStore::add_layer_tar`: extraction details, confinement of
//! hostile paths, and store housekeeping.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use hutch_image::{ImageError, LayerStore};

fn add(store: &LayerStore, bytes: &[u8]) -> String {
    store
        .add_layer_tar(&mut &bytes[..])
        .unwrap_or_else(|e| panic!("add_layer_tar failed: {e}"))
}

#[test]
fn add_layer_tar_computes_the_diff_id_for_any_compression() {
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let mut tar = RawTar::default();
    tar.dir("etc/", 0o755)
        .file("etc/hostname", b"sandbox\n")
        .hardlink("etc/hostname2", "etc/hostname")
        .symlink("etc/alias", "hostname")
        .entry("dev/null", tar::EntryType::Char, b"", None, 0o666)
        .entry("run/fifo", tar::EntryType::Fifo, b"", None, 0o600)
        .file("usr/.wh.removed", b"")
        .file("opt/.wh..wh..opq", b"");
    let plain = tar.finish();
    let expected = sha256(&plain);

    let id = add(&store, &plain);
    assert_eq!(id, expected);
    let dir = store.layer_dir(&id);
    assert_eq!(dir, store.root().join("sha256").join(&expected[7..]));
    assert_eq!(fs::read(dir.join("etc/hostname")).unwrap(), b"sandbox\n");
    let a = fs::metadata(dir.join("etc/hostname")).unwrap();
    let b = fs::metadata(dir.join("etc/hostname2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        fs::read_link(dir.join("etc/alias")).unwrap(),
        Path::new("hostname")
    );
    // Device nodes are not extracted (a sandbox's /dev is its own); the
    // digest still covers them.
    assert!(fs::symlink_metadata(dir.join("dev/null")).is_err());
    assert!(dir.join("dev").is_dir());
    let fifo = fs::symlink_metadata(dir.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    let wh = fs::symlink_metadata(dir.join("usr/removed")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dir.join("usr/.wh.removed").exists());
    assert_eq!(
        xattr(&dir.join("opt"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("opt/.wh..wh..opq").exists());

    // The same layer gzip- or zstd-compressed has the same diff id and is not stored again.
    let marker = dir.join("etc/marker");
    fs::write(&marker, b"untouched").unwrap();
    assert_eq!(add(&store, &gzip(&plain)), expected);
    assert_eq!(add(&store, &zstd(&plain)), expected);
    assert!(marker.exists(), "existing layer was replaced");
    let (layers, staging) = store_contents(store.root());
    assert_eq!(layers.len(), 1);
    assert!(staging.is_empty(), "{staging:?}");
}

#[test]
fn hostile_paths_stay_inside_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();

    let mut tar = RawTar::default();
    tar.file("../../escape-dotdot", b"1")
        .file("/abs-file", b"2")
        // A symlink to the host's (here: test's) directory, then writes through it.
        .symlink("link", outside.to_str().unwrap())
        .file("link/through-abs-symlink", b"3")
        .symlink("up", "../../..")
        .file("up/through-rel-symlink", b"4")
        // A file where a later entry's file already is as a symlink: replaced, not followed.
        .symlink("victim", &format!("{}/victim", outside.display()))
        .file("victim", b"5")
        .hardlink("hl", "../../etc/passwd");
    let err = store.add_layer_tar(&mut &tar.finish()[..]).unwrap_err();
    // The hard link points at nothing inside the layer: that is a corrupt layer.
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("hard link"), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));

    let mut tar = RawTar::default();
    tar.file("../../escape-dotdot", b"1")
        .file("/abs-file", b"2")
        .symlink("link", outside.to_str().unwrap())
        .file("link/through-abs-symlink", b"3")
        .symlink("up", "../../..")
        .file("up/through-rel-symlink", b"4")
        .symlink("victim", &format!("{}/victim", outside.display()))
        .file("victim", b"5");
    let id = add(&store, &tar.finish());
    let dir = store.layer_dir(&id);

    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
    assert!(!work.path().join("store/escape-dotdot").exists());
    assert_eq!(fs::read(dir.join("escape-dotdot")).unwrap(), b"1");
    assert_eq!(fs::read(dir.join("abs-file")).unwrap(), b"2");
    // Absolute symlinks resolve as if the layer were "/": the file lands at
    // <layer>/<outside path>/through-abs-symlink.
    let rel_outside = outside.strip_prefix("/").unwrap();
    assert_eq!(
        fs::read(dir.join(rel_outside).join("through-abs-symlink")).unwrap(),
        b"3"
    );
    assert_eq!(fs::read(dir.join("through-rel-symlink")).unwrap(), b"4");
    assert_eq!(fs::read(dir.join("victim")).unwrap(), b"5");
    assert!(
        fs::symlink_metadata(dir.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn directories_keep_the_last_metadata_and_replacements_work() {
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let mut tar = RawTar::default();
    tar.dir("d/", 0o700)
        .file("d/f", b"x")
        .dir("d/", 0o750)
        // A file replaced by a directory, and a directory replaced by a file.
        .file("x", b"file")
        .dir("x/", 0o755)
        .file("x/inner", b"inner")
        .dir("y/", 0o755)
        .file("y/inner", b"inner")
        .file("y", b"now a file");
    let id = add(&store, &tar.finish());
    let dir = store.layer_dir(&id);
    let d = fs::metadata(dir.join("d")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o750);
    assert_eq!(d.mtime(), BASE_MTIME);
    assert_eq!(fs::read(dir.join("x/inner")).unwrap(), b"inner");
    assert_eq!(fs::read(dir.join("y")).unwrap(), b"now a file");
}

#[test]
fn bad_layer_tars_leave_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    // Incompressible data, so that a cut gzip stream is cut inside the file.
    let mut state = 0x2545_f491_u32;
    let data: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let mut tar = RawTar::default();
    tar.file("big", &data).file("after", b"x");
    let full = tar.finish();

    // Truncated in the middle of a file, plain and gzip'd.
    // Also cut exactly at an entry boundary, where only the missing end marker tells.
    let boundary = 512 + 100_352;
    for bytes in [
        full[..50_000].to_vec(),
        gzip(&full)[..20_000].to_vec(),
        full[..boundary].to_vec(),
    ] {
        let err = store.add_layer_tar(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(store_contents(store.root()), (vec![], vec![]));
    }
    // A damaged header checksum.
    let mut bad = full.clone();
    bad[0] ^= 0xff;
    bad[1] ^= 0xff;
    let err = store.add_layer_tar(&mut &bad[..]).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}

#[test]
fn open_clears_stale_staging_and_ids_are_validated() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let store = LayerStore::open(&root).unwrap();
    fs::create_dir_all(root.join("tmp/layer-crashed/sub")).unwrap();
    fs::write(root.join("tmp/layer-crashed/sub/f"), b"x").unwrap();
    fs::write(root.join("tmp/upload-crashed.tar"), b"x").unwrap();
    let id = add(&store, &RawTar::default().file("f", b"x").finish());

    let store = LayerStore::open(&root).unwrap();
    let (layers, staging) = store_contents(&root);
    assert_eq!(layers, [id[7..].to_owned()]);
    assert!(staging.is_empty(), "{staging:?}");
    assert!(store.has_layer(&id));

    assert!(!store.has_layer("sha256:../../etc"));
    assert!(!store.has_layer("md5:abcd"));
    assert!(
        !store
            .layer_dir("sha256:../../etc")
            .starts_with(root.join("sha256"))
    );
    assert!(store.layer_dir("sha256:../../etc").starts_with(&root));
}
