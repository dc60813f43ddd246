//! Pulling images from OCI / Docker registries into the layer store: see [`pull`].

use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Arch, ImageConfiguration, Os};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::digest::{sha256_hex, sha256_of, short};
use crate::store::StagedLayer;
use crate::{ImageError, ImportedImage, LayerStore, import};

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No credentials of our own: the Docker config file's, if it has some for the registry,
    /// else none.
    #[default]
    Anonymous,
    /// A username and password (or access token used as a password).
    Basic {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token sent as is (no token exchange).
    Bearer {
        /// The token.
        token: String,
    },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RegistryAuth::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Options of [`pull`].
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials; with [`RegistryAuth::Anonymous`] the Docker config file is consulted.
    pub auth: RegistryAuth,
    /// Registries (`host[:port]`, or `host` for every port) reached over plain HTTP.
    /// Registries on loopback always are.
    pub insecure_registries: Vec<String>,
    /// The Docker config file to take credentials from; `None`: `$DOCKER_CONFIG/config.json`,
    /// else `$HOME/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// Progress of a pull, reported as it happens. Serializes as `{"event": "resolved", ...}` and
/// `{"event": "layer", ...}` with camelCase fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum PullProgress {
    /// The reference was resolved to an image manifest with this many layers.
    Resolved {
        /// The reference, as given.
        reference: String,
        /// Digest of the image manifest (the platform's, for a manifest list).
        manifest_digest: String,
        /// Number of layers, base first.
        layers: usize,
    },
    /// Where one layer stands. The first event of a layer has `done` 0 (or, when it is
    /// reused, `done` = `total` and `complete`); the last has `complete` set.
    Layer {
        /// Layer index, base first.
        index: usize,
        /// Blob digest (compressed), `sha256:<hex>`.
        digest: String,
        /// Blob size in bytes, as the manifest declares it.
        total: u64,
        /// Bytes downloaded so far.
        done: u64,
        /// The layer was already in the store and is not downloaded.
        reused: bool,
        /// The layer is verified and in the store.
        complete: bool,
    },
}

/// Accepted manifest media types, best first.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layer media types that are a tar, plain or compressed (the compression is detected from
/// the bytes).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Largest manifest, manifest list or image config accepted.
const MAX_METADATA: u64 = crate::MAX_METADATA_SIZE;

