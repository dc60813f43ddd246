//! Imports real images, built with umoci and skopeo (or by hand where noted), into a real
//! layer store, and checks what lands on disk.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use hutch_image::{ImageConfig, ImageError, ImportProgress, ImportedImage, LayerStore};

fn import(
    store: &LayerStore,
    source: &Path,
    reference: Option<&str>,
) -> (ImportedImage, Vec<ImportProgress>) {
    let mut events = Vec::new();
    let image = store
        .import(source, reference, &mut |p| events.push(p))
        .unwrap_or_else(|e| panic!("import of {} failed: {e}", source.display()));
    (image, events)
}

fn expected_config() -> ImageConfig {
    ImageConfig {
        env: IMAGE_ENV.iter().map(|s| s.to_string()).collect(),
        working_dir: Some("/data".into()),
        user: Some("1000:1000".into()),
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
    }
}

/// The `reused` flags of the LayerDone events, by index.
fn reused_flags(events: &[ImportProgress]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            ImportProgress::LayerDone { reused, .. } => Some(*reused),
            _ => None,
        })
        .collect()
}

/// Checks the three layers of the umoci test image as extracted in the store.
fn check_umoci_layers(store: &LayerStore, image: &ImportedImage) {
    assert_eq!(image.layers.len(), 3);
    for id in &image.layers {
        assert!(store.has_layer(id), "{id} not stored");
    }

    // Base layer: files, symlinks, hard links, modes, owners, mtimes, xattrs.
    let base = store.layer_dir(&image.layers[0]);
    let busybox = fs::symlink_metadata(base.join("bin/busybox")).unwrap();
    assert!(busybox.is_file());
    assert_eq!(busybox.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(busybox.mode() & 0o7777, 0o755);
    assert_eq!(busybox.mtime(), BASE_MTIME);
    let hard = fs::symlink_metadata(base.join("bin/busybox-hard")).unwrap();
    assert_eq!(hard.ino(), busybox.ino(), "hard link not preserved");
    assert_eq!(busybox.nlink(), 2);
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(
        fs::symlink_metadata(base.join("bin/ls"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let suid = fs::symlink_metadata(base.join("bin/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid bit lost");
    assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
    let tmp = fs::symlink_metadata(base.join("tmp")).unwrap();
    assert_eq!(tmp.mode() & 0o7777, 0o1777, "sticky bit lost");
    assert_eq!(tmp.mtime(), BASE_MTIME, "directory mtime not applied last");
    assert_eq!(
        xattr(&base.join("etc/conf/a"), "user.hutch").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(fs::read(base.join("data/gone")).unwrap(), b"bye\n");
    let root_mode = fs::metadata(&base).unwrap().mode() & 0o7777;
    assert_eq!(root_mode, 0o755);

    // Second layer: /etc/conf replaced -> opaque directory, marker not written.
    let l2 = store.layer_dir(&image.layers[1]);
    assert_eq!(
        xattr(&l2.join("etc/conf"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(l2.join("etc/conf/b")).unwrap(), b"new conf\n");
    assert!(!l2.join("etc/conf/.wh..wh..opq").exists());
    assert!(!l2.join("etc/conf/a").exists());

    // Third layer: /data/gone deleted -> character device 0:0.
    let l3 = store.layer_dir(&image.layers[2]);
    let gone = fs::symlink_metadata(l3.join("data/gone")).unwrap();
    assert!(
        gone.file_type().is_char_device(),
        "whiteout is not a char device"
    );
    assert_eq!(gone.rdev(), 0);
    assert!(!l3.join("data/.wh.gone").exists());
}

#[test]
fn imports_an_oci_layout_built_by_umoci() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let store = LayerStore::open(&work.path().join("store")).unwrap();

    let (image, events) = import(&store, &layout, None);

    assert_eq!(image.config, expected_config());
    let (manifest_digest, manifest) = first_manifest(&layout);
    assert_eq!(image.manifest_digest, manifest_digest);
    assert_eq!(
        image.config_digest,
        manifest["config"]["digest"].as_str().unwrap()
    );
    let config = read_json(&blob_path(&layout, &image.config_digest));
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(image.layers, diff_ids);
    check_umoci_layers(&store, &image);

    // Progress: manifest, then start/done per layer, with byte counts for the big base layer.
    assert_eq!(events[0], ImportProgress::Manifest { layers: 3 });
    let layer0 = &manifest["layers"][0];
    assert!(events.contains(&ImportProgress::LayerStart {
        index: 0,
        digest: layer0["digest"].as_str().unwrap().to_owned(),
        size: layer0["size"].as_u64().unwrap(),
    }));
    assert!(events.contains(&ImportProgress::LayerBytes {
        index: 0,
        done: layer0["size"].as_u64().unwrap(),
    }));
    assert_eq!(reused_flags(&events), [false, false, false]);

    // Importing again reuses everything.
    let (again, events) = import(&store, &layout, Some("latest"));
    assert_eq!(again, image);
    assert_eq!(reused_flags(&events), [true, true, true]);
    assert_eq!(store_contents(store.root()).0.len(), 3);
    assert!(
        store_contents(store.root()).1.is_empty(),
        "staging left behind"
    );
}

#[test]
fn imports_oci_and_docker_archives_from_skopeo_sharing_layers() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let oci_archive = work.path().join("image.oci.tar");
    let docker_archive = work.path().join("image.docker.tar");
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("oci-archive:{}", oci_archive.display()),
    );
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("docker-archive:{}:busybox:test", docker_archive.display()),
    );

    // Docker archive into a fresh store.
    let docker_store = LayerStore::open(&work.path().join("docker-store")).unwrap();
    let (from_docker, events) = import(&docker_store, &docker_archive, None);
    assert_eq!(from_docker.config, expected_config());
    assert_eq!(reused_flags(&events), [false, false, false]);
    check_umoci_layers(&docker_store, &from_docker);
    // RepoTags are matched with Docker Hub shorthands.
    let (by_tag, _) = import(&docker_store, &docker_archive, Some("busybox:test"));
    assert_eq!(by_tag.layers, from_docker.layers);
    let err = docker_store
        .import(&docker_archive, Some("busybox:nope"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::ReferenceNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("docker.io/library/busybox:test"),
        "{err}"
    );

    // OCI archive into another store, then the Docker archive into the same one: the layers
    // (gzip in one, uncompressed in the other) are the same diff ids, stored once.
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let (from_oci, events) = import(&store, &oci_archive, None);
    assert_eq!(reused_flags(&events), [false, false, false]);
    assert_eq!(from_oci.config, expected_config());
    assert_eq!(from_oci.layers, from_docker.layers);
    assert_eq!(from_oci.config_digest, from_docker.config_digest);
    check_umoci_layers(&store, &from_oci);
    let (_, events) = import(&store, &docker_archive, None);
    assert_eq!(reused_flags(&events), [true, true, true]);
    let (layers, staging) = store_contents(store.root());
    assert_eq!(layers.len(), 3);
    assert!(staging.is_empty());
}

#[test]
fn imports_zstd_layers() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let zlayout = work.path().join("zstd-layout");
    skopeo_copy(
        &["--dest-compress-format", "zstd"],
        &oci_ref(&layout, "latest"),
        &oci_ref(&zlayout, "latest"),
    );
    let (_, manifest) = first_manifest(&zlayout);
    let first_layer = blob_path(&zlayout, manifest["layers"][0]["digest"].as_str().unwrap());
    assert_eq!(
        &fs::read(first_layer).unwrap()[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "not zstd"
    );

    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let (image, _) = import(&store, &zlayout, None);
    assert_eq!(image.config, expected_config());
    check_umoci_layers(&store, &image);
    // Same content as the gzip original: same diff ids, nothing extracted twice.
    let (gz, events) = import(&store, &layout, None);
    assert_eq!(gz.layers, image.layers);
    assert_eq!(reused_flags(&events), [true, true, true]);
}

#[test]
fn imports_tar_streams_plain_and_compressed() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let oci_archive = work.path().join("image.oci.tar");
    let docker_archive = work.path().join("image.docker.tar");
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("oci-archive:{}", oci_archive.display()),
    );
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("docker-archive:{}:busybox:test", docker_archive.display()),
    );

    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let mut file = fs::File::open(&oci_archive).unwrap();
    let image = store
        .import_tar_stream(&mut file, None, &mut |_| {})
        .unwrap();
    assert_eq!(image.config, expected_config());
    check_umoci_layers(&store, &image);
    assert!(
        store_contents(store.root()).1.is_empty(),
        "staging left behind"
    );

    // A gzip-compressed docker archive (as `docker save | gzip`), into a fresh store.
    let store2 = LayerStore::open(&work.path().join("store2")).unwrap();
    let gz = gzip(&fs::read(&docker_archive).unwrap());
    let image2 = store2
        .import_tar_stream(&mut &gz[..], Some("busybox:test"), &mut |_| {})
        .unwrap();
    assert_eq!(image2.layers, image.layers);
    check_umoci_layers(&store2, &image2);
    assert!(store_contents(store2.root()).1.is_empty());

    // A layout tarred with a top-level directory, as a file and zstd-compressed.
    let tarred = work.path().join("layout.tar");
    run(std::process::Command::new("tar")
        .arg("-C")
        .arg(work.path())
        .arg("-cf")
        .arg(&tarred)
        .arg("layout"));
    let store3 = LayerStore::open(&work.path().join("store3")).unwrap();
    let (image3, _) = import(&store3, &tarred, None);
    assert_eq!(image3, image);
    let zst = work.path().join("layout.tar.zst");
    fs::write(&zst, zstd(&fs::read(&tarred).unwrap())).unwrap();
    let (image4, events) = import(&store3, &zst, None);
    assert_eq!(image4, image);
    assert_eq!(reused_flags(&events), [true, true, true]);
    assert!(store_contents(store3.root()).1.is_empty());
}

/// New-style `docker save` (Docker 25+) writes an OCI layout plus a manifest.json whose paths
/// point into blobs/. Built by hand from the umoci image's blobs.
#[test]
fn imports_new_style_docker_save_and_selects_by_repo_tag() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let saved = work.path().join("saved");
    copy_tree(&layout, &saved);
    let (manifest_digest, manifest) = first_manifest(&layout);
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "blobs/sha256/{}",
                l["digest"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("sha256:")
                    .unwrap()
            )
        })
        .collect();
    let size = fs::metadata(blob_path(&layout, &manifest_digest))
        .unwrap()
        .len();
    write_index(
        &saved,
        vec![serde_json::json!({
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": size,
            "annotations": {
                "io.containerd.image.name": "docker.io/library/app:1.0",
                "org.opencontainers.image.ref.name": "1.0",
            },
        })],
    );
    fs::write(
        saved.join("manifest.json"),
        serde_json::json!([{
            "Config": format!("blobs/sha256/{}", config_digest.strip_prefix("sha256:").unwrap()),
            "RepoTags": ["app:1.0", "app:stable"],
            "Layers": layers,
        }])
        .to_string(),
    )
    .unwrap();

    let store = LayerStore::open(&work.path().join("store")).unwrap();
    // "app:stable" is only in manifest.json's RepoTags.
    let (image, _) = import(&store, &saved, Some("app:stable"));
    assert_eq!(image.manifest_digest, manifest_digest);
    assert_eq!(image.config, expected_config());
    check_umoci_layers(&store, &image);
    // "app:1.0" matches the containerd annotation.
    let (image, _) = import(&store, &saved, Some("app:1.0"));
    assert_eq!(image.manifest_digest, manifest_digest);

    // As an archive, too.
    let tarred = work.path().join("saved.tar");
    run(std::process::Command::new("tar")
        .arg("-C")
        .arg(&saved)
        .arg("-cf")
        .arg(&tarred)
        .arg("."));
    let (image2, _) = import(&store, &tarred, Some("app:stable"));
    assert_eq!(image2, image);
}

