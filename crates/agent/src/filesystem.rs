//! The `filesystem.Filesystem` Connect service.
//!
//! Calls run with the agent's root privileges and act for the user named
//! by `Authorization: Basic` (else the default user) for ownership and
//! path resolution: see [`crate::fsops`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use buffa::MessageField;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use hutch_protocol::envd::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, EntryInfo, Filesystem, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse, RemoveRequest, RemoveResponse,
    RemoveWatcherRequest, RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest,
    WatchDirResponse, watch_dir_response,
};

use crate::Agent;
use crate::fsops::{Caller, FsError, FsErrorKind, path_string};
use crate::service::{keepalive_interval, user_from_headers};
use crate::watch::DirWatcher;

/// Serves `filesystem.Filesystem` for one agent.
pub struct FilesystemService {
    agent: Arc<Agent>,
}

impl FilesystemService {
    /// The service of `agent`.
    pub fn new(agent: Arc<Agent>) -> FilesystemService {
        FilesystemService { agent }
    }

    /// Runs `f` for the calling user on the blocking pool: filesystem
    /// calls (a recursive remove, a deep listing) must not stall the
    /// agent's single runtime thread.
    async fn run<T: Send + 'static>(
        &self,
        ctx: &RequestContext,
        f: impl FnOnce(&Caller) -> Result<T, FsError> + Send + 'static,
    ) -> Result<T, ConnectError> {
        let user = user_from_headers(ctx.headers())?;
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let caller = agent.caller(user.as_deref())?;
            f(&caller)
        })
        .await
        .map_err(|e| ConnectError::internal(format!("filesystem task failed: {e}")))?
        .map_err(ConnectError::from)
    }

    /// Starts an inotify watcher for `WatchDir` / `CreateWatcher`. Adding
    /// the watches of a big tree takes a while: off the runtime.
    async fn watch(
        &self,
        ctx: &RequestContext,
        path: String,
        recursive: bool,
        include_entry: bool,
        allow_network_mounts: bool,
    ) -> Result<DirWatcher, ConnectError> {
        self.run(ctx, move |caller| {
            start_watcher(
                caller,
                &path,
                recursive,
                include_entry,
                allow_network_mounts,
            )
        })
        .await
    }
}

