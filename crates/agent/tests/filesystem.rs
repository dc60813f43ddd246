//! The `filesystem.Filesystem` service on real files and real inotify.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use connectrpc::ErrorCode;
use connectrpc::client::ServerStream;
use connectrpc::http_body::Body;
use hutch_protocol::envd::filesystem::{
    CreateWatcherRequest, EntryInfo, EventType, FileType, FilesystemEvent, GetWatcherEventsRequest,
    ListDirRequest, MakeDirRequest, MoveRequest, RemoveRequest, RemoveWatcherRequest, StatRequest,
    WatchDirRequest, WatchDirResponseView, watch_dir_response,
};

const NOBODY: u32 = 65534;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn stat_req(path: &str) -> StatRequest {
    StatRequest {
        path: path.into(),
        ..Default::default()
    }
}

fn kind(entry: &EntryInfo) -> FileType {
    entry.r#type.as_known().unwrap()
}

#[tokio::test]
async fn stat_describes_files_directories_and_symlinks() {
    let t = TestAgent::start().await;
    let client = t.fs_client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"test").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink("a.txt", &link).unwrap();

    let entry = client
        .stat(stat_req(&s(&file)))
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(entry.name, "a.txt");
    assert_eq!(kind(&entry), FileType::FILE_TYPE_FILE);
    assert_eq!(entry.path, s(&file));
    assert_eq!(entry.size, 4);
    assert_eq!(entry.mode, 0o644);
    assert_eq!(entry.permissions, "-rw-r--r--");
    assert_eq!(entry.owner, "root");
    assert_eq!(entry.group, "root");
    let mtime = entry.modified_time.as_option().expect("modified time");
    let expected = std::fs::metadata(&file).unwrap().mtime();
    assert_eq!(mtime.seconds, expected);
    assert!(entry.symlink_target.is_none());
    assert!(entry.metadata.is_empty());

    let entry = client
        .stat(stat_req(&s(&sub)))
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(kind(&entry), FileType::FILE_TYPE_DIRECTORY);
    assert_eq!(entry.mode, 0o755);
    assert_eq!(entry.permissions, "drwxr-xr-x");
    assert!(entry.size > 0);

    let entry = client
        .stat(stat_req(&s(&link)))
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(entry.name, "link.txt");
    assert_eq!(kind(&entry), FileType::FILE_TYPE_SYMLINK);
    assert_eq!(entry.symlink_target.as_deref(), Some(s(&file).as_str()));
    assert_eq!(
        entry.mode, 0o644,
        "a symlink reports its target's permission bits"
    );
    assert_eq!(entry.permissions, "Lrwxrwxrwx");

    // Files owned by a user without a passwd entry show numbers.
    std::os::unix::fs::chown(&file, Some(54321), Some(54321)).unwrap();
    let entry = client
        .stat(stat_req(&s(&file)))
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(
        (entry.owner.as_str(), entry.group.as_str()),
        ("54321", "54321")
    );

    let err = client
        .stat(stat_req(&s(&dir.path().join("missing"))))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn relative_paths_and_tilde_resolve_against_home() {
    let t = TestAgent::start().await;
    // The default user is root, whose home is /root.
    let client = t.fs_client();
    for path in ["~", "~/", "", "."] {
        let entry = client
            .stat(stat_req(path))
            .await
            .unwrap()
            .into_owned()
            .entry
            .into_option()
            .unwrap();
        assert_eq!(entry.path, "/root", "{path:?}");
    }
    let err = client.stat(stat_req("~nobody/x")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    // An unknown user is refused.
    let err = t
        .fs_client_as("no-such-user", &[])
        .stat(stat_req("/"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    assert!(
        err.message
            .as_deref()
            .unwrap_or_default()
            .contains("no-such-user")
    );
}

#[tokio::test]
async fn make_dir_creates_parents_owned_by_the_user() {
    let t = TestAgent::start().await;
    let client = t.fs_client_as("nobody", &[]);
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let entry = client
        .make_dir(MakeDirRequest {
            path: s(&nested),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(entry.name, "c");
    assert_eq!(entry.path, s(&nested));
    assert_eq!(kind(&entry), FileType::FILE_TYPE_DIRECTORY);
    assert_eq!(entry.owner, "nobody");
    assert_eq!(entry.permissions, "drwxr-xr-x");
    for p in ["a", "a/b", "a/b/c"] {
        let m = std::fs::metadata(dir.path().join(p)).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY), "{p}");
    }
    // The existing parent keeps its owner.
    assert_eq!(std::fs::metadata(dir.path()).unwrap().uid(), 0);

    let err = client
        .make_dir(MakeDirRequest {
            path: s(&nested),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::AlreadyExists, "{err:?}");

    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    let err = client
        .make_dir(MakeDirRequest {
            path: s(&file),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    let err = client
        .make_dir(MakeDirRequest {
            path: s(&file.join("below")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn move_renames_and_creates_destination_parents() {
    let t = TestAgent::start().await;
    let client = t.fs_client_as("nobody", &[]);
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("old.txt");
    std::fs::write(&from, b"content").unwrap();
    let to = dir.path().join("new/dir/new.txt");
    let entry = client
        .r#move(MoveRequest {
            source: s(&from),
            destination: s(&to),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(entry.name, "new.txt");
    assert_eq!(entry.path, s(&to));
    assert_eq!(entry.size, 7);
    assert!(!from.exists());
    assert_eq!(std::fs::read(&to).unwrap(), b"content");
    assert_eq!(
        std::fs::metadata(dir.path().join("new")).unwrap().uid(),
        NOBODY
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("new/dir")).unwrap().uid(),
        NOBODY
    );

    let err = client
        .r#move(MoveRequest {
            source: s(&from),
            destination: s(&dir.path().join("x/y")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    // Nothing was created for the failed move.
    assert!(!dir.path().join("x").exists());
}

fn list(entries: &[EntryInfo], root: &Path) -> Vec<(String, FileType)> {
    entries
        .iter()
        .map(|e| {
            let rel = Path::new(&e.path).strip_prefix(root).unwrap();
            assert_eq!(e.name, rel.file_name().unwrap().to_str().unwrap());
            (rel.to_str().unwrap().to_owned(), kind(e))
        })
        .collect()
}

#[tokio::test]
async fn list_dir_walks_to_the_requested_depth() {
    let t = TestAgent::start().await;
    let client = t.fs_client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in [
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2/subdir2_1/deep",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("file1.txt"), b"hello").unwrap();
    std::fs::write(root.join("subdir1/inner.txt"), b"x").unwrap();
    std::os::unix::fs::symlink(root.join("subdir2"), root.join("zlink")).unwrap();

    let ls = |depth: u32, path: String| {
        let client = &client;
        async move {
            client
                .list_dir(ListDirRequest {
                    path,
                    depth,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_owned().entries)
        }
    };
    use FileType::*;
    let one = vec![
        ("file1.txt".to_owned(), FILE_TYPE_FILE),
        ("subdir1".to_owned(), FILE_TYPE_DIRECTORY),
        ("subdir2".to_owned(), FILE_TYPE_DIRECTORY),
        ("zlink".to_owned(), FILE_TYPE_SYMLINK),
    ];
    // Depth 0 means 1.
    assert_eq!(list(&ls(0, s(root)).await.unwrap(), root), one);
    assert_eq!(list(&ls(1, s(root)).await.unwrap(), root), one);
    let two: Vec<(String, FileType)> = [
        ("file1.txt", FILE_TYPE_FILE),
        ("subdir1", FILE_TYPE_DIRECTORY),
        ("subdir1/inner.txt", FILE_TYPE_FILE),
        ("subdir1/subdir1_1", FILE_TYPE_DIRECTORY),
        ("subdir1/subdir1_2", FILE_TYPE_DIRECTORY),
        ("subdir2", FILE_TYPE_DIRECTORY),
        ("subdir2/subdir2_1", FILE_TYPE_DIRECTORY),
        // A symlinked directory is listed, not entered.
        ("zlink", FILE_TYPE_SYMLINK),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_owned(), k))
    .collect();
    let entries = ls(2, s(root)).await.unwrap();
    assert_eq!(list(&entries, root), two);
    assert_eq!(entries[0].size, 5);
    let three = ls(3, s(root)).await.unwrap();
    assert_eq!(three.len(), two.len() + 1);
    assert!(
        three
            .iter()
            .any(|e| e.path == s(&root.join("subdir2/subdir2_1/deep")))
    );

    // Listing through a symlink keeps the requested path in entry paths.
    let via_link = ls(1, s(&root.join("zlink"))).await.unwrap();
    assert_eq!(
        list(&via_link, &root.join("zlink")),
        vec![("subdir2_1".to_owned(), FILE_TYPE_DIRECTORY)]
    );

    let err = ls(1, s(&root.join("file1.txt"))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
    let err = ls(1, s(&root.join("missing"))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
}

#[tokio::test]
async fn remove_deletes_files_and_trees() {
    let t = TestAgent::start().await;
    // The host's client: h2c on the unix socket, proto codec.
    let client = t.fs_unix_client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, b"x").unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/c.txt"), b"x").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&tree, &link).unwrap();

    let rm = |path: &Path| {
        client.remove(RemoveRequest {
            path: s(path),
            ..Default::default()
        })
    };
    rm(&file).await.unwrap();
    assert!(!file.exists());
    // Removing a symlink removes the link, not its target.
    rm(&link).await.unwrap();
    assert!(link.symlink_metadata().is_err());
    assert!(tree.join("a/b/c.txt").exists());
    rm(&tree).await.unwrap();
    assert!(!tree.exists());
    // A path that does not exist is removed already (as E2B's agent and
    // the SDKs' tests have it).
    rm(&dir.path().join("missing")).await.unwrap();

    let err = client.stat(stat_req(&s(&file))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

/// Reads filesystem events until `done` says so (or 10 s pass).
async fn watch_events<B>(
    stream: &mut ServerStream<B, WatchDirResponseView<'static>>,
    mut done: impl FnMut(&[FilesystemEvent]) -> bool,
) -> Vec<FilesystemEvent>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&events) {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {:?}", names(&events)))
            .expect("stream error")
            .expect("stream ended");
        match msg.to_owned_message().event {
            Some(watch_dir_response::Event::Filesystem(e)) => events.push(*e),
            Some(watch_dir_response::Event::Keepalive(_)) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    events
}

fn names(events: &[FilesystemEvent]) -> Vec<(String, EventType)> {
    events
        .iter()
        .map(|e| (e.name.clone(), e.r#type.as_known().unwrap()))
        .collect()
}

fn has(events: &[FilesystemEvent], name: &str, kind: EventType) -> bool {
    names(events).iter().any(|(n, k)| n == name && *k == kind)
}

async fn expect_start<B>(stream: &mut ServerStream<B, WatchDirResponseView<'static>>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .to_owned_message();
    assert!(
        matches!(first.event, Some(watch_dir_response::Event::Start(_))),
        "{first:?}"
    );
}

#[tokio::test]
async fn recursive_watch_follows_new_subdirectories() {
    use EventType::*;
    let t = TestAgent::start().await;
    let client = t.fs_client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut stream = client
        .watch_dir(WatchDirRequest {
            path: s(&root),
            recursive: true,
            include_entry: true,
            ..Default::default()
        })
        .await
        .unwrap();
    expect_start(&mut stream).await;

    // A subdirectory created after the watch started.
    std::fs::create_dir(root.join("sub")).unwrap();
    let events = watch_events(&mut stream, |e| has(e, "sub", EVENT_TYPE_CREATE)).await;
    let created = events.iter().find(|e| e.name == "sub").unwrap();
    let entry = created.entry.as_option().expect("include_entry");
    assert_eq!(entry.path, s(&root.join("sub")));
    assert_eq!(kind(entry), FileType::FILE_TYPE_DIRECTORY);

    let file = root.join("sub/a.txt");
    std::fs::write(&file, b"hello").unwrap();
    let events = watch_events(&mut stream, |e| has(e, "sub/a.txt", EVENT_TYPE_WRITE)).await;
    assert!(
        has(&events, "sub/a.txt", EVENT_TYPE_CREATE),
        "{:?}",
        names(&events)
    );
    let write = events
        .iter()
        .find(|e| e.name == "sub/a.txt" && e.r#type.as_known() == Some(EVENT_TYPE_WRITE))
        .unwrap();
    assert_eq!(write.entry.as_option().unwrap().path, s(&file));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    watch_events(&mut stream, |e| has(e, "sub/a.txt", EVENT_TYPE_CHMOD)).await;

    std::fs::rename(&file, root.join("sub/b.txt")).unwrap();
    let events = watch_events(&mut stream, |e| has(e, "sub/b.txt", EVENT_TYPE_CREATE)).await;
    assert!(
        has(&events, "sub/a.txt", EVENT_TYPE_RENAME),
        "{:?}",
        names(&events)
    );
    // The old name is gone: no entry for a rename.
    let renamed = events
        .iter()
        .find(|e| e.r#type.as_known() == Some(EVENT_TYPE_RENAME))
        .unwrap();
    assert!(renamed.entry.as_option().is_none());

    std::fs::remove_file(root.join("sub/b.txt")).unwrap();
    watch_events(&mut stream, |e| has(e, "sub/b.txt", EVENT_TYPE_REMOVE)).await;

    // Deeper trees made at once (mkdir -p races the watcher): every level
    // is reported, and watched.
    std::fs::create_dir_all(root.join("x/y/z")).unwrap();
    watch_events(&mut stream, |e| has(e, "x/y/z", EVENT_TYPE_CREATE)).await;
    std::fs::write(root.join("x/y/z/deep.txt"), b"1").unwrap();
    watch_events(&mut stream, |e| has(e, "x/y/z/deep.txt", EVENT_TYPE_WRITE)).await;

    // A directory moved away stops being reported under its old name.
    let outside = tempfile::tempdir().unwrap();
    std::fs::rename(root.join("x"), outside.path().join("x")).unwrap();
    watch_events(&mut stream, |e| has(e, "x", EVENT_TYPE_RENAME)).await;
    std::fs::write(outside.path().join("x/y/z/after.txt"), b"1").unwrap();
    std::fs::write(root.join("marker"), b"1").unwrap();
    let events = watch_events(&mut stream, |e| has(e, "marker", EVENT_TYPE_WRITE)).await;
    assert!(
        !events.iter().any(|e| e.name.contains("after.txt")),
        "{:?}",
        names(&events)
    );
}

#[tokio::test]
async fn plain_watch_ignores_subdirectories_and_sends_keepalives() {
    use EventType::*;
    let t = TestAgent::start().await;
    let client = t.fs_client_as("root", &[("keepalive-ping-interval", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("sub")).unwrap();
    let mut stream = client
        .watch_dir(WatchDirRequest {
            path: s(&root),
            ..Default::default()
        })
        .await
        .unwrap();
    expect_start(&mut stream).await;
    std::fs::write(root.join("sub/inner.txt"), b"x").unwrap();
    std::fs::write(root.join("top.txt"), b"x").unwrap();
    let events = watch_events(&mut stream, |e| has(e, "top.txt", EVENT_TYPE_WRITE)).await;
    assert!(
        !events.iter().any(|e| e.name.contains("inner")),
        "{:?}",
        names(&events)
    );
    // Without include_entry, no entries.
    assert!(events.iter().all(|e| e.entry.as_option().is_none()));

    // Then nothing happens: keepalives come.
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no keepalive")
        .unwrap()
        .unwrap()
        .to_owned_message();
    assert!(
        matches!(msg.event, Some(watch_dir_response::Event::Keepalive(_))),
        "{msg:?}"
    );
}

#[tokio::test]
async fn watch_needs_an_existing_directory() {
    let t = TestAgent::start().await;
    let client = t.fs_client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    for (path, code) in [
        (dir.path().join("missing"), ErrorCode::NotFound),
        (file, ErrorCode::InvalidArgument),
    ] {
        let request = WatchDirRequest {
            path: s(&path),
            ..Default::default()
        };
        let err = match client.watch_dir(request).await {
            Err(e) => e,
            Ok(mut stream) => stream.message().await.unwrap_err(),
        };
        assert_eq!(err.code, code, "{path:?}: {err:?}");
        let err = client
            .create_watcher(CreateWatcherRequest {
                path: s(&path),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{path:?}: {err:?}");
    }
}

#[tokio::test]
async fn polling_watcher_buffers_events_between_gets() {
    use EventType::*;
    let t = TestAgent::start().await;
    let client = t.fs_client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let id = client
        .create_watcher(CreateWatcherRequest {
            path: s(&root),
            recursive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .watcher_id;
    assert!(!id.is_empty());
    let get = |id: String| {
        let client = &client;
        async move {
            client
                .get_watcher_events(GetWatcherEventsRequest {
                    watcher_id: id,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_owned().events)
        }
    };

    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    std::fs::create_dir(root.join("d")).unwrap();
    // Once the watcher has seen the directory, it watches it too.
    while !has(&events, "d", EVENT_TYPE_CREATE) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            names(&events)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        events.extend(get(id.clone()).await.unwrap());
    }
    std::fs::write(root.join("d/f.txt"), b"x").unwrap();
    std::fs::remove_file(root.join("d/f.txt")).unwrap();
    while !has(&events, "d/f.txt", EVENT_TYPE_REMOVE) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            names(&events)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        events.extend(get(id.clone()).await.unwrap());
    }
    let n = names(&events);
    let pos = |name: &str, k: EventType| n.iter().position(|(a, b)| a == name && *b == k).unwrap();
    assert!(pos("d", EVENT_TYPE_CREATE) < pos("d/f.txt", EVENT_TYPE_CREATE));
    assert!(pos("d/f.txt", EVENT_TYPE_CREATE) < pos("d/f.txt", EVENT_TYPE_WRITE));
    assert!(pos("d/f.txt", EVENT_TYPE_WRITE) < pos("d/f.txt", EVENT_TYPE_REMOVE));

    // Drained: nothing new since the last get.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get(id.clone()).await.unwrap().is_empty());

    assert_eq!(t.agent.watcher_count(), 1);
    client
        .remove_watcher(RemoveWatcherRequest {
            watcher_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.agent.watcher_count(), 0);
    assert_eq!(get(id.clone()).await.unwrap_err().code, ErrorCode::NotFound);
    let err = client
        .remove_watcher(RemoveWatcherRequest {
            watcher_id: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn filesystem_calls_need_the_access_token() {
    let t = TestAgent::start().await;
    assert_eq!(t.init(serde_json::json!({"accessToken": "tok"})).await, 204);
    let err = t.fs_client().stat(stat_req("/")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err:?}");
    let entry = t
        .fs_client_as("root", &[("x-access-token", "tok")])
        .stat(stat_req("/"))
        .await
        .unwrap()
        .into_owned()
        .entry
        .into_option()
        .unwrap();
    assert_eq!(entry.path, "/");
    assert_eq!(entry.name, "/");
}

#[tokio::test]
async fn json_wire_format_is_what_the_sdks_read() {
    let t = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.txt");
    std::fs::write(&file, b"abcd").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (status, _, body) = raw(
        "POST",
        &format!("{}/filesystem.Filesystem/Stat", t.url()),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
            // base64("nobody:")
            ("authorization", "Basic bm9ib2R5Og=="),
        ],
        serde_json::json!({ "path": s(&file) })
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let e = &v["entry"];
    assert_eq!(e["name"], "w.txt");
    assert_eq!(e["type"], "FILE_TYPE_FILE");
    assert_eq!(e["path"], s(&file));
    assert_eq!(e["size"], "4");
    assert_eq!(e["mode"], 0o640);
    assert_eq!(e["permissions"], "-rw-r-----");
    assert_eq!(e["owner"], "root");
    let modified = e["modifiedTime"].as_str().unwrap();
    assert!(
        modified.ends_with('Z') && modified.contains('T'),
        "{modified}"
    );
    assert!(e.get("symlinkTarget").is_none());

    let (status, _, body) = raw(
        "POST",
        &format!("{}/filesystem.Filesystem/Stat", t.url()),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ],
        serde_json::json!({ "path": s(&dir.path().join("nope")) })
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "not_found");
}