#[test]
fn a_layer_shared_by_two_images_is_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    umoci_add_file(&layout, work.path(), "one", "one");
    umoci_add_file(&layout, work.path(), "two", "two");

    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let (one, events) = import(&store, &layout, Some("one"));
    assert_eq!(reused_flags(&events), [false, false, false, false]);
    let (two, events) = import(&store, &layout, Some("two"));
    assert_eq!(reused_flags(&events), [true, true, true, false]);
    assert_eq!(one.layers[..3], two.layers[..3]);
    assert_ne!(one.layers[3], two.layers[3]);
    assert_eq!(store_contents(store.root()).0.len(), 5);
    assert_eq!(
        fs::read(store.layer_dir(&two.layers[3]).join("extra/two")).unwrap(),
        b"two"
    );

    // An unknown name is refused, listing the names there are.
    let err = store
        .import(&layout, Some("three"), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("latest, one, two"), "{err}");

    // Garbage collection keeps what is referenced.
    let keep: HashSet<String> = one.layers.iter().cloned().collect();
    assert_eq!(store.remove_unreferenced(&keep).unwrap(), 1);
    assert!(!store.has_layer(&two.layers[3]));
    assert!(one.layers.iter().all(|l| store.has_layer(l)));
    assert_eq!(store.remove_unreferenced(&HashSet::new()).unwrap(), 4);
    let (layers, staging) = store_contents(store.root());
    assert!(layers.is_empty() && staging.is_empty());
}

