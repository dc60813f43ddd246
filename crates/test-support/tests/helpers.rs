//! TestDir, free_port and the cleanup helpers.

use std::fs;
use std::path::Path;
use std::process::Command;

use hutch_test_support::{TestDir, free_port, mounts_under, runc_force_clean, target_dir};

fn mount(args: &[&str]) {
    let status = Command::new("mount")
        .args(args)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount {args:?} failed");
}

#[test]
fn test_dir_is_short_unique_and_removed() {
    let a = TestDir::new();
    let b = TestDir::new();
    assert_ne!(a.path(), b.path());
    assert!(a.path().is_dir());
    assert!(a.path().starts_with(target_dir().join("ht")));
    let name = a.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 8);
    assert!(a.as_os_str().len() <= 64, "{}", a.display());
    fs::create_dir_all(a.join("x/y")).unwrap();
    fs::write(a.join("x/y/f"), "data").unwrap();
    let path = a.path().to_path_buf();
    drop(a);
    assert!(!path.exists(), "{} was not removed", path.display());
}

#[test]
fn test_dir_keep_disarms_the_guard() {
    let dir = TestDir::new();
    let path = dir.keep();
    assert!(path.is_dir());
    fs::remove_dir(&path).unwrap();
}

#[test]
fn test_dir_detaches_mounts_before_removing() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root to mount"
    );
    // A directory outside the TestDir, bind-mounted inside it: removal must not reach it.
    let outside = TestDir::new();
    fs::write(outside.join("precious"), "keep me").unwrap();

    let dir = TestDir::new();
    let tmpfs = dir.join("tmpfs");
    let nested = dir.join("tmpfs/nested");
    let bind = dir.join("bind");
    fs::create_dir(&tmpfs).unwrap();
    fs::create_dir(&bind).unwrap();
    mount(&["-t", "tmpfs", "tmpfs", tmpfs.to_str().unwrap()]);
    fs::create_dir(&nested).unwrap();
    mount(&["-t", "tmpfs", "tmpfs", nested.to_str().unwrap()]);
    mount(&["--bind", outside.to_str().unwrap(), bind.to_str().unwrap()]);
    fs::write(nested.join("f"), "x").unwrap();
    assert_eq!(mounts_under(&dir).len(), 3, "{:?}", mounts_under(&dir));

    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(mounts_under(&path).is_empty());
    assert!(!path.exists(), "{} was not removed", path.display());
    assert_eq!(
        fs::read_to_string(outside.join("precious")).unwrap(),
        "keep me"
    );
}

#[test]
fn runc_force_clean_accepts_a_missing_or_empty_root() {
    let dir = TestDir::new();
    assert!(runc_force_clean(&dir.join("runc")).unwrap().is_empty());
    fs::create_dir(dir.join("runc")).unwrap();
    assert!(runc_force_clean(&dir.join("runc")).unwrap().is_empty());
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the free port");
}

#[test]
fn mounts_under_a_fresh_dir_is_empty() {
    let dir = TestDir::new();
    assert!(mounts_under(Path::new(dir.path())).is_empty());
}
