//! The store's behaviour, the same on both backends: every case below runs
//! once on SQLite (`sqlite::…`) and once on a real PostgreSQL server of its
//! own (`postgres::…`).

use std::collections::{BTreeMap, HashSet};

use super::*;

/// A store of one backend for one test, and what keeps it alive.
struct Fixture {
    location: Location,
    _dir: Option<tempfile::TempDir>,
    _postgres: Option<hutch_test_support::Postgres>,
}

impl Fixture {
    fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            location: Location::Sqlite(dir.path().join("hutch.db")),
            _dir: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres() -> Fixture {
        let pg = tokio::task::spawn_blocking(hutch_test_support::Postgres::start)
            .await
            .unwrap();
        Fixture {
            location: Location::Postgres(pg.url()),
            _dir: None,
            _postgres: Some(pg),
        }
    }

    async fn open(&self) -> Db {
        open(&self.location).await.unwrap()
    }
}

/// Generates `sqlite::case` and `postgres::case` for each `case(&Fixture)`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Fixture::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrates_once_and_round_trips_rows,
    lifecycles_and_limits_round_trip,
    replacing_a_template_under_its_own_id_hides_the_old_row,
    replacing_a_template_of_another_id_keeps_the_old_one_hidden,
    tags_follow_their_build_and_go_with_it,
    volume_names_are_unique_until_deleted,
    spawns_and_the_public_flag,
    api_keys_are_listed_and_revoked_but_never_the_last,
    concurrent_revokes_leave_a_valid_key,
    teams_have_unique_names_and_one_default,
    corrupt_columns_are_reported_not_guessed,
    nodes_heartbeat_and_list,
    placements_reserve_and_release,
    concurrent_placements_never_overfill,
    shared_stores_lead_one_at_a_time_and_hear_changes,
);

/// A template row `id` named `name` holding `metadata`, the build
/// `build-<metadata>`.
fn template(id: &str, name: &str, metadata: &str) -> TemplateRow {
    TemplateRow {
        id: id.into(),
        name: name.into(),
        metadata: metadata.into(),
        created_at: 1,
        build_id: format!("build-{metadata}"),
        public: false,
        team_id: "team-a".into(),
    }
}

/// A key of team `team` whose hash is `hash`, made at `at`.
fn key(hash: &str, team: &str, at: i64) -> NewKey {
    NewKey {
        uuid: format!("uuid-{hash}"),
        team_id: team.into(),
        name: format!("key {hash}"),
        kind: KeyKind::ApiKey,
        hash: hash.into(),
        prefix: format!("e2b_{hash}"),
        suffix: "wxyz".into(),
        created_at: at,
    }
}

