//! A private PostgreSQL server from Debian's `postgresql` package: its own
//! cluster in a temporary directory, listening on a free loopback port,
//! stopped and removed on drop.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::free_port;

/// The role (and superuser) every cluster is made with; trusted on loopback.
pub const POSTGRES_USER: &str = "hutch";

/// A running PostgreSQL cluster of its own. PostgreSQL refuses to run as
/// root, so as root the cluster belongs to (and runs as) the `postgres`
/// user the package creates.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `runuser -u postgres --` as root; nothing otherwise.
    as_user: Vec<String>,
    /// The `postgres` options it was started with (`pg_ctl -o`).
    options: String,
}

impl Postgres {
    /// Creates and starts a cluster. Panics, naming what failed, when
    /// PostgreSQL is not installed or will not start.
    pub fn start() -> Postgres {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("hutch-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("Postgres: cannot create a temporary directory: {e}"));
        let as_user = if rustix::process::geteuid().is_root() {
            let (uid, gid) = postgres_ids();
            chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("Postgres: chown {}: {e}", dir.path().display()));
            ["runuser", "-u", "postgres", "--"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        };
        let mut pg = Postgres {
            bin,
            dir,
            port: 0,
            as_user,
            options: String::new(),
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        );
        // The port is free when picked, not necessarily when the server
        // binds it: a clash is retried on another.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let options = format!(
                "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                pg.dir.path().display(),
                pg.port
            );
            pg.options = options;
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("Postgres: the server would not start: {last}");
    }

    /// Stops the cluster (`pg_ctl stop -m fast`: every session is closed),
    /// for a test of what its clients do while it is down; [`Postgres::start_again`]
    /// starts it again on the same port with the same data.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the cluster [`Postgres::stop`] stopped.
    pub fn start_again(&self) {
        self.try_start()
            .unwrap_or_else(|e| panic!("Postgres: the server would not start again: {e}"));
    }

    fn try_start(&self) -> Result<(), String> {
        let log = self.dir.path().join("server.log");
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &self.options,
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map_err(|e| format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// `postgres://hutch@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{POSTGRES_USER}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs one SQL command with `psql` (as the superuser), returning its
    /// output; panics when it fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("Postgres: cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        self.try_run(tool, args)
            .unwrap_or_else(|e| panic!("Postgres: {e}"));
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut cmd = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.try_run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]) {
            eprintln!("Postgres: cannot stop the test cluster: {e}");
        }
    }
}

/// The newest installed `/usr/lib/postgresql/<version>/bin`.
fn server_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "Postgres: no PostgreSQL server under {} (apt-get install postgresql)",
            root.display()
        ),
    }
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .unwrap_or_else(|| {
            panic!("Postgres: no `postgres` user to run the server as (apt-get install postgresql)")
        })
}