/// How often a downloading layer reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Pulls `reference` (`[REGISTRY/]NAME[:TAG|@DIGEST]`, Docker Hub by default) from its
/// registry into `store`: resolves it to an image manifest, choosing the linux/amd64 entry of a manifest list or OCI index, fetches the
/// image config, then each layer that is not in the store yet. It returns the same
/// [`ImportedImage`] a local import does, so callers treat pulled and imported images alike.
///
/// # Transport and credentials
///
/// Registries are reached over HTTPS (rustls, the system's root certificates), except those on
/// loopback (`localhost`, `127.0.0.0/8`, `::1`) and those listed in
/// [`PullOptions::insecure_registries`], which are reached over plain HTTP. Credentials are,
/// in order: [`PullOptions::auth`] when it is not [`RegistryAuth::Anonymous`]; else the
/// registry's `auths.<host>.auth` entry in the Docker config file
/// ([`PullOptions::docker_config`], else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; credential helpers are not consulted); else none. Registries that
/// hand out bearer tokens (a `WWW-Authenticate: Bearer realm=...` challenge) get those
/// credentials at their token endpoint; the others get them as HTTP Basic authentication.
///
/// # Verification and atomicity
///
/// Each layer blob is streamed from the registry straight into the store's staging area
/// (`ROOT/tmp/layer-*`), where it is decompressed and extracted as it arrives, while the
/// compressed bytes and the uncompressed tar are hashed. The staged layer is moved into the
/// store only if its size and digest are the manifest's and its diff id is the one the image
/// config's `rootfs.diff_ids` lists; otherwise the staging directory is deleted and the pull
/// fails naming the blob and both digests. This streaming design was chosen over downloading
/// each blob to a temporary file first because it reads every byte once, needs no disk space
/// for the compressed copy, and overlaps the download with the extraction; the staging
/// directory is what makes it atomic: a failed or interrupted pull never leaves a partial
/// layer under `ROOT/sha256/`, and staging left by a crash is removed by
/// [`LayerStore::open`].
///
/// Each layer is committed as soon as it is verified, so a pull that fails half way (a network
/// error, a damaged later blob) keeps the layers it already verified and a retry does not
/// fetch them again. Nothing refers to such layers until a template does; they are removed
/// with the other unreferenced layers ([`LayerStore::remove_unreferenced`]).
///
/// # Reuse
///
/// A layer is not downloaded if the store already holds the diff id the image config gives
/// for it. The store also keeps a small index from compressed blob digest to diff id, one file
/// per blob under `ROOT/blobs-index/sha256/<hex>`, written after each verified download: a
/// blob the index knows whose config diff id disagrees with what the blob was seen to unpack
/// to is refused before anything is fetched.
///
/// # Bounds
///
/// Manifests and manifest lists are read by Hutch itself, no further than
/// [`crate::MAX_METADATA_SIZE`] (a larger `Content-Length` is refused unread); a manifest list
/// entry or config whose descriptor declares more is not fetched, and a config body is read
/// no further than its declared size. Layers unpack within the store's bound (see
/// [`LayerStore::with_max_unpacked_size`]). All of these fail with [`ImageError::TooLarge`].
///
/// # Errors
///
/// Errors name the image and the registry: [`ImageError::RegistryNotFound`] for an unknown
/// repository or tag, [`ImageError::RegistryAuth`] when access is refused,
/// [`ImageError::RegistryUnreachable`] when the registry cannot be reached,
/// [`ImageError::Corrupt`] for a blob that does not match its digest or diff id,
/// [`ImageError::Unsupported`] for media types that are not a container image.
pub async fn pull(
    store: &LayerStore,
    reference: &str,
    opts: &PullOptions,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<ImportedImage, ImageError> {
    let (client, parsed, auth, ctx) = open_client(reference, opts, false)?;
    let token = client
        .auth(&parsed, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Manifest))?;
    let fetcher = ManifestFetcher {
        client: &client,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("hutch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ctx.unreachable(error_chain(&e)))?,
        auth: &auth,
        token,
        scheme: if ctx.plain_http { "http" } else { "https" },
        ctx: &ctx,
    };

    let (manifest_digest, manifest) = resolve_manifest(&fetcher, &parsed).await?;
    let image_ref = parsed.clone_with_digest(manifest_digest.clone());

    // The config: what the layers unpack to, and the runtime defaults.
    let cdesc = &manifest.config;
    if !CONFIG_TYPES.contains(&cdesc.media_type.as_str()) {
        return Err(ctx.unsupported(format!(
            "it is not a container image: its config has media type {} (expected {})",
            cdesc.media_type,
            CONFIG_TYPES.join(" or ")
        )));
    }
    ctx.check_digest(&cdesc.digest, "the image config")?;
    let cwhat = format!("image config {}", short(&cdesc.digest));
    if cdesc.size < 0 {
        return Err(ctx.invalid(
            "manifest",
            format!("its config size {} is negative", cdesc.size),
        ));
    }
    if cdesc.size as u64 > MAX_METADATA {
        return Err(ctx.too_large(
            &cwhat,
            format!(
                "the manifest says it is {} bytes, more than the {MAX_METADATA} allowed for an \
                 image config; it was not fetched",
                cdesc.size
            ),
        ));
    }
    // Read no more than the manifest declares, whatever the registry sends.
    let declared = cdesc.size as u64;
    let mut config_bytes = Vec::with_capacity(cdesc.size as usize);
    let mut config_stream = client
        .pull_blob_stream(&image_ref, cdesc.digest.as_str())
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Blob(cwhat.clone())))?
        .stream;
    while let Some(item) = config_stream.next().await {
        match item {
            Ok(chunk) => {
                if config_bytes.len() as u64 + chunk.len() as u64 > declared {
                    return Err(ctx.corrupt(
                        &cwhat,
                        format!(
                            "the registry sent more than the {declared} bytes the manifest \
                             declares"
                        ),
                    ));
                }
                config_bytes.extend_from_slice(&chunk);
            }
            // The client's own digest check; the comparison below says it more clearly.
            Err(e) if digest_failure(&e).is_some() => break,
            Err(e) => {
                return Err(
                    ctx.unreachable(format!("downloading {cwhat} failed: {}", error_chain(&e)))
                );
            }
        }
    }
    drop(config_stream);
    let config_digest = sha256_of(&config_bytes);
    if config_digest != cdesc.digest {
        return Err(ctx.corrupt(
            &cwhat,
            format!(
                "digest mismatch (expected {}, got {config_digest})",
                cdesc.digest
            ),
        ));
    }
    let image_config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| ctx.invalid(&cwhat, format!("cannot parse it: {e}")))?;
    if *image_config.os() != Os::Linux || *image_config.architecture() != Arch::default() {
        return Err(ImageError::RegistryNoPlatform {
            reference: ctx.reference.clone(),
            wanted: host_platform(),
            available: format!("{}/{}", image_config.os(), image_config.architecture()),
        });
    }
    let diff_ids = image_config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ctx.invalid(
            "manifest",
            format!(
                "it lists {} layers but the image config lists {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    for (i, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let n = i + 1;
        if layer.media_type.contains("encrypted") {
            return Err(ctx.unsupported(format!(
                "layer {n} is encrypted ({}); decrypt the image first",
                layer.media_type
            )));
        }
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ctx.unsupported(format!(
                "layer {n} has media type {}, which is not a (plain, gzip or zstd) tar layer",
                layer.media_type
            )));
        }
        ctx.check_digest(&layer.digest, &format!("layer {n}"))?;
        if layer.size < 0 {
            return Err(ctx.invalid("manifest", format!("layer {n} has a negative size")));
        }
        sha256_hex(diff_id).map_err(|e| {
            ctx.unsupported(format!(
                "the config's diff id for layer {n} is {diff_id:?} ({e})"
            ))
        })?;
    }

    progress(PullProgress::Resolved {
        reference: ctx.reference.clone(),
        manifest_digest: manifest_digest.clone(),
        layers: manifest.layers.len(),
    });

    let total_layers = manifest.layers.len();
    for (index, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let what = format!(
            "layer {} ({} of {total_layers})",
            short(&layer.digest),
            index + 1
        );
        let total = layer.size as u64;
        if let Some(known) = read_blob_index(store, &layer.digest)
            && known != *diff_id
        {
            return Err(ctx.corrupt(
                &what,
                format!(
                    "the image config gives it diff id {diff_id}, but this blob was seen to \
                     unpack to {known}"
                ),
            ));
        }
        if store.has_layer(diff_id) {
            progress(PullProgress::Layer {
                index,
                digest: layer.digest.clone(),
                total,
                done: total,
                reused: true,
                complete: true,
            });
            continue;
        }
        let staged = fetch_layer(
            &client,
            &image_ref,
            store,
            &ctx,
            LayerJob {
                index,
                desc: layer,
                diff_id,
                what: &what,
            },
            progress,
        )
        .await?;
        store.commit(staged)?;
        write_blob_index(store, &layer.digest, diff_id);
        progress(PullProgress::Layer {
            index,
            digest: layer.digest.clone(),
            total,
            done: total,
            reused: false,
            complete: true,
        });
    }

    Ok(ImportedImage {
        manifest_digest,
        config_digest,
        config: import::image_config(&image_config),
        layers: diff_ids.clone(),
    })
}