fn sandbox(id: &str, template_id: &str, state: SandboxState) -> SandboxRow {
    SandboxRow {
        id: id.into(),
        team_id: "team-a".into(),
        template_id: template_id.into(),
        template_name: "base".into(),
        state,
        sandbox_env: BTreeMap::from([("A".into(), "a=b".into()), ("E".into(), String::new())]),
        metadata: BTreeMap::from([("owner".into(), "me".into())]),
        started_at: 1,
        end_at: 2,
        ended_at: None,
        cpu_count: 2,
        memory_mb: 1024,
        disk_size_mb: 4096,
        paused_remaining_ms: None,
        access_token: None,
        network: Some(r#"{"allowInternetAccess":false}"#.into()),
        ingress: Ingress {
            traffic_token: Some("tt".into()),
            mask_request_host: Some("localhost:${PORT}".into()),
        },
        volume_mounts: vec![MountRecord {
            volume_id: "v1".into(),
            name: "data".into(),
            path: "/data".into(),
        }],
        pids: Some(1024),
        pause_mode: None,
        lifecycle: Lifecycle::default(),
    }
}

async fn migrates_once_and_round_trips_rows(f: &Fixture) {
    drop(f.open().await);
    // Reopening an up-to-date database is a no-op.
    let db = f.open().await;

    assert!(!db.has_api_keys().await.unwrap());
    let default = db.default_team().await.unwrap();
    assert!(default.is_default);
    assert_eq!(default.name, "default");
    db.insert_api_key(key("abc", &default.id, 5)).await.unwrap();
    // Inserting the same key again is not an error (a restart re-reads it
    // from the key file).
    db.insert_api_key(key("abc", &default.id, 6)).await.unwrap();
    assert!(db.has_api_keys().await.unwrap());
    let valid = db.valid_api_keys().await.unwrap();
    assert_eq!(valid.len(), 1);
    assert_eq!(valid["abc"].team_id, default.id);
    let t = template("t1", "base", "{}");
    assert!(db.insert_template(t.clone()).await.unwrap());
    assert!(
        !db.insert_template(TemplateRow {
            id: "t2".into(),
            ..t
        })
        .await
        .unwrap()
    );
    assert_eq!(
        db.find_template("base".into()).await.unwrap().unwrap().id,
        "t1"
    );
    assert_eq!(
        db.find_template("t1".into()).await.unwrap().unwrap().name,
        "base"
    );
    assert!(db.find_template("t2".into()).await.unwrap().is_none());

    db.insert_sandbox(sandbox("s1", "t1", SandboxState::Starting))
        .await
        .unwrap();
    assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 1);
    db.set_running("s1".into(), 99).await.unwrap();
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!(s.state, SandboxState::Running);
    assert_eq!(s.end_at, 99);
    assert_eq!(s.sandbox_env["A"], "a=b");
    assert_eq!(s.sandbox_env["E"], "");
    assert_eq!(s.memory_mb, 1024);
    assert_eq!(s.pids, Some(1024));
    assert_eq!(s.ingress.traffic_token.as_deref(), Some("tt"));
    assert_eq!(s.volume_mounts[0].path, "/data");
    assert_eq!(
        s.ingress.mask_request_host.as_deref(),
        Some("localhost:${PORT}")
    );
    let running = db.sandboxes_in(&[SandboxState::Running]).await.unwrap();
    assert_eq!(running.len(), 1);
    db.set_paused("s1".into(), 42, PauseMode::Memory)
        .await
        .unwrap();
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.paused_remaining_ms, s.pause_mode),
        (SandboxState::Paused, Some(42), Some(PauseMode::Memory))
    );
    // A memory pause can become a filesystem one.
    db.set_paused("s1".into(), 42, PauseMode::Filesystem)
        .await
        .unwrap();
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!(s.pause_mode, Some(PauseMode::Filesystem));
    assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 1);
    assert!(
        db.sandboxes_in(&[SandboxState::Running])
            .await
            .unwrap()
            .is_empty()
    );
    db.set_running("s1".into(), 120).await.unwrap();
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.end_at, s.paused_remaining_ms, s.pause_mode),
        (SandboxState::Running, 120, None, None)
    );
    db.mark_killed("s1".into(), 100).await.unwrap();
    assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 0);
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!((s.state, s.ended_at), (SandboxState::Killed, Some(100)));
    // A killed sandbox cannot be paused.
    db.set_paused("s1".into(), 1, PauseMode::Memory)
        .await
        .unwrap();
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_eq!(s.state, SandboxState::Killed);
}

