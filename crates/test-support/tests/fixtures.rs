//! The image fixtures are valid images (per skopeo and umoci) with the expected config and
//! contents.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use hutch_test_support::{
    IMAGE_CMD_BUSYBOX, IMAGE_CMD_DEBIAN, IMAGE_ENV, IMAGE_WORKDIR, MYTOOL_OUTPUT, TestDir,
    as_docker_archive, as_oci_archive, busybox_image, debian_image,
};
use serde_json::Value;

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn blob(layout: &Path, digest: &Value) -> Value {
    let digest = digest.as_str().unwrap();
    read_json(
        &layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
}

/// Reads the config of the `latest` image of an OCI layout, by hand.
fn layout_config(layout: &Path) -> (Value, Value) {
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest = blob(layout, &manifests[0]["digest"]);
    let config = blob(layout, &manifest["config"]["digest"]);
    (manifest, config)
}

fn check_config(config: &Value, cmd: &[&str]) {
    assert_eq!(config["config"]["Env"], serde_json::json!(IMAGE_ENV));
    assert_eq!(config["config"]["WorkingDir"], IMAGE_WORKDIR);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(cmd));
    assert!(config["config"].get("User").is_none());
    assert_eq!(config["os"], "linux");
}

fn skopeo_config(reference: &str) -> Value {
    let out = output(Command::new("skopeo").args(["inspect", "--config", reference]));
    serde_json::from_str(&out).unwrap()
}

/// Unpacks the layout's rootfs with umoci (which verifies every digest on the way).
fn unpack(layout: &Path, into: &Path) -> std::path::PathBuf {
    let rootfs = into.join("rootfs");
    output(
        Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&rootfs),
    );
    rootfs
}

/// Runs `script` with `/bin/sh` chrooted into `rootfs`, with exactly the image env.
fn chroot_sh(rootfs: &Path, script: &str) -> String {
    output(
        Command::new("chroot")
            .arg(rootfs)
            .arg("/bin/busybox")
            .args(["env", "-i"])
            .args(IMAGE_ENV)
            .args(["/bin/sh", "-c", script]),
    )
}

#[test]
fn busybox_layout_has_the_case_config_and_two_layers() {
    let layout = busybox_image();
    assert!(layout.ends_with("busybox-v1"), "{}", layout.display());
    let (manifest, config) = layout_config(&layout);
    check_config(&config, &IMAGE_CMD_BUSYBOX);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let inspected = skopeo_config(&format!("oci:{}:latest", layout.display()));
    check_config(&inspected, &IMAGE_CMD_BUSYBOX);
    // A second call is served from the cache.
    assert_eq!(busybox_image(), layout);
}