/// A client for `reference`'s registry (pushing blobs in one request each
/// when `monolithic_push`), the parsed reference, the credentials to use
/// and what error messages need.
pub(crate) fn open_client(
    reference: &str,
    opts: &PullOptions,
    monolithic_push: bool,
) -> Result<(Client, Reference, oci_client::secrets::RegistryAuth, Ctx), ImageError> {
    let parsed =
        Reference::try_from(reference.trim()).map_err(|e| ImageError::InvalidReference {
            reference: reference.to_owned(),
            detail: e.to_string(),
        })?;
    let registry = parsed.resolve_registry().to_owned();
    let plain_http = is_plain_http(&registry, &opts.insecure_registries);
    let (auth, credentials) = resolve_auth(opts, &parsed);
    let ctx = Ctx {
        reference: reference.trim().to_owned(),
        registry: parsed.registry().to_owned(),
        credentials,
        plain_http,
    };
    let config = ClientConfig {
        use_monolithic_push: monolithic_push,
        ..client_config(&registry, plain_http)
    };
    let client = Client::try_from(config).map_err(|e| ctx.registry_error(e, Phase::Manifest))?;
    Ok((client, parsed, auth, ctx))
}

/// How Hutch's registry clients talk to `registry`.
pub(crate) fn client_config(registry: &str, plain_http: bool) -> ClientConfig {
    ClientConfig {
        protocol: if plain_http {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("hutch/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    }
}

/// What a pull (or a push) knows for its error messages.
pub(crate) struct Ctx {
    pub reference: String,
    /// The registry as the reference names it (`docker.io` for Docker Hub).
    pub registry: String,
    /// Whether credentials were sent (given, or from the Docker config).
    pub credentials: bool,
    pub plain_http: bool,
}

/// What was being fetched when a registry call failed.
pub(crate) enum Phase {
    /// The manifest (or the token for it): a 404 means the image does not exist.
    Manifest,
    /// A blob, described.
    Blob(String),
}

impl Ctx {
    fn corrupt(&self, what: &str, detail: String) -> ImageError {
        ImageError::Corrupt {
            what: what.to_owned(),
            image: self.reference.clone(),
            detail,
        }
    }

    fn too_large(&self, what: &str, detail: String) -> ImageError {
        ImageError::TooLarge {
            what: what.to_owned(),
            image: self.reference.clone(),
            limit: MAX_METADATA,
            detail,
        }
    }

    fn invalid(&self, what: &str, detail: String) -> ImageError {
        ImageError::Invalid {
            what: what.to_owned(),
            image: self.reference.clone(),
            detail,
        }
    }

    fn unsupported(&self, detail: String) -> ImageError {
        ImageError::Unsupported {
            image: self.reference.clone(),
            detail,
        }
    }

    fn check_digest(&self, digest: &str, what: &str) -> Result<(), ImageError> {
        sha256_hex(digest)
            .map(drop)
            .map_err(|e| self.unsupported(format!("{what} has digest {digest:?} ({e})")))
    }

    fn not_found(&self) -> ImageError {
        ImageError::RegistryNotFound {
            reference: self.reference.clone(),
            registry: self.registry.clone(),
        }
    }

    fn auth_failed(&self, detail: String) -> ImageError {
        let hint = if self.credentials {
            format!(
                "check the username and password (or token) for {}",
                self.registry
            )
        } else {
            format!(
                "the image may be private: pass credentials (`hutch template pull --username \
                 USER --password-stdin`) or log in on the server's host with `docker login {}`",
                self.registry
            )
        };
        ImageError::RegistryAuth {
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            detail: format!("{detail}; {hint}"),
        }
    }

    fn unreachable(&self, cause: String) -> ImageError {
        let hint = if self.plain_http {
            String::new()
        } else {
            " (if it serves plain HTTP, list it as an insecure registry: `hutch serve \
             --insecure-registry HOST:PORT`)"
                .to_owned()
        };
        ImageError::RegistryUnreachable {
            registry: self.registry.clone(),
            cause: format!("{cause}{hint}"),
        }
    }

    /// Maps an error of the registry client to one that says what to do.
    pub(crate) fn registry_error(&self, e: OciDistributionError, phase: Phase) -> ImageError {
        let what = match &phase {
            Phase::Manifest => "the manifest".to_owned(),
            Phase::Blob(what) => what.clone(),
        };
        let missing = |detail: String| match &phase {
            Phase::Manifest => self.not_found(),
            Phase::Blob(what) => ImageError::Missing {
                what: what.clone(),
                image: self.reference.clone(),
                detail: format!("the registry {} does not have it: {detail}", self.registry),
            },
        };
        match e {
            OciDistributionError::RequestError(e) => self.unreachable(error_chain(&e)),
            OciDistributionError::IoError(e) => self.unreachable(error_chain(&e)),
            OciDistributionError::UnauthorizedError { .. } => {
                self.auth_failed("it answered 401 Unauthorized".to_owned())
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                let reason = error_body_message(&reason);
                let reason = reason.trim();
                self.auth_failed(if reason.is_empty() {
                    "its token service refused the credentials".to_owned()
                } else {
                    format!(
                        "its token service refused the credentials: {}",
                        clip(reason)
                    )
                })
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let text = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        let code = serde_json::to_value(&e.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if e.message.is_empty() {
                            code
                        } else {
                            format!("{code}: {}", e.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let has = |c: OciErrorCode| envelope.errors.iter().any(|e| e.code == c);
                if has(OciErrorCode::Unauthorized) || has(OciErrorCode::Denied) {
                    self.auth_failed(clip(&text))
                } else if has(OciErrorCode::ManifestUnknown)
                    || has(OciErrorCode::NameUnknown)
                    || has(OciErrorCode::NotFound)
                    || has(OciErrorCode::BlobUnknown)
                {
                    missing(clip(&text))
                } else if has(OciErrorCode::Toomanyrequests) {
                    ImageError::Registry {
                        registry: self.registry.clone(),
                        detail: format!(
                            "it limits the rate of pulls ({}); try again later or log in",
                            clip(&text)
                        ),
                    }
                } else {
                    ImageError::Registry {
                        registry: self.registry.clone(),
                        detail: format!("fetching {what}: {}", clip(&text)),
                    }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 | 403 => self.auth_failed(format!("it answered HTTP {code}")),
                404 => missing(format!("HTTP 404 {}", clip(message.trim()))),
                _ => ImageError::Registry {
                    registry: self.registry.clone(),
                    detail: format!("fetching {what}: HTTP {code} {}", clip(message.trim())),
                },
            },
            OciDistributionError::DigestError(e) => self.corrupt(&what, e.to_string()),
            OciDistributionError::UnsupportedMediaTypeError(t) => {
                self.unsupported(format!("{what} has the unsupported media type {t}"))
            }
            OciDistributionError::UnsupportedSchemaVersionError(v) => {
                self.unsupported(format!("{what} has the unsupported schema version {v}"))
            }
            other => ImageError::Registry {
                registry: self.registry.clone(),
                detail: format!("fetching {what}: {other}"),
            },
        }
    }
}

/// Fetches manifests with a bounded read: the registry client reads a whole response into
/// memory, so manifests are fetched here, refusing a declared length above [`MAX_METADATA`]
/// before reading and stopping a body that goes past it. Any answer but a 200 is fetched again
/// through the registry client, whose error the pull maps to a clear one.
struct ManifestFetcher<'a> {
    client: &'a Client,
    http: reqwest::Client,
    auth: &'a oci_client::secrets::RegistryAuth,
    /// The bearer token the registry's token service gave, if it uses one.
    token: Option<String>,
    scheme: &'static str,
    ctx: &'a Ctx,
}

impl ManifestFetcher<'_> {
    async fn fetch(&self, reference: &Reference, what: &str) -> Result<Bytes, ImageError> {
        let ctx = self.ctx;
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository(),
            reference
                .digest()
                .unwrap_or_else(|| reference.tag().unwrap_or("latest"))
        );
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
        request = match (&self.token, self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, oci_client::secrets::RegistryAuth::Basic(user, password)) => {
                request.basic_auth(user, Some(password))
            }
            (None, oci_client::secrets::RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (None, _) => request,
        };
        let body = match request.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                self.read_bounded(resp, what).await?
            }
            // Errors, redirects, anything unusual: the registry client says what went wrong.
            _ => {
                let (body, _) = self
                    .client
                    .pull_manifest_raw(reference, self.auth, MANIFEST_TYPES)
                    .await
                    .map_err(|e| ctx.registry_error(e, Phase::Manifest))?;
                if body.len() as u64 > MAX_METADATA {
                    return Err(self.too_large(what, body.len() as u64));
                }
                body
            }
        };
        if let Some(expected) = reference.digest() {
            let got = sha256_of(&body);
            if got != expected {
                return Err(ctx.corrupt(
                    &format!("manifest {}", short(expected)),
                    format!("digest mismatch (expected {expected}, got {got})"),
                ));
            }
        }
        Ok(body)
    }

    async fn read_bounded(
        &self,
        mut resp: reqwest::Response,
        what: &str,
    ) -> Result<Bytes, ImageError> {
        if let Some(len) = resp.content_length()
            && len > MAX_METADATA
        {
            return Err(self.too_large(what, len));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > MAX_METADATA {
                        return Err(self.too_large(what, body.len() as u64 + chunk.len() as u64));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Bytes::from(body)),
                Err(e) => {
                    return Err(self.ctx.unreachable(format!(
                        "downloading the {what} failed: {}",
                        error_chain(&e)
                    )));
                }
            }
        }
    }

    fn too_large(&self, what: &str, size: u64) -> ImageError {
        self.ctx.too_large(
            what,
            format!(
                "the registry sends {size} bytes or more, more than the {MAX_METADATA} allowed \
                 for a manifest; the rest was not read"
            ),
        )
    }
}

/// Fetches the manifest `reference` names; for a manifest list or index, the entry for this
/// host's platform. Returns the image manifest and its digest.
async fn resolve_manifest(
    fetcher: &ManifestFetcher<'_>,
    reference: &Reference,
) -> Result<(String, OciImageManifest), ImageError> {
    let ctx = fetcher.ctx;
    let body = fetcher.fetch(reference, "manifest").await?;
    let digest = sha256_of(&body);
    match parse_manifest(&body, ctx, "manifest")? {
        Parsed::Image(m) => Ok((digest, *m)),
        Parsed::Index(index) => {
            let entry = choose_platform(&index, ctx)?;
            ctx.check_digest(&entry.digest, "the manifest list entry")?;
            let ewhat = format!("manifest {}", short(&entry.digest));
            if entry.size < 0 || entry.size as u64 > MAX_METADATA {
                return Err(ctx.too_large(
                    &ewhat,
                    format!(
                        "the manifest list says it is {} bytes, more than the {MAX_METADATA} \
                         allowed for a manifest; it was not fetched",
                        entry.size
                    ),
                ));
            }
            let platform_ref = reference.clone_with_digest(entry.digest.clone());
            let body = fetcher.fetch(&platform_ref, &ewhat).await?;
            let digest = sha256_of(&body);
            if digest != entry.digest {
                return Err(ctx.corrupt(
                    &format!("manifest {}", short(&entry.digest)),
                    format!("digest mismatch (expected {}, got {digest})", entry.digest),
                ));
            }
            match parse_manifest(&body, ctx, &format!("manifest {}", short(&digest)))? {
                Parsed::Image(m) => Ok((digest, *m)),
                Parsed::Index(_) => Err(ctx.unsupported(format!(
                    "the manifest list's entry {} is itself a manifest list",
                    short(&digest)
                ))),
            }
        }
    }
}

enum Parsed {
    Image(Box<OciImageManifest>),
    Index(OciImageIndex),
}

fn parse_manifest(body: &[u8], ctx: &Ctx, what: &str) -> Result<Parsed, ImageError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ctx.invalid(what, format!("it is not JSON: {e}")))?;
    let schema = value
        .get("schemaVersion")
        .and_then(serde_json::Value::as_u64);
    if schema == Some(1) {
        return Err(ctx.unsupported(format!(
            "its {what} is a Docker schema 1 manifest, which is obsolete; push the image again \
             with a current tool"
        )));
    }
    let media_type = value
        .get("mediaType")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    if let Some(t) = &media_type
        && !MANIFEST_TYPES.contains(&t.as_str())
    {
        return Err(ctx.unsupported(format!(
            "its {what} has media type {t}, which is not an image manifest or manifest list"
        )));
    }
    let is_index = value.get("manifests").is_some()
        || media_type
            .as_deref()
            .is_some_and(|t| t.contains("index") || t.contains("list"));
    if is_index {
        serde_json::from_value(value)
            .map(Parsed::Index)
            .map_err(|e| ctx.invalid(what, format!("cannot parse it as a manifest list: {e}")))
    } else {
        serde_json::from_value(value)
            .map(|m| Parsed::Image(Box::new(m)))
            .map_err(|e| ctx.invalid(what, format!("cannot parse it as an image manifest: {e}")))
    }
}