async fn lifecycles_and_limits_round_trip(f: &Fixture) {
    let db = f.open().await;
    for (id, lifecycle) in [
        ("default", Lifecycle::default()),
        (
            "fs",
            Lifecycle {
                auto_pause: Some(PauseMode::Filesystem),
                auto_resume: false,
            },
        ),
        (
            "mem",
            Lifecycle {
                auto_pause: Some(PauseMode::Memory),
                auto_resume: true,
            },
        ),
    ] {
        let mut row = sandbox(id, "t", SandboxState::Running);
        row.lifecycle = lifecycle;
        db.insert_sandbox(row).await.unwrap();
        let back = db.get_sandbox(id.into()).await.unwrap().unwrap();
        assert_eq!((back.lifecycle, back.pause_mode), (lifecycle, None));
    }
    let mut row = sandbox("limits", "t", SandboxState::Starting);
    row.cpu_count = 1;
    row.memory_mb = 128;
    row.disk_size_mb = 64;
    row.pids = None;
    row.access_token = Some("tok".into());
    row.network = None;
    db.insert_sandbox(row).await.unwrap();
    let back = db.get_sandbox("limits".into()).await.unwrap().unwrap();
    assert_eq!(
        (back.cpu_count, back.memory_mb, back.disk_size_mb, back.pids),
        (1, 128, 64, None)
    );
    assert_eq!(back.access_token.as_deref(), Some("tok"));
    assert_eq!(back.network, None);
    assert_eq!(back.metadata["owner"], "me");
    // Oldest first, across states asked for.
    let ids: Vec<String> = db
        .sandboxes_in(&[SandboxState::Running, SandboxState::Starting])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["default", "fs", "limits", "mem"]);
    db.set_end_at("fs".into(), 77).await.unwrap();
    assert_eq!(
        db.get_sandbox("fs".into()).await.unwrap().unwrap().end_at,
        77
    );
    db.set_network("fs".into(), r#"{"allowInternetAccess":false}"#.into())
        .await
        .unwrap();
    assert_eq!(
        db.get_sandbox("fs".into())
            .await
            .unwrap()
            .unwrap()
            .network
            .as_deref(),
        Some(r#"{"allowInternetAccess":false}"#)
    );
    db.delete_sandbox("limits".into()).await.unwrap();
    assert!(db.get_sandbox("limits".into()).await.unwrap().is_none());
    assert_eq!(db.live_sandboxes_of("t".into()).await.unwrap(), 3);
}

async fn replacing_a_template_under_its_own_id_hides_the_old_row(f: &Fixture) {
    let db = f.open().await;
    let row = |metadata: &str| template("t1", "app", metadata);
    assert!(db.insert_template(row("v1")).await.unwrap());
    db.insert_sandbox(sandbox("s1", "t1", SandboxState::Running))
        .await
        .unwrap();
    assert_eq!(
        db.replace_template(row("v2")).await.unwrap(),
        Some("t1".into())
    );
    let new = db.find_template("app".into()).await.unwrap().unwrap();
    assert_eq!((new.id.as_str(), new.metadata.as_str()), ("t1", "v2"));
    // The sandbox of the old build counts for the hidden row, which
    // stays until it ends.
    let s = db.get_sandbox("s1".into()).await.unwrap().unwrap();
    assert_ne!(s.template_id, "t1");
    let hidden = db
        .find_template(s.template_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hidden.metadata, "v1");
    assert_eq!(hidden.name, format!("app@{}", s.template_id));
    assert_eq!(db.live_sandboxes_of("t1".into()).await.unwrap(), 0);
    assert_eq!(db.live_sandboxes_of(s.template_id).await.unwrap(), 1);
}

async fn replacing_a_template_of_another_id_keeps_the_old_one_hidden(f: &Fixture) {
    let db = f.open().await;
    let row = |id: &str| template(id, "app", id);
    assert_eq!(db.replace_template(row("v1")).await.unwrap(), None);
    assert_eq!(
        db.replace_template(row("v2")).await.unwrap(),
        Some("v1".into())
    );
    assert_eq!(
        db.find_template("app".into()).await.unwrap().unwrap().id,
        "v2"
    );
    let old = db.find_template("v1".into()).await.unwrap().unwrap();
    assert_eq!(old.name, "app@v1");
    let names: Vec<String> = db
        .list_templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["app", "app@v1"]);
    db.delete_template("v1".into()).await.unwrap();
    assert!(db.find_template("v1".into()).await.unwrap().is_none());
    assert_eq!(db.list_templates().await.unwrap().len(), 1);
}

async fn tags_follow_their_build_and_go_with_it(f: &Fixture) {
    let db = f.open().await;
    let row = |metadata: &str| template("t1", "app", metadata);
    assert!(db.insert_template(row("v1")).await.unwrap());
    db.set_tags(
        "app".into(),
        vec!["v1".into(), "stable".into()],
        "t1".into(),
        5,
    )
    .await
    .unwrap();
    // A rebuild under the same id hides the old row; its tags follow it.
    db.replace_template(row("v2")).await.unwrap();
    let tags = db.list_tags(Some("app".into())).await.unwrap();
    assert_eq!(
        tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(),
        ["stable", "v1"]
    );
    let hidden = db
        .find_template(tags[0].template_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hidden.build_id, "build-v1");
    assert_eq!(tags[0].created_at, 5);
    // Moving a tag.
    db.set_tags("app".into(), vec!["stable".into()], "t1".into(), 9)
        .await
        .unwrap();
    let stable = db.list_tags(Some("app".into())).await.unwrap();
    assert_eq!(
        (stable[0].template_id.as_str(), stable[0].created_at),
        ("t1", 9)
    );
    // Removal is all or nothing.
    assert_eq!(
        db.remove_tags("app".into(), vec!["v1".into(), "nope".into()])
            .await
            .unwrap(),
        ["nope"]
    );
    assert_eq!(db.list_tags(Some("app".into())).await.unwrap().len(), 2);
    assert!(
        db.remove_tags("app".into(), vec!["v1".into()])
            .await
            .unwrap()
            .is_empty()
    );
    // Deleting a build deletes the tags that name it.
    db.delete_template("t1".into()).await.unwrap();
    assert!(db.list_tags(None).await.unwrap().is_empty());
    db.set_tags("other".into(), vec!["x".into()], "h".into(), 1)
        .await
        .unwrap();
    db.delete_tags_of("other".into()).await.unwrap();
    assert!(db.list_tags(None).await.unwrap().is_empty());
}

