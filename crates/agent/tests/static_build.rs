//! The agent ships as one static binary bind-mounted into every sandbox,
//! whatever libc (if any) the image has. This builds it the way releases
//! do and checks that it is static, small, and idles in little memory.
//!
//! Needs the `x86_64-unknown-linux-musl` Rust target and a musl C compiler
//! (`x86_64-linux-musl-gcc`, Debian package `musl-tools`) for the C code
//! in the dependency tree.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// What an idle agent may use (resident memory).
const MAX_IDLE_RSS_KIB: u64 = 8 * 1024;
/// A sanity bound on the binary's size.
const MAX_SIZE: u64 = 8 * 1024 * 1024;

fn build_static() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-p",
            "hutch-envd",
            "--bin",
            "hutch-envd",
            "--profile",
            "agent",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "static build failed (needs `rustup target add {TARGET}` and `apt-get install musl-tools`)"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "hutch-envd")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no hutch-envd executable")
}

/// Whether an ELF file asks for a program interpreter (dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3 /* PT_INTERP */)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn static_musl_build_is_small_and_idles_light() {
    let bin = build_static();
    let elf = std::fs::read(&bin).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked",
        bin.display()
    );
    let size = elf.len() as u64;
    assert!(size < MAX_SIZE, "binary is {size} bytes");
    if let Ok(out) = Command::new("file").arg(&bin).output() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("envd.sock");
    let mut agent = Command::new(&bin)
        .arg("--socket")
        .arg(&socket)
        .env("HUTCH_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut conn = UnixStream::connect(&socket).unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 204"), "{response}");

    std::thread::sleep(Duration::from_millis(200));
    let rss = rss_kib(agent.id());
    eprintln!(
        "static agent: {size} bytes ({:.2} MiB), idle RSS {rss} KiB",
        size as f64 / 1048576.0
    );
    assert!(rss < MAX_IDLE_RSS_KIB, "idle agent uses {rss} KiB");

    // SAFETY: plain syscall.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent exited with {status:?}");
}
