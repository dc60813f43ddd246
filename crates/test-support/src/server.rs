//! A `hutch serve` process managed by a test.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::{envd_bin, hutch_bin};
use crate::free_port;
use crate::mounts::{runc_force_clean, unmount_all_under};
use crate::paths::tail;
use crate::testdir::TestDir;

/// How long [`TestServer::start`] waits for `GET /health` to answer 200.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dropped server gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of the server log quoted in panics.
const LOG_TAIL: usize = 60;

/// A running `hutch serve --listen 127.0.0.1:<port> --data-dir <dir>` with
/// `HUTCH_ENVD=<envd_bin()>`; its stdout and stderr are appended to `<dir>/server.log`.
///
/// On drop: SIGTERM, up to 10 s for it to exit, SIGKILL; then every runc container under
/// `<dir>/runc` is force-deleted and everything mounted under `<dir>` is detached; a data
/// directory created by [`TestServer::start`] is then removed. If the test is panicking, the
/// tail of the server log is printed first.
pub struct TestServer {
    child: Option<Child>,
    data_dir: PathBuf,
    port: u16,
    /// The data directory's guard when this server owns it.
    dir: Option<TestDir>,
    /// Extra `hutch serve` arguments.
    args: Vec<String>,
}

impl TestServer {
    /// Starts a server on a fresh [`TestDir`].
    pub fn start() -> TestServer {
        Self::start_with_args(&[])
    }

    /// Starts a server on a fresh [`TestDir`] with extra `hutch serve` arguments, e.g.
    /// `["--warm-pool", "0"]`.
    pub fn start_with_args(args: &[&str]) -> TestServer {
        let dir = TestDir::new().with_runc_cleanup();
        Self::launch(dir.path().to_path_buf(), Some(dir), args)
    }

    /// Starts a server on an existing data directory (a restart), which the caller keeps
    /// alive for as long as the server runs, e.g. the guard [`TestServer::kill9`] returns.
    pub fn start_in(dir: impl AsRef<Path>) -> TestServer {
        Self::launch(dir.as_ref().to_path_buf(), None, &[])
    }

    /// Like [`TestServer::start_in`], but the server takes over the guard, so the directory
    /// lives exactly as long as the server: `TestServer::restart(server.kill9())`.
    pub fn restart(dir: TestDir) -> TestServer {
        Self::restart_with_args(dir, &[])
    }

    /// [`TestServer::restart`] with extra `hutch serve` arguments.
    pub fn restart_with_args(dir: TestDir, args: &[&str]) -> TestServer {
        Self::launch(
            dir.path().to_path_buf(),
            Some(dir.with_runc_cleanup()),
            args,
        )
    }