async fn volume_names_are_unique_until_deleted(f: &Fixture) {
    let db = f.open().await;
    let volume = |id: &str| VolumeRow {
        id: id.into(),
        team_id: "team-a".into(),
        name: "data".into(),
        size_mb: 64,
        created_at: 1,
        deleted_at: None,
    };
    assert!(db.insert_volume(volume("v1")).await.unwrap());
    assert!(!db.insert_volume(volume("v2")).await.unwrap(), "name taken");
    let mut other_team = volume("v3");
    other_team.team_id = "team-b".into();
    assert!(
        db.insert_volume(other_team).await.unwrap(),
        "names are per team"
    );
    db.mark_volume_deleted("v3".into(), 1).await.unwrap();
    db.purge_volume("v3".into()).await.unwrap();
    assert!(db.mark_volume_deleted("v1".into(), 5).await.unwrap());
    assert!(!db.mark_volume_deleted("v1".into(), 6).await.unwrap());
    assert!(
        db.insert_volume(volume("v2")).await.unwrap(),
        "name free again"
    );
    let all = db.list_volumes().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|v| (v.id.as_str(), v.deleted_at))
            .collect::<Vec<_>>(),
        [("v1", Some(5)), ("v2", None)]
    );
    assert_eq!(all[1].size_mb, 64);
    db.purge_volume("v2".into()).await.unwrap();
    assert_eq!(
        db.list_volumes().await.unwrap().len(),
        2,
        "only deleted ones go"
    );
    db.purge_volume("v1".into()).await.unwrap();
    assert_eq!(db.list_volumes().await.unwrap().len(), 1);
}

async fn spawns_and_the_public_flag(f: &Fixture) {
    let db = f.open().await;
    assert!(
        db.insert_template(template("t", "base", "{}"))
            .await
            .unwrap()
    );
    assert!(db.set_template_public("t".into(), true).await.unwrap());
    assert!(!db.set_template_public("nope".into(), true).await.unwrap());
    assert!(db.find_template("t".into()).await.unwrap().unwrap().public);
    for (id, started) in [("a", 10), ("b", 30), ("c", 20)] {
        let mut s = sandbox(id, "t", SandboxState::Killed);
        s.started_at = started;
        db.insert_sandbox(s).await.unwrap();
    }
    let spawns = db.spawns_by_template().await.unwrap();
    assert_eq!(
        spawns["base"],
        Spawns {
            count: 3,
            last_at: Some(30)
        }
    );
}

async fn api_keys_are_listed_and_revoked_but_never_the_last(f: &Fixture) {
    let db = f.open().await;
    db.insert_api_key(key("h1", "a", 1)).await.unwrap();
    db.insert_api_key(key("b1", "b", 1)).await.unwrap();
    let first = db.list_api_keys("a".into()).await.unwrap()[0].clone();
    assert_eq!(first.uuid, "uuid-h1");
    assert_eq!(first.suffix, "wxyz");
    assert_eq!(first.kind, KeyKind::ApiKey);
    let revoke = |team: &str, id: &str, at: i64| {
        let db = db.clone();
        let (team, id) = (team.to_owned(), id.to_owned());
        async move { db.revoke_api_key(team, id, at).await.unwrap() }
    };
    assert_eq!(revoke("a", "uuid-h1", 5).await, Revoke::LastKey);
    let second = db.create_api_key(key("h2", "a", 2)).await.unwrap();
    assert_eq!(second.prefix, "e2b_h2");
    assert_ne!(second.id, first.id);
    assert_eq!(db.list_api_keys("a".into()).await.unwrap().len(), 2);
    // Another team's key is not found, by UUID or by number.
    assert_eq!(revoke("b", "uuid-h1", 5).await, Revoke::NotFound);
    assert_eq!(
        revoke("b", &first.id.to_string(), 5).await,
        Revoke::NotFound
    );
    assert!(
        !db.rename_api_key("b".into(), "uuid-h1".into(), "x".into())
            .await
            .unwrap()
    );
    assert!(
        db.rename_api_key("a".into(), "uuid-h1".into(), "renamed".into())
            .await
            .unwrap()
    );
    assert_eq!(revoke("a", &first.id.to_string(), 5).await, Revoke::Revoked);
    let valid = db.valid_api_keys().await.unwrap();
    assert_eq!(
        valid.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from(["h2".to_string(), "b1".to_string()])
    );
    assert_eq!(revoke("a", "uuid-h1", 6).await, Revoke::NotFound);
    assert_eq!(revoke("a", "999", 6).await, Revoke::NotFound);
    assert_eq!(revoke("a", "uuid-h2", 6).await, Revoke::LastKey);
    let keys = db.list_api_keys("a".into()).await.unwrap();
    assert_eq!(keys[0].revoked_at, Some(5));
    assert_eq!(keys[0].name, "renamed");
    assert_eq!(keys[1].revoked_at, None);
}

