//! Directory watchers on inotify, for `WatchDir` (a stream) and the polling
//! `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`.
//!
//! Events follow E2B's agent (fsnotify semantics): `IN_CREATE` and
//! `IN_MOVED_TO` are `CREATE`, `IN_MOVED_FROM` is `RENAME` (of the old
//! name), `IN_MODIFY` is `WRITE`, `IN_ATTRIB` is `CHMOD`, `IN_DELETE` is
//! `REMOVE`; the watched directory itself being removed or moved away is
//! `REMOVE` / `RENAME` of `"."`. Names are relative to the watched
//! directory (`sub/file.txt` in a recursive watch).
//!
//! A recursive watch puts a watch on every directory under the root
//! (symlinks are not followed), and on every directory created or moved in
//! later. Entries already inside a directory when its watch is added (a
//! `mkdir -p a/b/c` races the watcher) are reported as `CREATE` events, so
//! nothing created in a new directory goes unseen.
//!
//! The temporary files uploads write before renaming them into place are
//! left out, so a watcher sees an upload as the file appearing under its
//! own name (see [`crate::transfer`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use buffa::MessageField;
use futures::StreamExt as _;
use hutch_protocol::envd::filesystem::{EventType, FilesystemEvent};
use inotify::{EventMask, EventOwned, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::fsops::{Caller, FsError, FsErrorKind, is_upload_temp, path_string};

/// What every watch asks the kernel for.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// One watched directory tree.
pub struct DirWatcher {
    events: EventStream<Vec<u8>>,
    watches: Watches,
    /// Watched directories by watch descriptor, relative to the root (the
    /// root is the empty path).
    dirs: HashMap<i32, (WatchDescriptor, PathBuf)>,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    caller: Caller,
    pending: VecDeque<FilesystemEvent>,
    root_gone: bool,
}

impl DirWatcher {
    /// Starts watching `root`, which must be a directory (symlinks to one
    /// are followed). Errors: `not_found`, `invalid_argument` (not a
    /// directory), `resource_exhausted` (inotify limits).
    pub fn new(
        root: PathBuf,
        recursive: bool,
        include_entry: bool,
        caller: Caller,
    ) -> Result<DirWatcher, FsError> {
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FsError::new(
                    FsErrorKind::InvalidArgument,
                    format!("path {} is not a directory", root.display()),
                ));
            }
            Err(e) => {
                return Err(FsError::io(format!("path {}", root.display()), &e));
            }
        }
        let inotify =
            Inotify::init().map_err(|e| watch_error("creating an inotify instance", &e))?;
        let events = inotify
            .into_event_stream(vec![0u8; 8192])
            .map_err(|e| watch_error("registering the inotify instance", &e))?;
        let watches = events.watches();
        let mut watcher = DirWatcher {
            events,
            watches,
            dirs: HashMap::new(),
            root,
            recursive,
            include_entry,
            caller,
            pending: VecDeque::new(),
            root_gone: false,
        };
        let wd = watcher
            .watches
            .add(&watcher.root, mask() | WatchMask::ONLYDIR)
            .map_err(|e| watch_error(format!("watching {}", watcher.root.display()), &e))?;
        watcher
            .dirs
            .insert(wd.get_watch_descriptor_id(), (wd, PathBuf::new()));
        if recursive {
            watcher.watch_children(Path::new(""), false)?;
        }
        Ok(watcher)
    }

    /// The next event. Cancel-safe: an event is never half taken.
    pub async fn next(&mut self) -> Result<FilesystemEvent, FsError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.root_gone {
                // Like E2B's agent: the stream stays open, silent, until
                // the client goes.
                return std::future::pending().await;
            }
            match self.events.next().await {
                Some(Ok(event)) => self.handle(event)?,
                Some(Err(e)) => return Err(watch_error("reading inotify events", &e)),
                None => {
                    return Err(FsError::new(
                        FsErrorKind::Internal,
                        "the inotify instance closed",
                    ));
                }
            }
        }
    }

    fn handle(&mut self, event: EventOwned) -> Result<(), FsError> {
        let mask = event.mask;
        if mask.contains(EventMask::Q_OVERFLOW) {
            return Err(FsError::new(
                FsErrorKind::NoSpace,
                "too many filesystem events: the kernel's inotify queue overflowed and events were lost",
            ));
        }
        let id = event.wd.get_watch_descriptor_id();
        if mask.contains(EventMask::IGNORED) {
            if let Some((_, rel)) = self.dirs.remove(&id)
                && rel.as_os_str().is_empty()
            {
                self.root_gone = true;
            }
            return Ok(());
        }
        let Some((_, dir)) = self.dirs.get(&id) else {
            // A watch removed with events still queued.
            return Ok(());
        };
        let dir = dir.clone();
        let Some(name) = event.name else {
            // An event on a watched directory itself. For subdirectories
            // their parent reports the same change.
            if dir.as_os_str().is_empty() {
                if mask.contains(EventMask::DELETE_SELF) {
                    self.push(".".into(), EventType::EVENT_TYPE_REMOVE);
                }
                if mask.contains(EventMask::MOVE_SELF) {
                    self.push(".".into(), EventType::EVENT_TYPE_RENAME);
                }
            }
            return Ok(());
        };
        if is_upload_temp(&name) {
            return Ok(());
        }
        let rel = dir.join(&name);
        let created = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        // fsnotify's order when one event carries several operations.
        if created {
            self.push(rel.clone(), EventType::EVENT_TYPE_CREATE);
        }
        if mask.contains(EventMask::MOVED_FROM) {
            self.push(rel.clone(), EventType::EVENT_TYPE_RENAME);
        }
        if mask.contains(EventMask::ATTRIB) {
            self.push(rel.clone(), EventType::EVENT_TYPE_CHMOD);
        }
        if mask.contains(EventMask::MODIFY) {
            self.push(rel.clone(), EventType::EVENT_TYPE_WRITE);
        }
        if mask.contains(EventMask::DELETE) {
            self.push(rel.clone(), EventType::EVENT_TYPE_REMOVE);
        }
        if self.recursive && mask.contains(EventMask::ISDIR) {
            if mask.contains(EventMask::MOVED_FROM) {
                self.unwatch_tree(&rel);
            }
            if created {
                self.watch_tree(&rel, mask.contains(EventMask::CREATE))?;
            }
        }
        Ok(())
    }

    fn push(&mut self, rel: PathBuf, kind: EventType) {
        let entry = if self.include_entry
            && matches!(
                kind,
                EventType::EVENT_TYPE_CREATE
                    | EventType::EVENT_TYPE_WRITE
                    | EventType::EVENT_TYPE_CHMOD
            ) {
            // Best effort: the entry may be gone already.
            self.caller.entry_info(&self.root.join(&rel)).ok()
        } else {
            None
        };
        self.pending.push_back(FilesystemEvent {
            name: path_string(&rel),
            r#type: kind.into(),
            entry: entry.map_or_else(MessageField::none, MessageField::some),
            ..Default::default()
        });
    }

    /// Watches the directory `rel` and everything under it; with
    /// `report`, entries found inside are reported as created.
    fn watch_tree(&mut self, rel: &Path, report: bool) -> Result<(), FsError> {
        let path = self.root.join(rel);
        match self
            .watches
            .add(&path, mask() | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW)
        {
            Ok(wd) => {
                self.dirs
                    .insert(wd.get_watch_descriptor_id(), (wd, rel.to_path_buf()));
            }
            // Gone (or replaced by a non-directory) already.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(());
            }
            Err(e) => return Err(watch_error(format!("watching {}", path.display()), &e)),
        }
        self.watch_children(rel, report)
    }

    /// Watches the subdirectories of the (already watched) directory `rel`.
    fn watch_children(&mut self, rel: &Path, report: bool) -> Result<(), FsError> {
        let Ok(entries) = std::fs::read_dir(self.root.join(rel)) else {
            return Ok(());
        };
        let mut children: Vec<(OsString, bool)> = entries
            .filter_map(Result::ok)
            .map(|e| (e.file_name(), e.file_type().is_ok_and(|t| t.is_dir())))
            .filter(|(name, _)| !is_upload_temp(name))
            .collect();
        children.sort();
        for (name, is_dir) in children {
            let child = rel.join(&name);
            if report {
                self.push(child.clone(), EventType::EVENT_TYPE_CREATE);
            }
            if is_dir {
                self.watch_tree(&child, report)?;
            }
        }
        Ok(())
    }

    /// Stops watching the directory `rel` and everything under it (it was
    /// moved away: its watches would report under stale names).
    fn unwatch_tree(&mut self, rel: &Path) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(_, (_, dir))| !dir.as_os_str().is_empty() && dir.starts_with(rel))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some((wd, _)) = self.dirs.remove(&id) {
                // Already gone with the directory: nothing to undo.
                let _ = self.watches.remove(wd);
            }
        }
    }
}