/// The first entry of an index for linux on this host's architecture.
fn choose_platform<'a>(
    index: &'a OciImageIndex,
    ctx: &Ctx,
) -> Result<&'a ImageIndexEntry, ImageError> {
    let wanted_arch = Arch::default();
    if let Some(entry) = index.manifests.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == Os::Linux && p.architecture == wanted_arch)
    }) {
        return Ok(entry);
    }
    let mut available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|e| e.platform.as_ref())
        // Attestation manifests carry the platform unknown/unknown.
        .filter(|p| p.os.to_string() != "unknown")
        .map(|p| match &p.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
            _ => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    available.sort();
    available.dedup();
    Err(ImageError::RegistryNoPlatform {
        reference: ctx.reference.clone(),
        wanted: host_platform(),
        available: if available.is_empty() {
            "no platforms".to_owned()
        } else {
            available.join(", ")
        },
    })
}

fn host_platform() -> String {
    format!("linux/{}", Arch::default())
}

struct LayerJob<'a> {
    index: usize,
    desc: &'a OciDescriptor,
    diff_id: &'a str,
    what: &'a str,
}

/// Streams one layer blob into a staging directory of the store and verifies it.
async fn fetch_layer(
    client: &Client,
    image_ref: &Reference,
    store: &LayerStore,
    ctx: &Ctx,
    job: LayerJob<'_>,
    progress: &mut (dyn FnMut(PullProgress) + Send),
) -> Result<StagedLayer, ImageError> {
    let LayerJob {
        index,
        desc,
        diff_id,
        what,
    } = job;
    let total = desc.size as u64;
    let report = |done: u64| PullProgress::Layer {
        index,
        digest: desc.digest.clone(),
        total,
        done,
        reused: false,
        complete: false,
    };
    progress(report(0));
    let blob = client
        .pull_blob_stream(image_ref, desc.digest.as_str())
        .await
        .map_err(|e| ctx.registry_error(e, Phase::Blob(what.to_owned())))?;
    let mut stream = blob.stream;

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    let stager = {
        let store = store.clone();
        let what = what.to_owned();
        let image = ctx.reference.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader {
                rx,
                chunk: Bytes::new(),
            };
            store.stage_layer(&mut reader, &what, &image, false, &mut |_| {})
        })
    };

    let mut done = 0u64;
    let mut last_report = Instant::now();
    // Set when the stream ended with the client's own digest check failing (to the digest
    // the blob really has): all the bytes were delivered.
    let mut digest_failed: Option<String> = None;
    let mut failure: Option<ImageError> = None;
    let mut stager_stopped = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                done += chunk.len() as u64;
                if done > total {
                    failure = Some(ctx.corrupt(
                        what,
                        format!(
                            "the registry sent more than the {total} bytes the manifest declares"
                        ),
                    ));
                    break;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    stager_stopped = true;
                    break;
                }
                if last_report.elapsed() >= PROGRESS_INTERVAL {
                    last_report = Instant::now();
                    progress(report(done));
                }
            }
            Err(e) if digest_failure(&e).is_some() => {
                digest_failed = digest_failure(&e);
                break;
            }
            Err(e) => {
                let _ = tx.send(Err(io::Error::other("the download failed"))).await;
                failure = Some(ctx.unreachable(format!(
                    "downloading {what} failed after {done} of {total} bytes: {}",
                    error_chain(&e)
                )));
                break;
            }
        }
    }
    if failure.is_some() {
        let _ = tx
            .send(Err(io::Error::other("the download was abandoned")))
            .await;
    }
    drop(tx);
    let staged = stager
        .await
        .map_err(|e| ImageError::io("extract a layer", store.tmp_root(), io::Error::other(e)))?;
    if let Some(err) = failure {
        return Err(err);
    }
    let staged = match staged {
        Ok(staged) => staged,
        Err(err @ ImageError::Corrupt { .. }) => {
            // A damaged blob usually breaks decompression or the tar first; if its digest is
            // wrong, say that: it is the clearer diagnosis.
            if digest_failed.is_none() && stager_stopped {
                while let Some(item) = stream.next().await {
                    if let Err(e) = item {
                        digest_failed = digest_failure(&e);
                        break;
                    }
                }
            }
            if let Some(actual) = digest_failed {
                let got = if actual.is_empty() {
                    String::new()
                } else {
                    format!(", got {actual}")
                };
                return Err(ctx.corrupt(
                    what,
                    format!(
                        "digest mismatch (expected {}{got}): the registry's copy is damaged",
                        desc.digest
                    ),
                ));
            }
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    if staged.blob_digest != desc.digest {
        return Err(ctx.corrupt(
            what,
            format!(
                "digest mismatch (expected {}, got {})",
                desc.digest, staged.blob_digest
            ),
        ));
    }
    if staged.blob_size != total {
        return Err(ctx.corrupt(
            what,
            format!(
                "size mismatch (the manifest says {total} bytes, the registry sent {})",
                staged.blob_size
            ),
        ));
    }
    if staged.diff_id != diff_id {
        return Err(ctx.corrupt(
            what,
            format!(
                "its uncompressed content does not match the image config's diff id \
                 (expected {diff_id}, got {})",
                staged.diff_id
            ),
        ));
    }
    Ok(staged)
}

/// The digest a blob really has, if a blob stream error is the client's digest verification
/// failing ("" when the error does not say).
fn digest_failure(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<DigestError>()?;
    Some(match inner {
        DigestError::VerificationError { actual, .. } => actual.clone(),
        _ => String::new(),
    })
}

/// Reads the chunks an async task sends, for the blocking extraction.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

fn blob_index_path(store: &LayerStore, blob_digest: &str) -> Option<PathBuf> {
    let hex = sha256_hex(blob_digest).ok()?;
    Some(store.root().join("blobs-index").join("sha256").join(hex))
}

/// The diff id a blob was seen to unpack to, if the index knows it.
fn read_blob_index(store: &LayerStore, blob_digest: &str) -> Option<String> {
    let text = std::fs::read_to_string(blob_index_path(store, blob_digest)?).ok()?;
    let diff_id = text.trim();
    sha256_hex(diff_id).ok().map(|_| diff_id.to_owned())
}

/// Records that a blob unpacks to `diff_id` (written to staging, then renamed into place).
/// The index only saves work, so failing to write it is logged, not an error.
fn write_blob_index(store: &LayerStore, blob_digest: &str, diff_id: &str) {
    let Some(path) = blob_index_path(store, blob_digest) else {
        return;
    };
    let result = (|| -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("index-")
            .tempfile_in(store.tmp_root())?;
        io::Write::write_all(tmp.as_file_mut(), diff_id.as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(
            "cannot record blob {blob_digest} in {}: {e}",
            path.display()
        );
    }
}

/// Whether `registry` (`host[:port]`) is reached over plain HTTP: on loopback, or listed.
pub(crate) fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        let entry = entry
            .strip_prefix("http://")
            .unwrap_or(entry)
            .trim_end_matches('/');
        entry.eq_ignore_ascii_case(registry) || entry.eq_ignore_ascii_case(host)
    })
}