/// Revoking every key of a team at once leaves exactly one valid.
async fn concurrent_revokes_leave_a_valid_key(f: &Fixture) {
    let db = f.open().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let key = db
            .create_api_key(key(&format!("h{i}"), "a", i))
            .await
            .unwrap();
        ids.push(key.uuid);
    }
    let revokes = ids.iter().map(|id| {
        let (db, id) = (db.clone(), id.clone());
        tokio::spawn(async move { db.revoke_api_key("a".into(), id, 100).await.unwrap() })
    });
    let outcomes = futures::future::join_all(revokes).await;
    let revoked = outcomes
        .iter()
        .filter(|o| *o.as_ref().unwrap() == Revoke::Revoked)
        .count();
    assert_eq!(revoked, 7);
    assert_eq!(db.valid_api_keys().await.unwrap().len(), 1);
}

/// Teams: the default one comes with the schema; names are unique.
async fn teams_have_unique_names_and_one_default(f: &Fixture) {
    let db = f.open().await;
    let default = db.default_team().await.unwrap();
    let team = |id: &str, name: &str| TeamRow {
        id: id.into(),
        name: name.into(),
        created_at: i64::MAX / 2,
        is_default: true,
    };
    assert!(db.insert_team(team("t1", "research")).await.unwrap());
    assert!(!db.insert_team(team("t2", "research")).await.unwrap());
    assert!(!db.insert_team(team("t3", "default")).await.unwrap());
    let teams = db.list_teams().await.unwrap();
    assert_eq!(
        teams
            .iter()
            .map(|t| (t.name.as_str(), t.is_default))
            .collect::<Vec<_>>(),
        [("default", true), ("research", false)],
        "an inserted team is never the default"
    );
    assert_eq!(teams[0], default);
}

/// A JSON column that does not parse is an error naming the column.
async fn corrupt_columns_are_reported_not_guessed(f: &Fixture) {
    let db = f.open().await;
    let mut row = sandbox("bad", "t", SandboxState::Running);
    row.metadata = BTreeMap::new();
    db.insert_sandbox(row).await.unwrap();
    drop(db);
    match &f.location {
        Location::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute(
                "UPDATE sandboxes SET metadata = '{oops' WHERE id = 'bad'",
                [],
            )
            .unwrap();
        }
        Location::Postgres(_) => {
            let pg = f._postgres.as_ref().unwrap();
            pg.psql("UPDATE sandboxes SET metadata = '{oops' WHERE id = 'bad'");
        }
    }
    let db = f.open().await;
    let e = db.get_sandbox("bad".into()).await.unwrap_err();
    assert!(
        matches!(
            e,
            DbError::Corrupt {
                what: "metadata",
                ..
            }
        ),
        "{e}"
    );
    let e = db.sandboxes_in(&[SandboxState::Running]).await.unwrap_err();
    assert!(e.to_string().starts_with("corrupt metadata"), "{e}");
}

/// Node `id`'s heartbeat from instance `instance`, admitting `capacity`.
fn beat(id: &str, instance: &str, capacity: Capacity) -> NodeBeat {
    NodeBeat {
        id: id.into(),
        url: format!("http://{id}:49982"),
        instance_id: instance.into(),
        version: "1.0.0".into(),
        capacity,
        sandboxes: 0,
        layers: vec!["sha256:aa".into()],
    }
}

/// Sandbox `sandbox` taking `cpus` vCPUs and `memory_mb` MiB of node `node`.
fn placement(sandbox: &str, node: &str, cpus: u64, memory_mb: u64) -> Placement {
    Placement {
        sandbox_id: sandbox.into(),
        node_id: node.into(),
        cpus,
        memory_mb,
    }
}

const ROOMY: Capacity = Capacity {
    cpus: 8,
    memory_mb: 8192,
    sandboxes: 4,
};