    fn launch(data_dir: PathBuf, dir: Option<TestDir>, args: &[&str]) -> TestServer {
        let hutch = hutch_bin();
        let envd = envd_bin();
        fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("TestServer: cannot create {}: {e}", data_dir.display()));
        let mut server = TestServer {
            child: None,
            data_dir,
            port: 0,
            dir,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            server.port = free_port();
            let log_offset = server.log_len();
            let child = server.spawn(&hutch, &envd);
            server.child = Some(child);
            match server.wait_healthy() {
                Ok(()) => return server,
                Err(problem) => {
                    server.kill_now();
                    let log = server.log_since(log_offset);
                    // Someone else took the port between free_port() and bind: try another.
                    if attempt < ATTEMPTS && log.contains("in use") {
                        continue;
                    }
                    panic!(
                        "TestServer: `hutch serve` on 127.0.0.1:{} (data dir {}) {problem}\n\
                         --- tail of {} ---\n{}",
                        server.port,
                        server.data_dir.display(),
                        server.log_path().display(),
                        tail(&log, LOG_TAIL)
                    );
                }
            }
        }
        unreachable!()
    }

    fn spawn(&self, hutch: &Path, envd: &Path) -> Child {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("TestServer: cannot open {}: {e}", log_path.display()));
        let listen = format!("127.0.0.1:{}", self.port);
        let _ = writeln!(
            log,
            "=== hutch-test-support: hutch serve --listen {listen} {} ===",
            self.args.join(" ")
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("TestServer: cannot dup log file: {e}"));
        Command::new(hutch)
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--no-base-template")
            .args(&self.args)
            .env("HUTCH_ENVD", envd)
            .env_remove("HUTCH_SERVER")
            .env_remove("HUTCH_API_KEY")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("TestServer: cannot start {}: {e}", hutch.display()))
    }

    /// Polls `GET /health` until it answers 200; errors if the process exits or time runs out.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(format!("exited during startup ({status})")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("cannot be waited for: {e}")),
                }
            }
            let last = match health_status(addr) {
                Ok(200) => return Ok(()),
                Ok(status) => format!("GET /health answered {status}"),
                Err(e) => format!("GET /health failed: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "was not healthy within {STARTUP_TIMEOUT:?} (last: {last})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The API key the server wrote to `<data>/api-key` (trimmed).
    pub fn api_key(&self) -> String {
        let path = self.data_dir.join("api-key");
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("TestServer: cannot read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// `hutch` with `HUTCH_SERVER` and `HUTCH_API_KEY` pointing at this server.
    pub fn hutch(&self) -> Command {
        let mut cmd = Command::new(hutch_bin());
        cmd.env("HUTCH_SERVER", self.url())
            .env("HUTCH_API_KEY", self.api_key());
        cmd
    }

    /// Runs `hutch ARGS` against this server and returns what it did.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.hutch()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("TestServer: cannot run hutch {args:?}: {e}"))
    }

    /// Runs `hutch ARGS` against this server and returns its standard output; panics,
    /// showing both outputs and the tail of the server log, unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hutch {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(40),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hutch sandbox create TEMPLATE [EXTRA...]`, which must succeed; the
    /// new sandbox's id.
    pub fn create_sandbox(&self, template: &str, extra: &[&str]) -> String {
        let mut args = vec!["sandbox", "create", template];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_owned()
    }

    /// `hutch template import IMAGE --name NAME [EXTRA...]`, which must succeed.
    pub fn import(&self, image: &Path, name: &str, extra: &[&str]) {
        let image = image.to_string_lossy();
        let mut args = vec!["template", "import", &image, "--name", name];
        args.extend_from_slice(extra);
        self.cli_ok(&args);
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    fn log_len(&self) -> u64 {
        fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let log = self.log();
        let offset = usize::try_from(offset).unwrap_or(0).min(log.len());
        log.get(offset..).unwrap_or(&log).to_owned()
    }

    /// Everything in `<data>/server.log` so far (all runs on this data directory).
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = fs::File::open(self.log_path()) {
            let _ = f.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// SIGKILLs the server without any cleanup (containers and mounts stay as the server
    /// left them) and returns the data directory's guard, for a restart with
    /// [`TestServer::restart`] or [`TestServer::start_in`]. Dropping the guard force-cleans
    /// runc containers and mounts, and removes the directory if this server owned it.
    pub fn kill9(mut self) -> TestDir {
        self.kill_now();
        self.take_dir()
    }

    /// Stops the server like drop does (SIGTERM, grace period, SIGKILL) but without any
    /// cleanup, and returns the data directory's guard (see [`TestServer::kill9`]).
    pub fn stop(mut self) -> TestDir {
        self.terminate();
        self.take_dir()
    }

    fn take_dir(&mut self) -> TestDir {
        self.dir
            .take()
            .unwrap_or_else(|| TestDir::cleanup_guard(self.data_dir.clone()))
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "warning: hutch serve (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
                child.id()
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.child.is_none() && self.dir.is_none() {
            return; // moved out by kill9/stop
        }
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- tail of {} ---\n{}",
                self.log_path().display(),
                tail(&self.log(), LOG_TAIL)
            );
        }
        self.terminate();
        if let Err(e) = runc_force_clean(&self.data_dir.join("runc")) {
            eprintln!(
                "warning: TestServer {}: runc cleanup failed: {e:#}",
                self.data_dir.display()
            );
        }
        if let Err(e) = unmount_all_under(&self.data_dir) {
            eprintln!("warning: TestServer {}: {e:#}", self.data_dir.display());
        }
        // `self.dir`, if any, is dropped next and removes the directory.
    }
}

/// One `GET /health` over HTTP/1.1; returns the status code.
fn health_status(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or("");
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })
}

/// A request to `server` with its API key (and `body` as JSON, if any):
/// `(status, body text)`. For tests that check status codes and bodies the
/// CLI does not show.
pub fn http(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, String) {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("TestServer: cannot build a tokio runtime")
    });
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url()))
            .header("X-API-Key", server.api_key());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("sending a request");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    })
}