fn watch_error(what: impl std::fmt::Display, e: &std::io::Error) -> FsError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EMFILE) => FsError::new(
            FsErrorKind::NoSpace,
            format!(
                "{what}: {e} (inotify limits reached: see /proc/sys/fs/inotify/max_user_watches and max_user_instances)"
            ),
        ),
        _ => FsError::io(what, e),
    }
}

/// Most events a polling watcher keeps between two `GetWatcherEvents`.
pub const MAX_BUFFERED_EVENTS: usize = 65_536;

#[derive(Default)]
struct PollState {
    events: Vec<FilesystemEvent>,
    error: Option<FsError>,
}

struct PollWatcher {
    state: Arc<Mutex<PollState>>,
    task: tokio::task::AbortHandle,
}

/// The polling watchers of one agent, by id.
#[derive(Default)]
pub struct PollWatchers {
    watchers: Mutex<HashMap<String, PollWatcher>>,
}

impl PollWatchers {
    /// Starts buffering the events of `watcher`; returns its id.
    pub fn create(&self, mut watcher: DirWatcher) -> String {
        let state = Arc::new(Mutex::new(PollState::default()));
        let buffer = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = watcher.next().await;
                let mut state = buffer.lock().unwrap_or_else(|e| e.into_inner());
                match next {
                    Ok(_) if state.events.len() >= MAX_BUFFERED_EVENTS => {
                        state.error = Some(FsError::new(
                            FsErrorKind::NoSpace,
                            format!(
                                "more than {MAX_BUFFERED_EVENTS} events since the last GetWatcherEvents: the watcher stopped"
                            ),
                        ));
                        return;
                    }
                    Ok(event) => state.events.push(event),
                    Err(e) => {
                        state.error = Some(e);
                        return;
                    }
                }
            }
        });
        let id = format!("w{:016x}", crate::fsops::random_u64());
        self.lock().insert(
            id.clone(),
            PollWatcher {
                state,
                task: task.abort_handle(),
            },
        );
        id
    }

    /// The events since the last call; the watcher's error once it failed.
    pub fn take(&self, id: &str) -> Result<Vec<FilesystemEvent>, FsError> {
        let watchers = self.lock();
        let watcher = watchers.get(id).ok_or_else(|| not_found(id))?;
        let mut state = watcher.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &state.error {
            return Err(e.clone());
        }
        Ok(std::mem::take(&mut state.events))
    }

    /// Stops and forgets a watcher.
    pub fn remove(&self, id: &str) -> Result<(), FsError> {
        let watcher = self.lock().remove(id).ok_or_else(|| not_found(id))?;
        watcher.task.abort();
        Ok(())
    }

    /// How many watchers exist.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PollWatcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PollWatchers {
    fn drop(&mut self) {
        for watcher in self.lock().values() {
            watcher.task.abort();
        }
    }
}

fn not_found(id: &str) -> FsError {
    FsError::new(
        FsErrorKind::NotFound,
        format!("watcher with id {id} not found"),
    )
}