/// The node `id` as stored.
async fn node(db: &Db, id: &str) -> NodeRow {
    db.list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.beat.id == id)
        .unwrap()
}

/// Heartbeats insert and update nodes; a restart (a new instance) resets
/// `registered_at`; allocations survive both.
async fn nodes_heartbeat_and_list(f: &Fixture) {
    let db = f.open().await;
    assert!(db.list_nodes().await.unwrap().is_empty());
    db.node_heartbeat(beat("n2", "i1", ROOMY), 100, 110)
        .await
        .unwrap();
    db.node_heartbeat(beat("n1", "j1", ROOMY), 100, 110)
        .await
        .unwrap();
    let nodes = db.list_nodes().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.beat.id.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"],
        "by id"
    );
    assert_eq!(
        nodes[1],
        NodeRow {
            beat: beat("n2", "i1", ROOMY),
            allocated: Capacity::default(),
            registered_at: 100,
            heartbeat_at: 100,
            lease_until: 110,
        }
    );
    assert!(
        db.place_sandbox(placement("s1", "n2", 2, 1024), 105)
            .await
            .unwrap()
    );
    // The same instance again: everything it reports is replaced, its
    // registration and allocations are kept.
    let mut again = beat("n2", "i1", Capacity { cpus: 16, ..ROOMY });
    again.url = "http://elsewhere:1".into();
    again.version = "1.0.1".into();
    again.sandboxes = 3;
    again.layers = vec!["sha256:bb".into(), "sha256:cc".into()];
    db.node_heartbeat(again.clone(), 200, 210).await.unwrap();
    let n2 = node(&db, "n2").await;
    assert_eq!(n2.beat, again);
    assert_eq!(
        (n2.registered_at, n2.heartbeat_at, n2.lease_until),
        (100, 200, 210)
    );
    let allocated = Capacity {
        cpus: 2,
        memory_mb: 1024,
        sandboxes: 1,
    };
    assert_eq!(n2.allocated, allocated);
    // A new instance (the node restarted) registers anew; allocations stay.
    db.node_heartbeat(beat("n2", "i2", ROOMY), 300, 310)
        .await
        .unwrap();
    let n2 = node(&db, "n2").await;
    assert_eq!(n2.beat.instance_id, "i2");
    assert_eq!(
        (n2.registered_at, n2.heartbeat_at, n2.lease_until),
        (300, 300, 310)
    );
    assert_eq!(n2.allocated, allocated);
    assert_eq!(n2.beat.layers, ["sha256:aa"]);
    // The other node was left alone.
    let n1 = node(&db, "n1").await;
    assert_eq!((n1.registered_at, n1.heartbeat_at), (100, 100));
    // Counts past i64::MAX are stored saturated.
    db.node_heartbeat(
        beat(
            "n3",
            "k1",
            Capacity {
                cpus: u64::MAX,
                ..ROOMY
            },
        ),
        1,
        2,
    )
    .await
    .unwrap();
    assert_eq!(node(&db, "n3").await.beat.capacity.cpus, i64::MAX as u64);
}

