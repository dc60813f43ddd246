//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port, with its own storage, optionally behind htpasswd (basic) or token (bearer)
//! authentication; images are pushed into it with `skopeo copy`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::fixtures::IMAGE_TAG;
use crate::free_port;
use crate::paths::{random_name, run, tail};
use crate::testdir::TestDir;

/// The username a [`Registry`] with authentication accepts.
pub const REGISTRY_USERNAME: &str = "hutch";
/// The password a [`Registry`] with authentication accepts.
pub const REGISTRY_PASSWORD: &str = "pull-me-1f";

/// The `service` (token audience) of a token-authenticated [`Registry`].
const TOKEN_SERVICE: &str = "hutch-test-registry";
/// The token issuer the registry trusts.
const TOKEN_ISSUER: &str = "hutch-test-token-issuer";

/// How long [`Registry::start`] waits for the registry to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How a [`Registry`] authenticates clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryAuthMode {
    /// No authentication: anyone may pull and push.
    Anonymous,
    /// HTTP Basic against an htpasswd file holding [`REGISTRY_USERNAME`] /
    /// [`REGISTRY_PASSWORD`] (bcrypt).
    Basic,
    /// Bearer tokens: the registry challenges with `WWW-Authenticate: Bearer realm=...`; a
    /// small token server in this process hands out JWTs (RS256, signed with a key generated
    /// by `openssl`, its certificate in the registry's `rootcertbundle`) to clients that
    /// present [`REGISTRY_USERNAME`] / [`REGISTRY_PASSWORD`] with HTTP Basic; anonymous and
    /// wrong credentials get 401.
    Token,
}

/// A running `docker-registry serve` on `127.0.0.1:<port>`, storage under its own
/// [`TestDir`]. Killed (and its directory removed) on drop; if the test is panicking, the
/// tail of its log is printed first.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    mode: RegistryAuthMode,
    token_server: Option<TokenServer>,
    dir: TestDir,
}