/// The host of `host[:port]` (`[v6]:port` gives `v6`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

/// The client's credentials, and whether there are any.
pub(crate) fn resolve_auth(
    opts: &PullOptions,
    reference: &Reference,
) -> (oci_client::secrets::RegistryAuth, bool) {
    use oci_client::secrets::RegistryAuth as Oci;
    match &opts.auth {
        RegistryAuth::Basic { username, password } => {
            (Oci::Basic(username.clone(), password.clone()), true)
        }
        RegistryAuth::Bearer { token } => (Oci::Bearer(token.clone()), true),
        RegistryAuth::Anonymous => {
            let path = opts.docker_config.clone().or_else(default_docker_config);
            match path.and_then(|p| docker_config_credentials(&p, reference)) {
                Some((user, password)) => (Oci::Basic(user, password), true),
                None => (Oci::Anonymous, false),
            }
        }
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker/config.json"))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The username and password the Docker config file at `path` holds for the reference's
/// registry (`auths.<host>.auth`, base64 of `user:password`), if any.
fn docker_config_credentials(path: &Path, reference: &Reference) -> Option<(String, String)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; pulling without its credentials",
                path.display()
            );
            return None;
        }
    };
    let config: DockerConfig = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "cannot parse {}: {e}; pulling without its credentials",
                path.display()
            );
            return None;
        }
    };
    let mut names = vec![reference.registry(), reference.resolve_registry()];
    if reference.resolve_registry() == "index.docker.io" {
        names.extend(["docker.io", "registry-1.docker.io"]);
    }
    let entry = config.auths.iter().find_map(|(key, entry)| {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let key = key.split('/').next().unwrap_or(key);
        names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(key))
            .then_some(entry)
    })?;
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) => return Some((user.to_owned(), password.to_owned())),
            None => {
                tracing::warn!(
                    "the auth entry for {} in {} is not base64 of user:password; ignoring it",
                    reference.registry(),
                    path.display()
                );
                return None;
            }
        }
    }
    match (&entry.username, &entry.password) {
        (Some(user), Some(password)) => Some((user.clone(), password.clone())),
        _ => None,
    }
}