/// Placements reserve a node's capacity all or nothing and give it back.
async fn placements_reserve_and_release(f: &Fixture) {
    let db = f.open().await;
    db.node_heartbeat(beat("n1", "i1", ROOMY), 100, 200)
        .await
        .unwrap();
    db.node_heartbeat(beat("n2", "i1", ROOMY), 100, 200)
        .await
        .unwrap();
    let place = |p: Placement, now: i64| {
        let db = db.clone();
        async move { db.place_sandbox(p, now).await.unwrap() }
    };
    let allocated = |cpus, memory_mb, sandboxes| Capacity {
        cpus,
        memory_mb,
        sandboxes,
    };
    assert!(place(placement("a", "n1", 4, 4096), 150).await);
    assert!(place(placement("b", "n1", 2, 2048), 150).await);
    assert_eq!(node(&db, "n1").await.allocated, allocated(6, 6144, 2));
    // Past any one limit: nothing changes.
    assert!(!place(placement("c", "n1", 3, 1), 150).await, "cpus");
    assert!(!place(placement("c", "n1", 1, 2049), 150).await, "memory");
    assert!(place(placement("c", "n1", 1, 1024), 150).await);
    assert!(
        place(placement("d", "n1", 1, 1024), 150).await,
        "exactly full"
    );
    assert_eq!(node(&db, "n1").await.allocated, allocated(8, 8192, 4));
    assert!(!place(placement("e", "n1", 0, 0), 150).await, "sandboxes");
    assert_eq!(node(&db, "n1").await.allocated, allocated(8, 8192, 4));
    // No lease, or no node.
    assert!(!place(placement("e", "n2", 1, 1), 200).await, "lease ended");
    assert!(!place(placement("e", "nope", 1, 1), 150).await, "unknown");
    // Placed already, on this node or another: refused, and the other
    // node keeps nothing of it.
    assert!(!place(placement("a", "n2", 1, 1), 150).await);
    assert_eq!(node(&db, "n2").await.allocated, Capacity::default());
    // Huge demands are refused, not overflowed.
    assert!(!place(placement("e", "n2", u64::MAX, u64::MAX), 150).await);
    assert!(place(placement("e", "n2", 1, 512), 199).await);
    assert_eq!(
        db.list_placements().await.unwrap(),
        [
            placement("a", "n1", 4, 4096),
            placement("b", "n1", 2, 2048),
            placement("c", "n1", 1, 1024),
            placement("d", "n1", 1, 1024),
            placement("e", "n2", 1, 512),
        ]
    );
    assert_eq!(
        db.placement_of("e".into()).await.unwrap(),
        Some(placement("e", "n2", 1, 512))
    );
    assert_eq!(db.placement_of("nope".into()).await.unwrap(), None);
    // Unplacing gives the allocation back.
    assert_eq!(
        db.unplace_sandbox("a".into()).await.unwrap().as_deref(),
        Some("n1")
    );
    assert_eq!(db.unplace_sandbox("a".into()).await.unwrap(), None);
    assert_eq!(db.unplace_sandbox("nope".into()).await.unwrap(), None);
    assert_eq!(node(&db, "n1").await.allocated, allocated(4, 4096, 3));
    assert!(
        place(placement("a", "n1", 4, 4096), 150).await,
        "room again"
    );
    for id in ["a", "b", "c", "d", "e"] {
        assert!(db.unplace_sandbox(id.into()).await.unwrap().is_some());
    }
    assert!(db.list_placements().await.unwrap().is_empty());
    for n in db.list_nodes().await.unwrap() {
        assert_eq!(n.allocated, Capacity::default(), "{}", n.beat.id);
    }
}

/// Many placements at once never fill a node past its capacity.
async fn concurrent_placements_never_overfill(f: &Fixture) {
    let db = f.open().await;
    let capacity = Capacity {
        cpus: 100,
        memory_mb: 100_000,
        sandboxes: 5,
    };
    db.node_heartbeat(beat("n1", "i1", capacity), 1, i64::MAX)
        .await
        .unwrap();
    let places = (0..20).map(|i| {
        let db = db.clone();
        tokio::spawn(async move {
            db.place_sandbox(placement(&format!("s{i:02}"), "n1", 1, 256), 2)
                .await
                .unwrap()
        })
    });
    let outcomes = futures::future::join_all(places).await;
    let placed = outcomes.iter().filter(|o| *o.as_ref().unwrap()).count();
    assert_eq!(placed, 5);
    assert_eq!(
        node(&db, "n1").await.allocated,
        Capacity {
            cpus: 5,
            memory_mb: 5 * 256,
            sandboxes: 5
        }
    );
    assert_eq!(db.list_placements().await.unwrap().len(), 5);
}

/// A second server on the same PostgreSQL database is refused while the
/// first holds it, and welcome once it is gone.
#[tokio::test]
async fn a_postgres_database_serves_one_server_at_a_time() {
    let f = Fixture::postgres().await;
    let first = f.open().await;
    let e = open(&f.location)
        .await
        .err()
        .expect("a second store is refused");
    assert!(matches!(e, DbError::InUse), "{e}");
    drop(first);
    // The lock goes with the first store's connection.
    f.open().await;
}

/// A PostgreSQL database migrated by a newer Hutch is refused.
#[tokio::test]
async fn a_newer_postgres_schema_is_refused() {
    let f = Fixture::postgres().await;
    drop(f.open().await);
    f._postgres
        .as_ref()
        .unwrap()
        .psql("UPDATE hutch_schema SET version = 999");
    let e = open(&f.location)
        .await
        .err()
        .expect("a newer schema is refused");
    assert!(matches!(e, DbError::TooNew { found: 999, .. }), "{e}");
}

