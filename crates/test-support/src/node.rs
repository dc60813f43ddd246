//! A `hutch node` process managed by a test, and the secret it shares with
//! a control plane.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::{envd_bin, hutch_bin};
use crate::free_port;
use crate::paths::tail;
use crate::testdir::TestDir;

/// How long [`TestNode::start`] waits for the node API to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped node gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running `hutch node --listen 127.0.0.1:<port> --data-dir <dir>
/// --node-secret-file <dir>/node-secret` with `HUTCH_ENVD=<envd_bin()>`; its
/// output goes to `<dir>/node.log`. On drop: SIGTERM (then SIGKILL), its
/// runc containers force-deleted, everything mounted under its directory
/// detached, the directory removed.
pub struct TestNode {
    child: Option<Child>,
    port: u16,
    dir: Option<TestDir>,
    /// The data directory (inside `dir`).
    data_dir: PathBuf,
    /// The file holding its secret.
    secret_file: PathBuf,
    /// More `hutch node` arguments.
    args: Vec<String>,
}

/// A cluster's node secret, in a file of its own: what `hutch control` and the nodes that
/// join it share.
pub struct ClusterSecret {
    dir: TestDir,
}

impl ClusterSecret {
    /// A fresh random secret.
    pub fn new() -> ClusterSecret {
        let dir = TestDir::new();
        write_secret(&dir.path().join("node-secret"));
        ClusterSecret { dir }
    }

    /// The file holding it.
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("node-secret")
    }

    /// The `hutch control` arguments of a control plane of this cluster pushing templates to
    /// `repository` (`host:port/path`), its nodes lost 3 s after their last heartbeat.
    pub fn control_args(&self, repository: &str) -> Vec<String> {
        vec![
            "--node-secret-file".into(),
            self.file().display().to_string(),
            "--template-registry".into(),
            repository.into(),
            "--node-lease".into(),
            "3".into(),
        ]
    }
}

impl Default for ClusterSecret {
    fn default() -> Self {
        ClusterSecret::new()
    }
}

/// Writes a fresh random secret (48 characters) to `path`.
fn write_secret(path: &Path) {
    let secret: String = format!(
        "{}{}",
        crate::paths::random_name(24),
        crate::paths::random_name(24)
    );
    fs::write(path, format!("{secret}\n")).unwrap();
}

impl TestNode {
    /// Starts a node on a fresh directory, with a fresh secret, joining no control plane.
    pub fn start() -> TestNode {
        TestNode::start_with_args(&[])
    }

    /// [`TestNode::start`] with more `hutch node` arguments.
    pub fn start_with_args(args: &[&str]) -> TestNode {
        let dir = TestDir::new();
        let secret_file = dir.path().join("node-secret");
        write_secret(&secret_file);
        TestNode::launch_in(dir, secret_file, args)
    }

    /// Starts node `name` on a fresh directory, joining the control plane at `control`
    /// (`http://host:port`) with the secret of `cluster`; `args` are more `hutch node`
    /// arguments.
    pub fn join(control: &str, cluster: &ClusterSecret, name: &str, args: &[&str]) -> TestNode {
        let mut all = vec!["--join", control, "--name", name];
        all.extend_from_slice(args);
        TestNode::launch_in(TestDir::new(), cluster.file(), &all)
    }

    fn launch_in(dir: TestDir, secret_file: PathBuf, args: &[&str]) -> TestNode {
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir).unwrap();
        let mut node = TestNode {
            child: None,
            port: 0,
            dir: Some(dir),
            data_dir,
            secret_file,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        node.launch();
        node
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the node's directory").path()
    }

    fn launch(&mut self) {
        for attempt in 1..=3 {
            self.port = free_port();
            self.child = Some(self.spawn());
            match self.wait_listening() {
                Ok(()) => return,
                Err(problem) => {
                    self.kill_now();
                    let log = self.log();
                    if attempt < 3 && log.contains("in use") {
                        continue;
                    }
                    panic!("TestNode: {problem}\n--- node log ---\n{}", tail(&log, 60));
                }
            }
        }
    }

    /// Spawns `hutch node` on `self.port`.
    fn spawn(&self) -> Child {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let _ = writeln!(log, "=== hutch node on 127.0.0.1:{} ===", self.port);
        let stderr = log.try_clone().unwrap();
        Command::new(hutch_bin())
            .arg("node")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--node-secret-file")
            .arg(self.secret_file())
            .args(&self.args)
            .env("HUTCH_ENVD", envd_bin())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("TestNode: cannot start hutch node: {e}"))
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("hutch node exited during startup ({status})"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "hutch node did not listen within {STARTUP_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`: where its node API is.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file holding its secret.
    pub fn secret_file(&self) -> PathBuf {
        self.secret_file.clone()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("node.log")
    }

    /// Everything it printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills it (SIGKILL) as a crash would: its sandboxes keep running.
    pub fn kill9(&mut self) {
        self.kill_now();
    }

    /// Starts it again after [`TestNode::kill9`] (or a stop), on the same port, data directory
    /// and secret.
    pub fn start_again(&mut self) {
        self.child = Some(self.spawn());
        if let Err(problem) = self.wait_listening() {
            panic!(
                "TestNode: {problem}\n--- node log ---\n{}",
                tail(&self.log(), 60)
            );
        }
    }

    /// Stops it (SIGTERM) and starts it again on the same port, data
    /// directory and secret: its sandboxes keep running meanwhile.
    pub fn restart(&mut self) {
        self.terminate();
        self.start_again();
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
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tail of the node log ---\n{}", tail(&self.log(), 60));
        }
        self.terminate();
        if let Err(e) = crate::mounts::runc_force_clean(&self.data_dir.join("runc")) {
            eprintln!("warning: TestNode: runc cleanup failed: {e:#}");
        }
        if let Err(e) = crate::mounts::unmount_all_under(&self.data_dir) {
            eprintln!("warning: TestNode: {e:#}");
        }
        // The directory guard is dropped next and removes it.
        drop(self.dir.take());
    }
}