/// An error and its causes, joined: "error sending request: connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let text = match text.find(" (os error") {
            Some(i) => text[..i].to_owned(),
            None => text,
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The messages of a JSON error body (`{"errors":[{"message":...}]}`, `{"message":...}`,
/// `{"details":...}`), else the body as it is.
fn error_body_message(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let text = |v: &serde_json::Value| {
        ["message", "details", "error"]
            .iter()
            .find_map(|k| v.get(k).and_then(serde_json::Value::as_str))
            .map(str::to_owned)
    };
    if let Some(errors) = value.get("errors").and_then(serde_json::Value::as_array) {
        let messages: Vec<String> = errors.iter().filter_map(text).collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
    }
    text(&value).unwrap_or_else(|| body.to_owned())
}

/// At most a few hundred characters of a registry's message.
fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(is_plain_http(r, &[]), "{r}");
        }
        for r in [
            "index.docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!is_plain_http(r, &[]), "{r}");
        }
        let listed = vec!["reg.internal:5000".to_owned(), "http://other/".to_owned()];
        assert!(is_plain_http("reg.internal:5000", &listed));
        assert!(!is_plain_http("reg.internal:6000", &listed));
        assert!(is_plain_http("other:7000", &listed));
    }

    #[test]
    fn hosts_of_registries() {
        assert_eq!(host_of("a.b:5000"), "a.b");
        assert_eq!(host_of("a.b"), "a.b");
        assert_eq!(host_of("[::1]:5000"), "::1");
    }

    #[test]
    fn docker_config_credentials_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &path,
            serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": {"auth": enc("hub:pw1")},
                    "reg.example:5000": {"auth": enc("me:p:w")},
                    "plain.example": {"username": "u", "password": "p"}
                }
            })
            .to_string(),
        )
        .unwrap();
        let creds = |r: &str| docker_config_credentials(&path, &Reference::try_from(r).unwrap());
        assert_eq!(creds("busybox"), Some(("hub".into(), "pw1".into())));
        assert_eq!(
            creds("reg.example:5000/x/y:1"),
            Some(("me".into(), "p:w".into()))
        );
        assert_eq!(creds("plain.example/x"), Some(("u".into(), "p".into())));
        assert_eq!(creds("other.example/x"), None);
        assert_eq!(
            docker_config_credentials(&dir.path().join("nope"), &Reference::try_from("x").unwrap()),
            None
        );
    }

    #[test]
    fn auth_debug_redacts_secrets() {
        let basic = RegistryAuth::Basic {
            username: "me".into(),
            password: "secret".into(),
        };
        assert!(!format!("{basic:?}").contains("secret"));
        let bearer = RegistryAuth::Bearer {
            token: "tok".into(),
        };
        assert!(!format!("{bearer:?}").contains("tok\""));
    }

    #[test]
    fn progress_serializes_with_an_event_tag() {
        let v = serde_json::to_value(PullProgress::Layer {
            index: 1,
            digest: "sha256:x".into(),
            total: 10,
            done: 5,
            reused: false,
            complete: false,
        })
        .unwrap();
        assert_eq!(v["event"], "layer");
        assert_eq!(v["total"], 10);
        let v = serde_json::to_value(PullProgress::Resolved {
            reference: "r".into(),
            manifest_digest: "d".into(),
            layers: 2,
        })
        .unwrap();
        assert_eq!(v["event"], "resolved");
        assert_eq!(v["manifestDigest"], "d");
    }
}
