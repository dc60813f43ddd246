//! Pulls real images from a real registry (Debian's `docker-registry`, images pushed with
//! skopeo) into a real layer store.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hutch_image::{
    ImageError, ImportedImage, LayerStore, PullOptions, PullProgress, RegistryAuth, pull,
};
use hutch_test_support::{
    IMAGE_ENV, IMAGE_TAG, REGISTRY_PASSWORD, REGISTRY_USERNAME, Registry, RegistryAuthMode,
    TestDir, busybox_image, free_port, multi_arch_layout,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

async fn pull_events(
    store: &LayerStore,
    reference: &str,
    opts: &PullOptions,
) -> (Result<ImportedImage, ImageError>, Vec<PullProgress>) {
    let mut events = Vec::new();
    let result = pull(store, reference, opts, &mut |p| events.push(p)).await;
    (result, events)
}

async fn pull_ok(
    store: &LayerStore,
    reference: &str,
    opts: &PullOptions,
) -> (ImportedImage, Vec<PullProgress>) {
    let (result, events) = pull_events(store, reference, opts).await;
    let image = result.unwrap_or_else(|e| panic!("pull of {reference} failed: {e}"));
    (image, events)
}

fn basic(password: &str) -> PullOptions {
    PullOptions {
        auth: RegistryAuth::Basic {
            username: REGISTRY_USERNAME.into(),
            password: password.into(),
        },
        ..PullOptions::default()
    }
}

/// Options that never read the host's Docker config.
fn anonymous(dir: &Path) -> PullOptions {
    PullOptions {
        docker_config: Some(dir.join("no-docker-config.json")),
        ..PullOptions::default()
    }
}

fn new_store(dir: &TestDir) -> LayerStore {
    LayerStore::open(&dir.join("store")).unwrap()
}

/// The busybox fixture as a local import would record it.
fn imported_busybox() -> ImportedImage {
    let dir = TestDir::new();
    new_store(&dir)
        .import(&busybox_image(), Some(IMAGE_TAG), &mut |_| {})
        .unwrap()
}

/// Per layer index: (reused, complete) of its last event, and whether any event of it had
/// `done < total` (bytes were still to come, i.e. it was downloaded).
fn layer_summary(events: &[PullProgress]) -> Vec<(bool, bool, bool)> {
    let mut out: Vec<(bool, bool, bool)> = Vec::new();
    for e in events {
        if let PullProgress::Layer {
            index,
            total,
            done,
            reused,
            complete,
            ..
        } = e
        {
            if out.len() <= *index {
                out.resize(index + 1, (false, false, false));
            }
            let downloaded = out[*index].2 || done < total;
            out[*index] = (*reused, *complete, downloaded);
            assert!(done <= total, "{e:?}");
        }
    }
    out
}

fn assert_no_staging_left(store: &LayerStore) {
    let left: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

/// The manifest and config of the image tagged IMAGE_TAG in an OCI layout.
fn read_layout(layout: &Path) -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: Value =
        serde_json::from_slice(&fs::read(blob(layout, &digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&fs::read(blob(layout, config_digest)).unwrap()).unwrap();
    (manifest, config)
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A copy of the OCI layout `src` (blobs hard-linked) whose config `edit` changes.
fn edited_layout(src: &Path, dest: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    fs::create_dir_all(dest.join("blobs/sha256")).unwrap();
    for entry in fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        fs::hard_link(
            entry.path(),
            dest.join("blobs/sha256").join(entry.file_name()),
        )
        .or_else(|_| {
            fs::copy(
                entry.path(),
                dest.join("blobs/sha256").join(entry.file_name()),
            )
            .map(drop)
        })
        .unwrap();
    }
    fs::copy(src.join("oci-layout"), dest.join("oci-layout")).unwrap();
    let (mut manifest, mut config) = read_layout(src);
    edit(&mut config);
    let put = |bytes: Vec<u8>| {
        let digest = sha256(&bytes);
        let len = bytes.len();
        fs::write(blob(dest, &digest), bytes).unwrap();
        (digest, len)
    };
    let (config_digest, config_size) = put(config.to_string().into_bytes());
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config_size);
    let (manifest_digest, manifest_size) = put(manifest.to_string().into_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE_TAG},
        }],
    });
    fs::write(dest.join("index.json"), index.to_string()).unwrap();
    dest.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_gives_what_a_local_import_gives() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&busybox_image(), "hutch/busybox:1");
    let dir = TestDir::new();
    let store = new_store(&dir);

    let reference = registry.reference("hutch/busybox:1");
    let (image, events) = pull_ok(&store, &reference, &anonymous(&dir)).await;
    let local = imported_busybox();
    assert_eq!(image.layers, local.layers);
    assert_eq!(image.config_digest, local.config_digest);
    assert_eq!(image.manifest_digest, local.manifest_digest);
    assert_eq!(image.config, local.config);
    assert_eq!(image.config.env, IMAGE_ENV.map(String::from));
    for layer in &image.layers {
        assert!(store.has_layer(layer), "{layer} not stored");
    }
    let root = store.layer_dir(&image.layers[0]);
    assert!(root.join("bin/busybox").is_file());
    assert!(
        store
            .layer_dir(&image.layers[1])
            .join("opt/tool/bin/mytool")
            .is_file()
    );

    assert!(
        matches!(&events[0], PullProgress::Resolved { layers: 2, manifest_digest, .. } if *manifest_digest == image.manifest_digest),
        "{events:?}"
    );
    // Both layers downloaded (first event done = 0), none reused, both completed.
    assert_eq!(
        layer_summary(&events),
        [(false, true, true), (false, true, true)],
        "{events:?}"
    );
    // The blob index knows what each blob unpacks to.
    let (manifest, _) = read_layout(&busybox_image());
    for (layer, diff_id) in manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let recorded =
            fs::read_to_string(store.root().join("blobs-index/sha256").join(hex)).unwrap();
        assert_eq!(recorded.trim(), diff_id);
    }
    assert_no_staging_left(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_already_stored_are_not_downloaded_again() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&busybox_image(), "hutch/busybox:1");
    registry.push(&busybox_image(), "other/name:2");
    let dir = TestDir::new();
    let store = new_store(&dir);
    let opts = anonymous(&dir);

    let (first, _) = pull_ok(&store, &registry.reference("hutch/busybox:1"), &opts).await;
    let (second, events) = pull_ok(&store, &registry.reference("other/name:2"), &opts).await;
    assert_eq!(first, second);
    assert_eq!(
        layer_summary(&events),
        [(true, true, false), (true, true, false)],
        "{events:?}"
    );

    // Layers imported locally count too.
    let dir2 = TestDir::new();
    let store2 = new_store(&dir2);
    store2.import(&busybox_image(), None, &mut |_| {}).unwrap();
    let (_, events) = pull_ok(&store2, &registry.reference("hutch/busybox:1"), &opts).await;
    assert_eq!(
        layer_summary(&events),
        [(true, true, false), (true, true, false)],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong_password_and_docker_config() {
    let registry = Registry::start(RegistryAuthMode::Basic);
    registry.push(&busybox_image(), "private/busybox:1");
    let reference = registry.reference("private/busybox:1");
    let dir = TestDir::new();
    let store = new_store(&dir);

    let (image, _) = pull_ok(&store, &reference, &basic(REGISTRY_PASSWORD)).await;
    assert_eq!(image.layers, imported_busybox().layers);

    let dir = TestDir::new();
    let store = new_store(&dir);
    let (result, _) = pull_events(&store, &reference, &basic("wrong-password")).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&registry.host()) && msg.contains("refused access"),
        "{msg}"
    );
    assert!(msg.contains("check the username and password"), "{msg}");
    assert!(!msg.contains("wrong-password"), "{msg}");

    let (result, _) = pull_events(&store, &reference, &anonymous(&dir)).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("refused access") && msg.contains("--username"),
        "{msg}"
    );
    assert!(
        fs::read_dir(store.root().join("sha256"))
            .unwrap()
            .next()
            .is_none()
    );

    // Credentials from a Docker config file.
    let config = dir.join("docker-config.json");
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{REGISTRY_USERNAME}:{REGISTRY_PASSWORD}"));
    fs::write(
        &config,
        json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let opts = PullOptions {
        docker_config: Some(config),
        ..PullOptions::default()
    };
    let (image, _) = pull_ok(&store, &reference, &opts).await;
    assert_eq!(image.layers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_registry() {
    let registry = Registry::start(RegistryAuthMode::Token);
    registry.push(&busybox_image(), "private/busybox:1");
    let reference = registry.reference("private/busybox:1");
    let dir = TestDir::new();
    let store = new_store(&dir);

    let (image, _) = pull_ok(&store, &reference, &basic(REGISTRY_PASSWORD)).await;
    assert_eq!(image.layers, imported_busybox().layers);

    let dir = TestDir::new();
    let store = new_store(&dir);
    for opts in [basic("wrong-password"), anonymous(&dir)] {
        let (result, _) = pull_events(&store, &reference, &opts).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err:?}");
        assert!(err.to_string().contains(&registry.host()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tag_repository_and_registry() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    registry.push(&busybox_image(), "hutch/busybox:1");
    let dir = TestDir::new();
    let store = new_store(&dir);
    let opts = anonymous(&dir);

    for name in ["hutch/busybox:nope", "hutch/missing:1"] {
        let reference = registry.reference(name);
        let (result, events) = pull_events(&store, &reference, &opts).await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, ImageError::RegistryNotFound { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "image '{reference}' not found in registry '{}'; check its name and tag",
                registry.host()
            )
        );
        assert!(events.is_empty(), "{events:?}");
    }

    // Nothing listens on this port.
    let host = format!("127.0.0.1:{}", free_port());
    let (result, _) = pull_events(&store, &format!("{host}/x:1"), &opts).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&host) && msg.contains("onnection refused"),
        "{msg}"
    );

    let (result, _) = pull_events(&store, "Not A Reference", &opts).await;
    assert!(
        matches!(result, Err(ImageError::InvalidReference { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_is_refused_and_not_stored() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let layout = busybox_image();
    registry.push(&layout, "hutch/busybox:1");
    let (manifest, config) = read_layout(&layout);
    let layer_digest = manifest["layers"][1]["digest"].as_str().unwrap().to_owned();
    let diff_id = config["rootfs"]["diff_ids"][1].as_str().unwrap().to_owned();

    // Damage the registry's copy of the second layer, keeping its size.
    let path = registry.blob_path(&layer_digest);
    let original = fs::read(&path).unwrap();
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    for b in &mut damaged[mid..mid + 8] {
        *b ^= 0x5a;
    }
    fs::write(&path, &damaged).unwrap();

    let dir = TestDir::new();
    let store = new_store(&dir);
    let opts = anonymous(&dir);
    let reference = registry.reference("hutch/busybox:1");
    let (result, _) = pull_events(&store, &reference, &opts).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("digest"), "{msg}");
    assert!(msg.contains(&layer_digest[..19]), "{msg}");
    assert!(!store.has_layer(&diff_id), "the damaged layer was stored");
    assert!(
        !store
            .root()
            .join("blobs-index/sha256")
            .join(layer_digest.strip_prefix("sha256:").unwrap())
            .exists()
    );
    assert_no_staging_left(&store);

    // Repaired, the pull succeeds; the first layer, verified before, is not fetched again.
    fs::write(&path, &original).unwrap();
    let (image, events) = pull_ok(&store, &reference, &opts).await;
    assert!(store.has_layer(&diff_id));
    assert_eq!(image.layers[1], diff_id);
    assert_eq!(
        layer_summary(&events),
        [(true, true, false), (false, true, true)],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_does_not_match_the_config_diff_id_is_refused() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let work = TestDir::new();
    let wrong = sha256(b"not the layer");
    let layout = edited_layout(&busybox_image(), &work.join("layout"), |config| {
        config["rootfs"]["diff_ids"][1] = json!(wrong);
    });
    registry.push(&layout, "hutch/liar:1");

    let dir = TestDir::new();
    let store = new_store(&dir);
    let (result, _) = pull_events(
        &store,
        &registry.reference("hutch/liar:1"),
        &anonymous(&dir),
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("diff id") && msg.contains(&wrong), "{msg}");
    assert!(!store.has_layer(&wrong));
    let real = imported_busybox().layers[1].clone();
    assert!(!store.has_layer(&real), "the refused layer was stored");
    assert_no_staging_left(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_list_gives_its_linux_amd64_image() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let work = TestDir::new();
    let layout = multi_arch_layout(
        &work.join("multi"),
        Some(&busybox_image()),
        &["linux/arm64", "linux/ppc64le"],
    );
    registry.push(&layout, "hutch/multi:1");
    let dir = TestDir::new();
    let store = new_store(&dir);
    let (image, _) = pull_ok(
        &store,
        &registry.reference("hutch/multi:1"),
        &anonymous(&dir),
    )
    .await;
    let local = imported_busybox();
    assert_eq!(image.layers, local.layers);
    assert_eq!(image.manifest_digest, local.manifest_digest);
    assert_eq!(image.config.env, IMAGE_ENV.map(String::from));

    let other = multi_arch_layout(&work.join("other"), None, &["linux/arm64", "linux/s390x"]);
    registry.push(&other, "hutch/other:1");
    let (result, _) = pull_events(
        &store,
        &registry.reference("hutch/other:1"),
        &anonymous(&dir),
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryNoPlatform { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64, linux/s390x"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_that_is_not_an_image_is_refused() {
    let registry = Registry::start(RegistryAuthMode::Anonymous);
    let work = TestDir::new();
    let layout = work.join("artifact");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        fs::write(blob(&layout, &digest), bytes).unwrap();
        (digest, bytes.len())
    };
    let (cd, cs) = put(b"{}");
    let (ld, ls) = put(b"some data");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.example.thing.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.example.thing.data", "digest": ld, "size": ls}],
    })
    .to_string();
    let (md, ms) = put(manifest.as_bytes());
    fs::write(
        layout.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE_TAG}}]})
        .to_string(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    registry.push(&layout, "hutch/artifact:1");

    let dir = TestDir::new();
    let store = new_store(&dir);
    let (result, _) = pull_events(
        &store,
        &registry.reference("hutch/artifact:1"),
        &anonymous(&dir),
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not a container image")
            && msg.contains("application/vnd.example.thing.config.v1+json"),
        "{msg}"
    );
}