impl Registry {
    /// Starts a registry with authentication `mode`. Needs `/usr/bin/docker-registry` (Debian
    /// package `docker-registry`); panics naming what failed.
    pub fn start(mode: RegistryAuthMode) -> Registry {
        let dir = TestDir::new();
        let token_server = match mode {
            RegistryAuthMode::Token => Some(
                TokenServer::start(&dir)
                    .unwrap_or_else(|e| panic!("Registry: cannot start the token server: {e:#}")),
            ),
            _ => None,
        };
        if mode == RegistryAuthMode::Basic {
            write_htpasswd(&dir.join("htpasswd"))
                .unwrap_or_else(|e| panic!("Registry: cannot write the htpasswd file: {e:#}"));
        }
        let mut registry = Registry {
            child: None,
            port: 0,
            mode,
            token_server,
            dir,
        };
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            registry.port = free_port();
            let log_offset = fs::metadata(registry.log_path()).map_or(0, |m| m.len());
            registry
                .write_config()
                .unwrap_or_else(|e| panic!("Registry: cannot write config.yml: {e:#}"));
            registry.child = Some(registry.spawn());
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(problem) => {
                    registry.kill();
                    let log = registry.log();
                    let log = log.get(log_offset as usize..).unwrap_or(&log).to_owned();
                    if attempt < ATTEMPTS && log.contains("address already in use") {
                        continue;
                    }
                    panic!(
                        "Registry: docker-registry on 127.0.0.1:{} {problem}\n--- tail of {} ---\n{}",
                        registry.port,
                        registry.log_path().display(),
                        tail(&log, 40)
                    );
                }
            }
        }
        unreachable!()
    }

    /// `127.0.0.1:<port>`: the registry part of references to it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>/<name_tag>`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.host())
    }

    /// The authentication mode.
    pub fn mode(&self) -> RegistryAuthMode {
        self.mode
    }

    /// The credentials it accepts, unless it is anonymous.
    pub fn credentials(&self) -> Option<(&'static str, &'static str)> {
        (self.mode != RegistryAuthMode::Anonymous).then_some((REGISTRY_USERNAME, REGISTRY_PASSWORD))
    }

    /// The registry's storage root (`rootdirectory` of its filesystem driver).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Where the registry keeps the blob `sha256:<hex>` on disk.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Pushes an image as `<name>:<tag>`: `source` is an OCI layout directory (its image
    /// tagged [`IMAGE_TAG`]), an OCI archive or a Docker archive. A layout whose tag names an
    /// image index is pushed with all its platforms (`skopeo copy --multi-arch all`).
    pub fn push(&self, source: &Path, name_tag: &str) {
        let spec = if source.is_dir() {
            format!("oci:{}:{IMAGE_TAG}", source.display())
        } else if archive_has(source, "index.json") {
            format!("oci-archive:{}", source.display())
        } else {
            format!("docker-archive:{}", source.display())
        };
        self.push_spec(&spec, name_tag);
    }

    /// Pushes the image skopeo's source `spec` (`transport:details`) names, as `<name>:<tag>`.
    pub fn push_spec(&self, spec: &str, name_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--multi-arch",
            "all",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = self.credentials() {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(spec)
            .arg(format!("docker://{}", self.reference(name_tag)));
        if let Err(e) = run(&mut cmd) {
            panic!(
                "Registry: pushing {spec} as {name_tag} failed: {e:#}\n--- registry log ---\n{}",
                tail(&self.log(), 30)
            );
        }
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    fn write_config(&self) -> Result<()> {
        let auth = match self.mode {
            RegistryAuthMode::Anonymous => String::new(),
            RegistryAuthMode::Basic => format!(
                "auth:\n  htpasswd:\n    realm: hutch-test\n    path: {}\n",
                self.dir.join("htpasswd").display()
            ),
            RegistryAuthMode::Token => {
                let ts = self.token_server.as_ref().expect("token mode has a server");
                format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    ts.addr,
                    ts.cert.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n\
             {auth}",
            storage = self.storage_dir().display(),
            port = self.port,
            secret = random_name(24),
        );
        fs::write(self.dir.join("config.yml"), config).context("writing config.yml")
    }

    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("Registry: cannot open its log: {e}"));
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("Registry: cannot dup its log: {e}"));
        Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "Registry: cannot run docker-registry ({e}); install the Debian package \
                     `docker-registry`"
                )
            })
    }

    /// Polls `GET /v2/` until it answers at all (200, or 401 when authentication is on).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("exited during startup ({status})"));
            }
            let last = match http_status(addr, "/v2/") {
                Ok(200 | 401) => return Ok(()),
                Ok(status) => format!("GET /v2/ answered {status}"),
                Err(e) => format!("GET /v2/ failed: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "was not ready within {STARTUP_TIMEOUT:?} (last: {last})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- tail of {} ---\n{}",
                self.log_path().display(),
                tail(&self.log(), 30)
            );
        }
        self.kill();
        // The token server stops when dropped, then the TestDir goes.
        self.token_server.take();
    }
}

/// Whether the tar file at `path` has an entry named `name` (or `./name`).
fn archive_has(path: &Path, name: &str) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(file);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries.flatten().any(|e| {
        e.path()
            .is_ok_and(|p| p.to_string_lossy().trim_start_matches("./") == name)
    })
}

/// One HTTP/1.1 GET; returns the status code.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// `htpasswd -nbB` if the tool is installed, else a bcrypt hash made here.
fn write_htpasswd(path: &Path) -> Result<()> {
    let tool = Command::new("htpasswd")
        .args(["-nbB", REGISTRY_USERNAME, REGISTRY_PASSWORD])
        .stdin(Stdio::null())
        .output();
    let line = match tool {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout)?.trim().to_owned(),
        _ => {
            let hash = bcrypt::hash(REGISTRY_PASSWORD, 5).context("bcrypt")?;
            format!("{REGISTRY_USERNAME}:{hash}")
        }
    };
    fs::write(path, format!("{line}\n")).with_context(|| format!("writing {}", path.display()))
}

