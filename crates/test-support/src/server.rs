//! A `hutch serve` process managed by a test.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// The stand-in agent binary of [`TestServer::start_without_sandboxes`]: any static executable
/// passes the server's startup checks (it refuses a dynamically linked one), and a server that
/// starts no sandbox never runs it.
pub const STAND_IN_ENVD: &str = "/bin/busybox";

/// The `hutch serve` arguments of a server that starts no sandbox: the stand-in agent
/// [`STAND_IN_ENVD`], and no warm pool (which would boot sandboxes).
const WITHOUT_SANDBOXES: [&str; 4] = ["--envd", STAND_IN_ENVD, "--warm-pool", "0"];

/// A running `hutch serve --listen 127.0.0.1:<port> --data-dir <dir>` with
/// `HUTCH_ENVD=<envd_bin()>` (unless its arguments name an `--envd`, as those of
/// [`TestServer::start_without_sandboxes`] do); its stdout and stderr are appended to
/// `<dir>/server.log`.
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
    /// The subcommand: `serve`, or `control`.
    command: &'static str,
    /// Extra `hutch serve` arguments.
    args: Vec<String>,
    /// The API key set with [`TestServer::with_api_key`], if any.
    api_key: Option<String>,
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
        Self::launch(dir.path().to_path_buf(), Some(dir), "serve", args)
    }

    /// Starts a control plane (`hutch control --envd /bin/busybox --warm-pool 0 ARGS`) on a
    /// fresh [`TestDir`]: its sandboxes run on the nodes that join it. `args` must give what
    /// `hutch control` requires (the node secret file and the template registry).
    pub fn start_control(args: &[&str]) -> TestServer {
        let dir = TestDir::new().with_runc_cleanup();
        Self::launch(
            dir.path().to_path_buf(),
            Some(dir),
            "control",
            &without_sandboxes(args),
        )
    }

    /// [`TestServer::start_control`] on an existing data directory, at the address `url` it
    /// had (where its nodes send their heartbeats): a control plane's restart.
    pub fn restart_control(dir: TestDir, url: &str, args: &[&str]) -> TestServer {
        let port = url
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("TestServer: no port in {url}"));
        let mut server = Self::prepare(
            dir.path().to_path_buf(),
            Some(dir.with_runc_cleanup()),
            "control",
            &without_sandboxes(args),
        );
        server.port = port;
        server.child = Some(server.spawn(&hutch_bin(), None));
        if let Err(problem) = server.wait_healthy() {
            panic!(
                "TestServer: `hutch control` on 127.0.0.1:{port} {problem}\n--- tail of {} ---\n{}",
                server.log_path().display(),
                tail(&server.log_since(0), LOG_TAIL)
            );
        }
        server
    }

    /// Starts a server that can start no sandbox, on a fresh [`TestDir`]: `hutch serve --envd
    /// /bin/busybox --warm-pool 0 ARGS` (see [`STAND_IN_ENVD`]). Creating a sandbox on it
    /// fails, but everything else (the REST API, templates, API keys, the CLI, HTTP handling)
    /// is the real server's; and the agent is not built for it ([`envd_bin`] is not called).
    /// `args` are more `hutch serve` arguments, e.g. `["--header-read-timeout", "2"]` (not
    /// `--envd` or `--warm-pool` again: `hutch serve` refuses repeated options).
    pub fn start_without_sandboxes(args: &[&str]) -> TestServer {
        Self::start_with_args(&without_sandboxes(args))
    }

    /// Starts a server on an existing data directory (a restart), which the caller keeps
    /// alive for as long as the server runs, e.g. the guard [`TestServer::kill9`] returns.
    pub fn start_in(dir: impl AsRef<Path>) -> TestServer {
        Self::launch(dir.as_ref().to_path_buf(), None, "serve", &[])
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
            "serve",
            args,
        )
    }

    /// [`TestServer::restart_with_args`] for a server that starts no sandbox (see
    /// [`TestServer::start_without_sandboxes`]):
    /// `TestServer::restart_without_sandboxes(server.stop(), &[])`.
    pub fn restart_without_sandboxes(dir: TestDir, args: &[&str]) -> TestServer {
        Self::restart_with_args(dir, &without_sandboxes(args))
    }

    /// Makes `key` this server's API key for [`TestServer::api_key`] and everything that uses
    /// it ([`TestServer::request`], [`TestServer::cli`], [`http`]...), instead of the one in
    /// `<data>/api-key`. For a server whose key file was removed: the server writes it only
    /// when its database holds no key yet.
    pub fn with_api_key(mut self, key: impl Into<String>) -> TestServer {
        self.api_key = Some(key.into());
        self
    }

    /// A server not started yet.
    fn prepare(
        data_dir: PathBuf,
        dir: Option<TestDir>,
        command: &'static str,
        args: &[&str],
    ) -> TestServer {
        fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("TestServer: cannot create {}: {e}", data_dir.display()));
        TestServer {
            child: None,
            data_dir,
            port: 0,
            dir,
            command,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            api_key: None,
        }
    }

    fn launch(
        data_dir: PathBuf,
        dir: Option<TestDir>,
        command: &'static str,
        args: &[&str],
    ) -> TestServer {
        let hutch = hutch_bin();
        // A server given its agent needs none built.
        let envd = (!names_envd(args)).then(envd_bin);
        let mut server = Self::prepare(data_dir, dir, command, args);
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            server.port = free_port();
            let log_offset = server.log_len();
            let child = server.spawn(&hutch, envd.as_deref());
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

    /// Spawns `hutch serve`; with `HUTCH_ENVD=envd` if given, else without any `HUTCH_ENVD`.
    fn spawn(&self, hutch: &Path, envd: Option<&Path>) -> Child {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("TestServer: cannot open {}: {e}", log_path.display()));
        let listen = format!("127.0.0.1:{}", self.port);
        let _ = writeln!(
            log,
            "=== hutch-test-support: hutch {} --listen {listen} {} ===",
            self.command,
            self.args.join(" ")
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("TestServer: cannot dup log file: {e}"));
        let mut cmd = Command::new(hutch);
        match envd {
            Some(envd) => cmd.env("HUTCH_ENVD", envd),
            None => cmd.env_remove("HUTCH_ENVD"),
        };
        cmd.arg(self.command)
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--no-base-template")
            .args(&self.args)
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

    /// `127.0.0.1:<port>`, for raw connections.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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

    /// The API key the server wrote to `<data>/api-key` (trimmed), or the one set with
    /// [`TestServer::with_api_key`].
    pub fn api_key(&self) -> String {
        if let Some(key) = &self.api_key {
            return key.clone();
        }
        let path = self.data_dir.join("api-key");
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("TestServer: cannot read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// A request (for `async` tests) of `method` to `path` (e.g. `/sandboxes`) on this server,
    /// with its API key in `X-API-Key`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url()))
            .header("X-API-Key", self.api_key())
    }

    /// Sandbox `id` as `GET /sandboxes/{id}` describes it (panics unless
    /// it answers 200).
    pub fn sandbox_info(&self, id: &str) -> serde_json::Value {
        let path = format!("/sandboxes/{id}");
        let (status, body) = http(self, reqwest::Method::GET, &path, &[], None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("the sandbox as JSON")
    }

    /// A control plane's nodes, as `GET /hutch/v1/nodes` lists them.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(self, reqwest::Method::GET, "/hutch/v1/nodes", &[], None);
        assert_eq!(status, 200, "GET /hutch/v1/nodes: {body}");
        serde_json::from_str(&body).expect("the nodes as JSON")
    }

    /// The names of a control plane's nodes in `state` (`alive` or `lost`).
    pub fn nodes_in(&self, state: &str) -> Vec<String> {
        self.nodes()
            .iter()
            .filter(|n| n["state"] == state)
            .map(|n| n["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits (up to 30 s) until a control plane counts `n` nodes alive.
    pub fn wait_nodes_alive(&self, n: usize) {
        crate::wait_until("the nodes to join", Duration::from_secs(30), || {
            self.nodes_in("alive").len() == n
        });
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

    /// [`TestServer::stop`], asserting that the server shut down cleanly: it exited
    /// successfully on SIGTERM, within the grace period. Panics with the tail of its log if not.
    pub fn stop_ok(mut self) -> TestDir {
        let status = self.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "TestServer: `hutch serve` on {} did not shut down cleanly ({})\n--- tail of {} ---\n{}",
            self.url(),
            status.map_or_else(|| "no exit status".to_owned(), |s| s.to_string()),
            self.log_path().display(),
            tail(&self.log(), LOG_TAIL),
        );
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

    /// SIGTERM, up to [`STOP_GRACE`] for the server to exit, SIGKILL. Returns its exit
    /// status if it exited by itself (on SIGTERM, or before); `None` if it had to be killed,
    /// could not be waited for, or was not running.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => {
                let _ = child.wait();
                return None;
            }
        }
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "warning: hutch serve (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
        None
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

/// `hutch serve` arguments for a server that starts no sandbox, then `args`.
fn without_sandboxes<'a>(args: &[&'a str]) -> Vec<&'a str> {
    WITHOUT_SANDBOXES.iter().chain(args).copied().collect()
}

/// Whether `hutch serve` arguments name the agent binary (`--envd PATH` or `--envd=PATH`).
fn names_envd(args: &[&str]) -> bool {
    args.iter()
        .any(|a| *a == "--envd" || a.starts_with("--envd="))
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