#[test]
fn a_corrupt_layer_blob_is_reported_and_nothing_is_kept() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let (_, manifest) = first_manifest(&layout);

    for index in [0usize, 2] {
        let damaged = work.path().join(format!("damaged-{index}"));
        copy_tree(&layout, &damaged);
        let digest = manifest["layers"][index]["digest"].as_str().unwrap();
        let blob = blob_path(&damaged, digest);
        let mut bytes = fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&blob, &bytes).unwrap();

        let store = LayerStore::open(&work.path().join(format!("store-{index}"))).unwrap();
        let err = store.import(&damaged, None, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ImageError::Corrupt { .. }), "{msg}");
        let short = &digest[..19];
        assert!(
            msg.contains(short),
            "message does not name the layer: {msg}"
        );
        assert!(msg.contains("digest mismatch"), "{msg}");
        assert!(msg.contains(&damaged.display().to_string()), "{msg}");
        let (layers, staging) = store_contents(store.root());
        assert!(layers.is_empty(), "half-imported layers kept: {layers:?}");
        assert!(staging.is_empty(), "staging left behind: {staging:?}");
    }

    // A damaged config is caught before any layer is read.
    let damaged = work.path().join("damaged-config");
    copy_tree(&layout, &damaged);
    let config = blob_path(&damaged, manifest["config"]["digest"].as_str().unwrap());
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("EMPTY_VAR", "EMPTY_VAX");
    fs::write(&config, text).unwrap();
    let store = LayerStore::open(&work.path().join("store-config")).unwrap();
    let err = store.import(&damaged, None, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("image config"), "{err}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}

#[test]
fn a_truncated_archive_is_reported_and_nothing_is_kept() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let oci_archive = work.path().join("image.oci.tar");
    let docker_archive = work.path().join("image.docker.tar");
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("oci-archive:{}", oci_archive.display()),
    );
    skopeo_copy(
        &[],
        &oci_ref(&layout, "latest"),
        &format!("docker-archive:{}", docker_archive.display()),
    );

    for archive in [&oci_archive, &docker_archive] {
        let bytes = fs::read(archive).unwrap();
        for keep in [bytes.len() * 7 / 10, bytes.len() - 700, 1000] {
            let cut = work.path().join("cut.tar");
            fs::write(&cut, &bytes[..keep]).unwrap();
            let store = LayerStore::open(&work.path().join("store")).unwrap();
            let err = store.import(&cut, None, &mut |_| {}).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("truncated") || msg.contains("cut short"),
                "{} cut to {keep} bytes: unclear error: {msg}",
                archive.display()
            );
            assert_eq!(store_contents(store.root()), (vec![], vec![]), "{msg}");

            // The same through the stream interface.
            let err = store
                .import_tar_stream(&mut &bytes[..keep], None, &mut |_| {})
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("truncated") || msg.contains("cut short"),
                "{msg}"
            );
            assert_eq!(store_contents(store.root()), (vec![], vec![]), "{msg}");
            fs::remove_dir_all(work.path().join("store")).unwrap();
        }
    }
}