#[test]
fn busybox_rootfs_contents() {
    let layout = busybox_image();
    let dir = TestDir::new();
    let rootfs = unpack(&layout, &dir);

    for applet in [
        "sh", "echo", "env", "pwd", "id", "cat", "sleep", "ls", "mkdir", "touch", "true", "false",
        "kill", "ps", "head", "tr", "sed", "cut", "sort", "uniq", "wc", "dd", "stat", "hostname",
        "whoami", "test", "grep", "mount", "umount", "nc", "yes", "seq",
    ] {
        let link = rootfs.join("bin").join(applet);
        assert_eq!(
            fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
            Path::new("busybox")
        );
    }
    let meta = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap();
    assert_eq!(meta("tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        (meta("home/user").uid(), meta("home/user").gid()),
        (1000, 1000)
    );
    assert_eq!(meta("root").permissions().mode() & 0o777, 0o700);
    assert!(meta("app").is_dir());
    assert!(meta("etc/myapp/config.json").is_file());
    assert_eq!(
        meta("opt/tool/bin/mytool").permissions().mode() & 0o777,
        0o755
    );

    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0:root:/root:/bin/sh\n"));
    assert!(passwd.contains("user:x:1000:1000:user:/home/user:/bin/sh\n"));

    assert!(
        rustix::process::geteuid().is_root(),
        "running commands in the rootfs needs root (chroot)"
    );
    assert_eq!(chroot_sh(&rootfs, "mytool"), format!("{MYTOOL_OUTPUT}\n"));
    assert_eq!(
        chroot_sh(&rootfs, "command -v mytool"),
        "/opt/tool/bin/mytool\n"
    );
    assert_eq!(chroot_sh(&rootfs, "printenv TRICKY"), "a=b c  d\n");
    assert_eq!(chroot_sh(&rootfs, "printenv EMPTY_VAR"), "\n");
    assert_eq!(
        chroot_sh(
            &rootfs,
            "printenv NOPE; echo $?; printenv OVERRIDE MY_APP_CONFIG"
        ),
        "1\nimage\n/etc/myapp/config.json\n"
    );
    assert_eq!(chroot_sh(&rootfs, "echo ${EMPTY_VAR+set}"), "set\n");
    assert_eq!(chroot_sh(&rootfs, "id -un; id -u user"), "root\n1000\n");
}

#[test]
fn busybox_archives_round_trip_through_skopeo() {
    let layout = busybox_image();
    let oci = as_oci_archive(&layout);
    let docker = as_docker_archive(&layout);
    assert!(oci.is_file() && docker.is_file());
    assert_ne!(oci, docker);
    check_config(
        &skopeo_config(&format!("oci-archive:{}:latest", oci.display())),
        &IMAGE_CMD_BUSYBOX,
    );
    check_config(
        &skopeo_config(&format!("docker-archive:{}", docker.display())),
        &IMAGE_CMD_BUSYBOX,
    );
    // Cached: the same files, not rebuilt.
    let mtime = fs::metadata(&oci).unwrap().modified().unwrap();
    assert_eq!(as_oci_archive(&layout), oci);
    assert_eq!(as_docker_archive(&layout), docker);
    assert_eq!(fs::metadata(&oci).unwrap().modified().unwrap(), mtime);
}

#[test]
fn debian_layout_has_the_case_config() {
    let layout = debian_image();
    assert!(layout.ends_with("debian-v1"), "{}", layout.display());
    let (manifest, config) = layout_config(&layout);
    check_config(&config, &IMAGE_CMD_DEBIAN);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    check_config(
        &skopeo_config(&format!("oci:{}:latest", layout.display())),
        &IMAGE_CMD_DEBIAN,
    );
}

#[test]
fn debian_rootfs_contents() {
    let layout = debian_image();
    let dir = TestDir::new();
    let rootfs = unpack(&layout, &dir);

    let meta =
        |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap_or_else(|e| panic!("/{p}: {e}"));
    assert_eq!(
        (meta("home/user").uid(), meta("home/user").gid()),
        (1000, 1000)
    );
    assert!(meta("home/user/.bashrc").is_file());
    assert_eq!(
        meta("etc/sudoers.d/user").permissions().mode() & 0o7777,
        0o440
    );
    assert_eq!(meta("usr/bin/sudo").permissions().mode() & 0o4000, 0o4000);
    assert_eq!(meta("tmp").permissions().mode() & 0o7777, 0o1777);
    assert!(meta("app").is_dir());
    assert!(meta("etc/myapp/config.json").is_file());
    assert!(meta("usr/bin/python3").file_type().is_symlink());
    assert!(!rootfs.join("etc/hostname").exists());
    assert!(fs::read_dir(rootfs.join("dev")).unwrap().next().is_none());

    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("user:x:1000:1000::/home/user:/bin/bash\n"),
        "{passwd}"
    );
    let sudoers = fs::read_to_string(rootfs.join("etc/sudoers.d/user")).unwrap();
    assert_eq!(sudoers, "user ALL=(ALL) NOPASSWD:ALL\n");

    assert!(
        rustix::process::geteuid().is_root(),
        "running commands in the rootfs needs root (chroot)"
    );
    let run = |script: &str| {
        output(
            Command::new("chroot")
                .arg(&rootfs)
                .args(["/usr/bin/env", "-i"])
                .args(IMAGE_ENV)
                .args(["/bin/bash", "-c", script]),
        )
    };
    assert_eq!(run("mytool"), format!("{MYTOOL_OUTPUT}\n"));
    assert_eq!(run("printenv TRICKY"), "a=b c  d\n");
    assert_eq!(run("python3 -c 'print(6 * 7)'"), "42\n");
    assert_eq!(run("id -u user; id -g user"), "1000\n1000\n");
}

#[test]
fn debian_archives_round_trip_through_skopeo() {
    let layout = debian_image();
    check_config(
        &skopeo_config(&format!(
            "oci-archive:{}:latest",
            as_oci_archive(&layout).display()
        )),
        &IMAGE_CMD_DEBIAN,
    );
    check_config(
        &skopeo_config(&format!(
            "docker-archive:{}",
            as_docker_archive(&layout).display()
        )),
        &IMAGE_CMD_DEBIAN,
    );
}