/// `MakeDir`: creates `path` and missing parents, owned by the caller.
fn make_dir(caller: &Caller, raw: &str) -> Result<EntryInfo, FsError> {
    let path = caller.resolve(raw)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(FsError::new(
                FsErrorKind::AlreadyExists,
                format!("directory {} already exists", path.display()),
            ));
        }
        Ok(_) => {
            return Err(FsError::new(
                FsErrorKind::InvalidArgument,
                format!(
                    "path {} already exists and is not a directory",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::io(format!("checking {}", path.display()), &e)),
    }
    caller.ensure_dirs(&path)?;
    caller.entry_info(&path)
}

/// `Move`: renames `source` to `destination`, creating the destination's
/// missing parents (owned by the caller); returns the moved entry.
fn move_entry(caller: &Caller, source: &str, destination: &str) -> Result<EntryInfo, FsError> {
    let source = caller.resolve(source)?;
    let destination = caller.resolve(destination)?;
    if let Err(e) = std::fs::symlink_metadata(&source) {
        return Err(FsError::io(format!("source {}", source.display()), &e));
    }
    if let Some(parent) = destination.parent() {
        caller.ensure_dirs(parent)?;
    }
    std::fs::rename(&source, &destination).map_err(|e| {
        FsError::io(
            format!("moving {} to {}", source.display(), destination.display()),
            &e,
        )
    })?;
    caller.entry_info(&destination)
}

/// `ListDir`: the entries under `path` (a directory, or a symlink to one)
/// down to `depth` levels, depth first, each directory's entries sorted by
/// name, as E2B lists them. Symlinked subdirectories are listed but not
/// entered. Entry paths are under the requested path, not the symlink's
/// target.
fn list_dir(caller: &Caller, raw: &str, depth: u32) -> Result<Vec<EntryInfo>, FsError> {
    let depth = depth.max(1);
    let requested = caller.resolve(raw)?;
    let real = std::fs::canonicalize(&requested)
        .map_err(|e| FsError::io(format!("path {}", requested.display()), &e))?;
    let meta = std::fs::metadata(&real)
        .map_err(|e| FsError::io(format!("path {}", requested.display()), &e))?;
    if !meta.is_dir() {
        return Err(FsError::new(
            FsErrorKind::InvalidArgument,
            format!("path {} is not a directory", requested.display()),
        ));
    }
    let mut entries = Vec::new();
    walk(caller, &real, &requested, 1, depth, &mut entries)?;
    Ok(entries)
}

fn walk(
    caller: &Caller,
    dir: &Path,
    shown: &Path,
    level: u32,
    depth: u32,
    out: &mut Vec<EntryInfo>,
) -> Result<(), FsError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| FsError::io(format!("reading directory {}", shown.display()), &e))?;
    let mut children: Vec<(std::ffi::OsString, bool)> = Vec::new();
    for entry in read {
        let entry =
            entry.map_err(|e| FsError::io(format!("reading directory {}", shown.display()), &e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        children.push((entry.file_name(), is_dir));
    }
    children.sort();
    for (name, is_dir) in children {
        let mut info = match caller.entry_info(&dir.join(&name)) {
            Ok(info) => info,
            // Removed while we looked.
            Err(e) if e.kind == FsErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let shown_child = shown.join(&name);
        info.path = path_string(&shown_child);
        out.push(info);
        if is_dir && level < depth {
            match walk(
                caller,
                &dir.join(&name),
                &shown_child,
                level + 1,
                depth,
                out,
            ) {
                Err(e) if e.kind == FsErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// `Remove`: removes a file, symlink or directory tree. A path that does
/// not exist is not an error: E2B's agent removes with `os.RemoveAll`, and
/// the SDKs' `files.remove` of a missing path succeeds.
fn remove(caller: &Caller, raw: &str) -> Result<(), FsError> {
    let path = caller.resolve(raw)?;
    if path == Path::new("/") {
        return Err(FsError::new(
            FsErrorKind::InvalidArgument,
            "refusing to remove /",
        ));
    }
    let result = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io(format!("removing {}", path.display()), &e)),
    }
}

fn start_watcher(
    caller: &Caller,
    raw: &str,
    recursive: bool,
    include_entry: bool,
    allow_network_mounts: bool,
) -> Result<DirWatcher, FsError> {
    let path: PathBuf = caller.resolve(raw)?;
    if !allow_network_mounts && is_network_mount(&path) {
        return Err(FsError::new(
            FsErrorKind::InvalidArgument,
            format!(
                "cannot watch path on network filesystem: {} (set allow_network_mounts)",
                path.display()
            ),
        ));
    }
    DirWatcher::new(path, recursive, include_entry, caller.clone())
}

/// Whether `path` is on NFS, CIFS/SMB or FUSE, where inotify sees only
/// local changes (E2B refuses to watch those unless asked to).
fn is_network_mount(path: &Path) -> bool {
    const NFS: i64 = 0x6969;
    const CIFS: i64 = 0xFF53_4D42;
    const SMB: i64 = 0x517B;
    const SMB2: i64 = 0xFE53_4D42;
    const FUSE: i64 = 0x6573_5546;
    let Ok(cpath) =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `cpath` is NUL-terminated and `stat` is writable.
    if unsafe { libc::statfs(cpath.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let kind = stat.f_type as i64;
    matches!(kind, NFS | CIFS | SMB | SMB2 | FUSE)
}

fn watch_response(event: watch_dir_response::Event) -> WatchDirResponse {
    WatchDirResponse {
        event: Some(event),
        ..Default::default()
    }
}

fn filesystem_event(event: FilesystemEvent) -> WatchDirResponse {
    watch_response(event.into())
}

/// `start`, then the watcher's events (with keepalives in between when
/// asked for) until the client goes or the watcher fails.
fn watch_stream(
    watcher: DirWatcher,
    keepalive: Option<Duration>,
) -> ServiceStream<WatchDirResponse> {
    let ticker = keepalive.map(|period| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let start = futures::stream::once(async {
        Ok(watch_response(
            watch_dir_response::StartEvent::default().into(),
        ))
    });
    let events = futures::stream::unfold(
        (Some(watcher), ticker),
        |(watcher, mut ticker)| async move {
            let mut watcher = watcher?;
            let next = match ticker.as_mut() {
                Some(t) => tokio::select! {
                    biased;
                    ev = watcher.next() => ev,
                    _ = t.tick() => {
                        let keepalive = watch_response(watch_dir_response::KeepAlive::default().into());
                        return Some((Ok(keepalive), (Some(watcher), ticker)));
                    }
                },
                None => watcher.next().await,
            };
            match next {
                Ok(event) => Some((Ok(filesystem_event(event)), (Some(watcher), ticker))),
                Err(e) => Some((Err(e.to_connect()), (None, ticker))),
            }
        },
    );
    Box::pin(futures::StreamExt::chain(start, events))
}

// Handlers return concrete message types where the trait allows any
// encodable one.
#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let path = request.to_owned_message().path;
        let entry = self
            .run(&ctx, move |caller| {
                caller.entry_info(&caller.resolve(&path)?)
            })
            .await?;
        Response::ok(StatResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let path = request.to_owned_message().path;
        let entry = self
            .run(&ctx, move |caller| make_dir(caller, &path))
            .await?;
        Response::ok(MakeDirResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let request = request.to_owned_message();
        let entry = self
            .run(&ctx, move |caller| {
                move_entry(caller, &request.source, &request.destination)
            })
            .await?;
        Response::ok(MoveResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let request = request.to_owned_message();
        let entries = self
            .run(&ctx, move |caller| {
                list_dir(caller, &request.path, request.depth)
            })
            .await?;
        Response::ok(ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let path = request.to_owned_message().path;
        self.run(&ctx, move |caller| remove(caller, &path)).await?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let request = request.to_owned_message();
        let watcher = self
            .watch(
                &ctx,
                request.path,
                request.recursive,
                request.include_entry,
                request.allow_network_mounts,
            )
            .await?;
        Ok(Response::new(watch_stream(
            watcher,
            keepalive_interval(&ctx),
        )))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let request = request.to_owned_message();
        let watcher = self
            .watch(
                &ctx,
                request.path,
                request.recursive,
                request.include_entry,
                request.allow_network_mounts,
            )
            .await?;
        let watcher_id = self.agent.watchers.create(watcher);
        Response::ok(CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        let id = request.to_owned_message().watcher_id;
        // Let watcher tasks woken with this request (the kernel queued
        // their events before it came) buffer them first: SDKs call this
        // right after the change they want to see.
        tokio::task::yield_now().await;
        let events = self.agent.watchers.take(&id)?;
        Response::ok(GetWatcherEventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        let id = request.to_owned_message().watcher_id;
        self.agent.watchers.remove(&id)?;
        Response::ok(RemoveWatcherResponse::default())
    }
}