#[test]
fn a_layer_not_matching_its_diff_id_is_rejected() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (good, good_id) = simple_layer(&[("a", b"a")]);
    let (blob, _) = simple_layer(&[("b", b"b")]);
    // The second layer's blob is intact (its digest is right) but the config lies about it.
    let wrong_id = sha256(b"something else");
    let desc = put_image(
        &layout,
        config_json(&[], "amd64"),
        &[(good, good_id), (blob, wrong_id.clone())],
    );
    write_index(&layout, vec![desc]);
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let err = store.import(&layout, None, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("diff id"), "{err}");
    assert!(err.to_string().contains(&wrong_id), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}

#[test]
fn picks_the_host_platform_from_a_multi_platform_index() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (arm, arm_id) = simple_layer(&[("arch", b"arm64")]);
    let (amd, amd_id) = simple_layer(&[("arch", b"amd64")]);
    let mut arm_desc = put_image(
        &layout,
        config_json(&["ARCH=arm64"], "arm64"),
        &[(arm, arm_id)],
    );
    arm_desc["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let mut amd_desc = put_image(
        &layout,
        config_json(&["ARCH=amd64"], "amd64"),
        &[(amd, amd_id.clone())],
    );
    amd_desc["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    // An attestation manifest, as buildx adds.
    let (att, att_id) = simple_layer(&[("att", b"x")]);
    let mut att_desc = put_image(&layout, config_json(&[], "unknown"), &[(att, att_id)]);
    att_desc["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    // Nested: index.json -> image index -> the platform manifests.
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [arm_desc, amd_desc.clone(), att_desc],
    });
    let mut nested_desc = put_blob(&layout, MT_INDEX, nested.to_string().as_bytes());
    nested_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "multi"});
    write_index(&layout, vec![nested_desc]);

    if std::env::consts::ARCH != "x86_64" {
        return; // the expectations below are for linux/amd64 hosts
    }
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let (image, _) = import(&store, &layout, None);
    assert_eq!(image.manifest_digest, amd_desc["digest"].as_str().unwrap());
    assert_eq!(image.config.env, ["ARCH=amd64"]);
    assert_eq!(image.layers, std::slice::from_ref(&amd_id));
    assert_eq!(
        fs::read(store.layer_dir(&amd_id).join("arch")).unwrap(),
        b"amd64"
    );
    let (by_name, _) = import(&store, &layout, Some("multi"));
    assert_eq!(by_name, image);
    assert_eq!(
        store_contents(store.root()).0.len(),
        1,
        "other platforms' layers stored"
    );
}