/// A token endpoint for the registry's `auth.token` configuration, on its own thread.
struct TokenServer {
    addr: SocketAddr,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path) -> Result<TokenServer> {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
            .args(["-days", "2", "-subj", "/CN=hutch-test-token-issuer"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))
        .context("generating the token signing key (openssl)")?;
        let pem = fs::read_to_string(&cert)?;
        let der_b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let signer = Signer { key, der_b64 };
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn
                        && let Err(e) = signer.serve(conn)
                    {
                        eprintln!("token server: {e:#}");
                    }
                }
            })
        };
        Ok(TokenServer {
            addr,
            cert,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Signer {
    key: PathBuf,
    /// The certificate (DER, base64) put in each token's `x5c` header.
    der_b64: String,
}

impl Signer {
    /// Answers one request: `GET /token?service=...&scope=repository:NAME:ACTIONS...`.
    fn serve(&self, mut conn: TcpStream) -> Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut authorization = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_owned());
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let user = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (u, p) = s.split_once(':')?;
                (u == REGISTRY_USERNAME && p == REGISTRY_PASSWORD).then(|| u.to_owned())
            });
        let (status, body) = match user {
            None => (
                "401 Unauthorized",
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]})
                    .to_string(),
            ),
            Some(user) => {
                let access: Vec<serde_json::Value> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .filter_map(|scope| {
                        let mut parts = scope.splitn(3, ':');
                        let kind = parts.next()?.to_owned();
                        let name = parts.next()?.to_owned();
                        let actions: Vec<String> =
                            parts.next()?.split(',').map(str::to_owned).collect();
                        Some(json!({"type": kind, "name": name, "actions": actions}))
                    })
                    .collect();
                let token = self.token(&user, access)?;
                (
                    "200 OK",
                    json!({"token": token, "access_token": token, "expires_in": 600}).to_string(),
                )
            }
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        conn.flush()?;
        Ok(())
    }

    /// A JWT the registry accepts: RS256, the signing certificate in `x5c`.
    fn token(&self, user: &str, access: Vec<serde_json::Value>) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.der_b64]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": random_name(16),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running openssl dgst")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(signing_input.as_bytes())?;
        let mut signature = Vec::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_end(&mut signature)?;
        let status = child.wait()?;
        if !status.success() || signature.is_empty() {
            bail!("openssl dgst -sign failed ({status})");
        }
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes an OCI layout at `dest` whose tag [`IMAGE_TAG`] names an image index with one
/// entry per platform: the image of the OCI layout `amd64` (tag [`IMAGE_TAG`]) as
/// linux/amd64, if given, and for each `os/arch` in `others` a small image of that platform
/// (one layer holding `/platform`, a text file naming it). Pushed with [`Registry::push`],
/// it becomes a multi-platform image (a manifest list) in the registry.
pub fn multi_arch_layout(dest: &Path, amd64: Option<&Path>, others: &[&str]) -> PathBuf {
    build_multi_arch(dest, amd64, others)
        .unwrap_or_else(|e| panic!("multi_arch_layout at {}: {e:#}", dest.display()));
    dest.to_path_buf()
}

fn build_multi_arch(dest: &Path, amd64: Option<&Path>, others: &[&str]) -> Result<()> {
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let hex = hex::encode(Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let mut entries = Vec::new();
    if let Some(src) = amd64 {
        for blob in fs::read_dir(src.join("blobs/sha256"))? {
            let blob = blob?;
            let target = blobs.join(blob.file_name());
            if fs::hard_link(blob.path(), &target).is_err() {
                fs::copy(blob.path(), &target)?;
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&fs::read(src.join("index.json"))?)?;
        let manifest = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == IMAGE_TAG)
            })
            .with_context(|| format!("{} has no image tagged {IMAGE_TAG}", src.display()))?;
        entries.push(json!({
            "mediaType": manifest["mediaType"],
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": {"os": "linux", "architecture": "amd64"},
        }));
    }
    for platform in others {
        let (os, arch) = platform
            .split_once('/')
            .with_context(|| format!("platform {platform:?} is not os/arch"))?;
        let mut tar = tar::Builder::new(Vec::new());
        let content = format!("{platform}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_704_067_200);
        header.set_cksum();
        tar.append_data(&mut header, "platform", content.as_bytes())?;
        let layer = tar.into_inner()?;
        let (layer_digest, layer_size) = put(&layer)?;
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Env": [format!("PLATFORM={platform}")]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string();
        let (config_digest, config_size) = put(config.as_bytes())?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        })
        .to_string();
        let (manifest_digest, manifest_size) = put(manifest.as_bytes())?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"os": os, "architecture": arch},
        }));
    }
    let list = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let (list_digest, list_size) = put(list.as_bytes())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": list_digest,
            "size": list_size,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE_TAG},
        }],
    });
    fs::write(dest.join("index.json"), index.to_string())?;
    fs::write(
        dest.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    Ok(())
}