#[test]
fn locations_come_from_the_url_or_the_data_dir() {
    let data = std::path::Path::new("/var/lib/hutch");
    assert_eq!(
        Location::new(None, data).unwrap(),
        Location::Sqlite(data.join("hutch.db"))
    );
    let url = "postgres://hutch:s3cret@db.example:5432/hutch?sslmode=disable";
    let at = Location::new(Some(url), data).unwrap();
    assert_eq!(at, Location::Postgres(url.into()));
    assert_eq!(
        at.to_string(),
        "postgres://hutch:***@db.example:5432/hutch?sslmode=disable"
    );
    assert_eq!(
        Location::new(Some("postgresql://h/db"), data)
            .unwrap()
            .to_string(),
        "postgresql://h/db"
    );
    let e = Location::new(Some("mysql://u:pw@h/db"), data).unwrap_err();
    assert!(matches!(e, DbError::Url(_)), "{e}");
    assert!(!e.to_string().contains("pw"), "{e}");
}

/// Network columns written before the record type existed (the
/// runtime's own JSON) still read, and new ones are written the same
/// way.
#[test]
fn network_records_keep_their_stored_form() {
    let stored = r#"{"allowInternetAccess":false,"allowOut":["1.1.1.1/32","10.0.0.0/8"],"denyOut":["0.0.0.0/0"]}"#;
    let policy = NetworkRecord::decode(stored).unwrap();
    assert!(!policy.allow_internet_access);
    assert_eq!(
        policy.allow_out,
        vec![
            "1.1.1.1".parse::<Cidr>().unwrap(),
            "10.0.0.0/8".parse().unwrap()
        ]
    );
    assert_eq!(policy.deny_out, vec![Cidr::ALL_IPV4]);
    assert_eq!(NetworkRecord::encode(&policy), stored);
    assert_eq!(
        NetworkRecord::encode(&policy),
        serde_json::to_string(&policy).unwrap(),
        "the same JSON as the runtime's policy"
    );

    let default = r#"{"allowInternetAccess":true,"allowOut":[],"denyOut":[]}"#;
    assert_eq!(
        NetworkRecord::decode(default).unwrap(),
        EgressPolicy::default()
    );
    assert_eq!(NetworkRecord::encode(&EgressPolicy::default()), default);
    // Lists may be absent.
    let policy = NetworkRecord::decode(r#"{"allowInternetAccess":false}"#).unwrap();
    assert!(!policy.allow_internet_access && policy.allow_out.is_empty());
    assert!(NetworkRecord::decode(r#"{"allowOut":[]}"#).is_err());
    let e =
        NetworkRecord::decode(r#"{"allowInternetAccess":true,"denyOut":["no pe"]}"#).unwrap_err();
    assert!(e.starts_with("network.denyOut[0]: "), "{e}");
    // Domains are kept in allowOut, after the blocks.
    let named = r#"{"allowInternetAccess":true,"allowOut":["1.1.1.1/32","api.example.com","*.example.org"],"denyOut":["0.0.0.0/0"]}"#;
    let policy = NetworkRecord::decode(named).unwrap();
    assert_eq!(policy.allow_domains.len(), 2);
    assert!(policy.allows_name("a.example.org"));
    assert_eq!(NetworkRecord::encode(&policy), named);
}

/// Stores shared by control planes: one leads at a time, another takes
/// over when it goes, each hears the sandbox rows the others change; a
/// `hutch serve` cannot take a database they share. SQLite is never
/// shared: it always leads and announces nothing.
async fn shared_stores_lead_one_at_a_time_and_hear_changes(f: &Fixture) {
    use std::time::Duration;
    let a = open_with(&f.location, Access::Shared).await.unwrap();
    if a.backend() == "sqlite" {
        assert!(a.leads());
        assert!(a.sandbox_changes().await.is_none());
        return;
    }
    let b = open_with(&f.location, Access::Shared).await.unwrap();
    let leaders = |stores: &[&Db]| stores.iter().filter(|s| s.leads()).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while leaders(&[&a, &b]) != 1 {
        assert!(tokio::time::Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        open_with(&f.location, Access::Exclusive).await,
        Err(DbError::InUse)
    ));

    let mut changes = b.sandbox_changes().await.unwrap();
    assert_eq!(changes.recv().await, Some(SandboxChange::All));
    a.insert_sandbox(sandbox("s1", "t1", SandboxState::Running))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .unwrap();
    assert_eq!(heard, Some(SandboxChange::One("s1".into())));

    // The leader goes: the other takes over.
    let (leader, other) = if a.leads() { (a, b) } else { (b, a) };
    drop(leader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !other.leads() {
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