#[test]
fn things_that_are_not_images_are_rejected_clearly() {
    let work = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&work.path().join("store")).unwrap();

    let dir = work.path().join("not-a-layout");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("README"), "hello").unwrap();
    let err = store.import(&dir, None, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("not an OCI layout, OCI archive or Docker archive"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );

    let file = work.path().join("random.bin");
    fs::write(&file, vec![7u8; 4096]).unwrap();
    let err = store.import(&file, None, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");

    let err = store
        .import_tar_stream(&mut &b"definitely not a tar"[..], None, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");

    // A tar of something else entirely.
    let (_, plain_tar_id) = simple_layer(&[("hello.txt", b"hi")]);
    let mut tar = RawTar::default();
    tar.file("hello.txt", b"hi");
    let tar = tar.finish();
    assert_eq!(sha256(&tar).len(), plain_tar_id.len());
    let err = store
        .import_tar_stream(&mut &tar[..], None, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");

    let missing = work.path().join("missing");
    let err = store.import(&missing, None, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(store_contents(store.root()), (vec![], vec![]));
}

#[test]
fn concurrent_imports_of_the_same_layers_do_not_collide() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_image(work.path());
    let store = LayerStore::open(&work.path().join("store")).unwrap();
    let results: Vec<ImportedImage> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| store.import(&layout, None, &mut |_| {}).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    check_umoci_layers(&store, &results[0]);
    let (layers, staging) = store_contents(store.root());
    assert_eq!(layers.len(), 3);
    assert!(staging.is_empty(), "{staging:?}");
}
