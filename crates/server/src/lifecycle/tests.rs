//! The sandbox state machine on a [`FakeNode`]: no root, no runc, seconds.

use hutch_runtime::EgressPolicy;
use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::node::Node;
use crate::node::fake::FakeState;
use crate::testing::{Harness, patiently};

#[tokio::test]
async fn a_sandbox_goes_through_every_state() {
    every_state(Harness::new().await).await;
}

/// The same, with the server's state in PostgreSQL.
#[tokio::test]
async fn a_sandbox_goes_through_every_state_on_postgres() {
    every_state(Harness::on_postgres().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_sandbox_goes_through_every_state_through_the_node_api() {
    every_state(Harness::through_node_api().await).await;
}

async fn every_state(h: Harness) {
    let id = h.create().await;
    assert_eq!(h.row_state(&id).await, SandboxState::Running);
    assert!(h.routed(&id));
    assert_eq!(h.node.state(&id), Some(FakeState::Running));

    assert_eq!(
        pause_sandbox(&h.st, &id, PauseMode::Memory).await.unwrap(),
        PauseOutcome::Paused
    );
    assert_eq!(h.row_state(&id).await, SandboxState::Paused);
    assert!(!h.routed(&id), "a paused sandbox is not routed to");
    assert_eq!(h.node.state(&id), Some(FakeState::Paused));
    assert_eq!(
        pause_sandbox(&h.st, &id, PauseMode::Memory).await.unwrap(),
        PauseOutcome::AlreadyPaused
    );

    assert_eq!(
        resume_sandbox(&h.st, &id, None, None).await.unwrap(),
        ResumeOutcome::Resumed
    );
    assert_eq!(h.row_state(&id).await, SandboxState::Running);
    assert!(h.routed(&id));
    assert_eq!(h.node.state(&id), Some(FakeState::Running));

    // Filesystem-only: the node keeps only the disk; a resume boots it
    // again on it, with a new agent.
    let first_pid = h.node.init_pid(&id).unwrap();
    assert_eq!(
        pause_sandbox(&h.st, &id, PauseMode::Filesystem)
            .await
            .unwrap(),
        PauseOutcome::Paused
    );
    assert_eq!(h.node.state(&id), Some(FakeState::DiskOnly));
    assert_eq!(
        resume_sandbox(&h.st, &id, Some(60), None).await.unwrap(),
        ResumeOutcome::Resumed
    );
    assert_eq!(h.node.state(&id), Some(FakeState::Running));
    let second_pid = h.node.init_pid(&id).unwrap();
    assert_ne!(first_pid, second_pid);
    assert_eq!(
        h.st.live().get(&id).unwrap().agent_pid,
        Some(second_pid),
        "the new agent is the one watched"
    );

    assert!(kill_sandbox(&h.st, &id).await.unwrap());
    assert_eq!(h.row_state(&id).await, SandboxState::Killed);
    assert!(!h.st.live().contains_key(&id));
    assert!(!kill_sandbox(&h.st, &id).await.unwrap(), "killed once");
    h.st.teardowns.close();
    patiently("teardown", h.st.teardowns.wait()).await;
    assert_eq!(h.node.state(&id), None, "torn down");
}

/// A kill answers before the node's teardown finishes: the sandbox's
/// processes are dead, it is not routed to and it is recorded killed while
/// its teardown is still held.
#[tokio::test]
async fn a_kill_answers_before_the_teardown() {
    a_kill_answers_before_the_teardown_on(Harness::new().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_kill_answers_before_the_teardown_through_the_node_api() {
    a_kill_answers_before_the_teardown_on(Harness::through_node_api().await).await;
}

async fn a_kill_answers_before_the_teardown_on(h: Harness) {
    let id = h.create().await;
    let pid = h.node.init_pid(&id).unwrap();
    let teardown = h.node.hold("destroy", &id);

    assert!(kill_sandbox(&h.st, &id).await.unwrap());
    assert_eq!(h.row_state(&id).await, SandboxState::Killed);
    assert!(!h.routed(&id));
    patiently("the teardown to start", teardown.reached()).await;
    assert_eq!(
        h.node.state(&id),
        Some(FakeState::Running),
        "not torn down yet"
    );
    let calls = h.node.calls();
    let killed = calls.iter().position(|c| *c == format!("kill_now {id}"));
    let destroyed = calls.iter().position(|c| *c == format!("destroy {id}"));
    assert!(killed.is_some() && killed < destroyed, "{calls:?}");
    // The stand-in init got SIGKILL.
    patiently("the init to die", async {
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    teardown.release();
    h.st.teardowns.close();
    patiently("teardown", h.st.teardowns.wait()).await;
    assert_eq!(h.node.state(&id), None);
}

/// Transitions of different sandboxes do not wait for each other; those of
/// one sandbox do.
#[tokio::test]
async fn pauses_of_different_sandboxes_run_side_by_side() {
    side_by_side(Harness::new().await).await;
}

/// The same, with the server's state in PostgreSQL.
#[tokio::test]
async fn pauses_of_different_sandboxes_run_side_by_side_on_postgres() {
    side_by_side(Harness::on_postgres().await).await;
}

async fn side_by_side(h: Harness) {
    let a = h.create().await;
    let b = h.create().await;
    let held = h.node.hold("pause", &a);
    let st = h.st.clone();
    let a2 = a.clone();
    let pause_a = tokio::spawn(async move { pause_sandbox(&st, &a2, PauseMode::Memory).await });
    patiently("a's pause to reach the node", held.reached()).await;

    // b pauses and resumes while a's pause is in the middle.
    let outcome = patiently("b's pause", pause_sandbox(&h.st, &b, PauseMode::Memory)).await;
    assert_eq!(outcome.unwrap(), PauseOutcome::Paused);
    let outcome = patiently("b's resume", resume_sandbox(&h.st, &b, None, None)).await;
    assert_eq!(outcome.unwrap(), ResumeOutcome::Resumed);

    // A resume of a waits for a's pause: it then finds a paused.
    let st = h.st.clone();
    let a2 = a.clone();
    let resume_a = tokio::spawn(async move { resume_sandbox(&st, &a2, None, None).await });
    // Time for it to reach a's lock: were it not to wait there, it would
    // find a still running and answer `WasRunning`.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!resume_a.is_finished(), "a's resume waits for its pause");
    held.release();
    assert_eq!(
        patiently("a's pause", pause_a).await.unwrap().unwrap(),
        PauseOutcome::Paused
    );
    assert_eq!(
        patiently("a's resume", resume_a).await.unwrap().unwrap(),
        ResumeOutcome::Resumed
    );
    assert_eq!(h.node.state(&a), Some(FakeState::Running));
    assert_eq!(h.row_state(&a).await, SandboxState::Running);
}

/// A kill that comes while a pause is at the node wins: the sandbox ends
/// killed, not paused, and nothing of it is left.
#[tokio::test]
async fn a_kill_during_a_pause_wins() {
    let h = Harness::new().await;
    let id = h.create().await;
    let held = h.node.hold("pause", &id);
    let st = h.st.clone();
    let id2 = id.clone();
    let pause = tokio::spawn(async move { pause_sandbox(&st, &id2, PauseMode::Memory).await });
    patiently("the pause to reach the node", held.reached()).await;

    assert!(kill_sandbox(&h.st, &id).await.unwrap());
    held.release();
    let outcome = patiently("the pause", pause).await.unwrap();
    assert_eq!(outcome.unwrap(), PauseOutcome::NotFound);
    assert_eq!(h.row_state(&id).await, SandboxState::Killed);
    assert!(!h.st.live().contains_key(&id));
    h.st.teardowns.close();
    patiently("teardown", h.st.teardowns.wait()).await;
    assert_eq!(h.node.state(&id), None);
}

/// A sandbox whose agent dies is destroyed and recorded killed at once.
#[tokio::test]
async fn a_dead_agent_kills_its_sandbox() {
    a_dead_agent_kills_its_sandbox_on(Harness::new().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_dead_agent_kills_its_sandbox_through_the_node_api() {
    a_dead_agent_kills_its_sandbox_on(Harness::through_node_api().await).await;
}

async fn a_dead_agent_kills_its_sandbox_on(h: Harness) {
    let id = h.create().await;
    let pid = h.node.init_pid(&id).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    patiently("the sandbox to be recorded killed", async {
        while h.row_state(&id).await != SandboxState::Killed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!h.st.live().contains_key(&id));
    h.st.teardowns.close();
    patiently("teardown", h.st.teardowns.wait()).await;
    assert_eq!(h.node.state(&id), None);
}

/// A create the node cannot boot leaves no row and nothing on the node,
/// and says why.
#[tokio::test]
async fn a_failed_create_leaves_nothing() {
    a_failed_create_leaves_nothing_on(Harness::new().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_failed_create_leaves_nothing_through_the_node_api() {
    a_failed_create_leaves_nothing_on(Harness::through_node_api().await).await;
}

async fn a_failed_create_leaves_nothing_on(h: Harness) {
    h.node.fail_creates();
    let e = create_sandbox(&h.st, h.create_args()).await.unwrap_err();
    assert!(matches!(e, SandboxError::Failed(_)), "{e}");
    assert!(e.to_string().contains("the disk is full"), "{e}");
    let rows =
        h.st.db
            .sandboxes_in(&[
                SandboxState::Starting,
                SandboxState::Running,
                SandboxState::Paused,
                SandboxState::Killed,
            ])
            .await
            .unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    assert!(h.node.list().await.unwrap().is_empty());
    assert!(h.st.live().is_empty());
}

/// A burst of kills answers at once; their teardowns run at most
/// [`TEARDOWN_CONCURRENCY`] at a time and all finish.
#[tokio::test]
async fn teardowns_run_a_bounded_number_at_a_time() {
    let h = Harness::new().await;
    let n = TEARDOWN_CONCURRENCY + 4;
    let mut ids = Vec::new();
    let mut holds = Vec::new();
    for _ in 0..n {
        let id = h.create().await;
        holds.push(h.node.hold("destroy", &id));
        ids.push(id);
    }
    for id in &ids {
        assert!(kill_sandbox(&h.st, id).await.unwrap());
    }
    let destroys = || {
        h.node
            .calls()
            .iter()
            .filter(|c| c.starts_with("destroy "))
            .count()
    };
    patiently("the first teardowns to start", async {
        while destroys() < TEARDOWN_CONCURRENCY {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Time for a teardown past the bound to start, were it allowed to.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(destroys(), TEARDOWN_CONCURRENCY);
    for hold in &holds {
        hold.release();
    }
    h.st.teardowns.close();
    patiently("every teardown", h.st.teardowns.wait()).await;
    assert_eq!(destroys(), n);
    assert!(h.node.list().await.unwrap().is_empty());
}

/// Listings filter by state, metadata and template; a killed sandbox is
/// neither listed nor found; the operations the HTTP layer calls answer
/// "not found" for it.
#[tokio::test]
async fn the_registry_lists_and_finds_its_sandboxes() {
    let h = Harness::new().await;
    let mut args = h.create_args();
    args.metadata = BTreeMap::from([("team".into(), "a".into())]);
    let a = create(&h.st, args).await.unwrap().id;
    let b = h.create().await;
    let gone = h.create().await;
    kill(&h.st, h.team(), &gone).await.unwrap();
    assert_eq!(
        pause(&h.st, h.team(), &b, PauseMode::Memory).await.unwrap(),
        PauseOutcome::Paused
    );

    let ids = |rows: Vec<SandboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = Filter {
        team: h.team().to_owned(),
        states: LISTED.to_vec(),
        ..Filter::default()
    };
    assert_eq!(
        ids(list(&h.st, &all).await.unwrap()),
        [a.clone(), b.clone()]
    );
    let running = Filter {
        states: vec![SandboxState::Running],
        ..all.clone()
    };
    // Another team sees none of them, and touches none.
    let elsewhere = Filter {
        team: "another-team".into(),
        ..all.clone()
    };
    assert!(list(&h.st, &elsewhere).await.unwrap().is_empty());
    for e in [
        kill(&h.st, "another-team", &a).await.unwrap_err(),
        pause(&h.st, "another-team", &a, PauseMode::Memory)
            .await
            .unwrap_err(),
        resume(&h.st, "another-team", &b, None, None)
            .await
            .unwrap_err(),
        metrics(&h.st, "another-team", &a, None, None)
            .await
            .unwrap_err(),
        snapshot(&h.st, "another-team", &a, None).await.unwrap_err(),
        fork(&h.st, "another-team", &a, None, 1).await.unwrap_err(),
        super::set_network(&h.st, "another-team", &a, EgressPolicy::default())
            .await
            .unwrap_err(),
        logs(&h.st, "another-team", &a, &Default::default())
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
    }
    assert!(
        !super::set_end_at(&h.st, "another-team", &a, |t| t + 1)
            .await
            .unwrap()
    );
    assert!(
        latest_metrics(&h.st, "another-team", std::slice::from_ref(&a))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(list(&h.st, &running).await.unwrap()),
        std::slice::from_ref(&a)
    );
    let team = Filter {
        metadata: vec![("team".into(), "a".into())],
        ..all.clone()
    };
    assert_eq!(
        ids(list(&h.st, &team).await.unwrap()),
        std::slice::from_ref(&a)
    );
    let other = Filter {
        template: Some("other".into()),
        ..all.clone()
    };
    assert!(list(&h.st, &other).await.unwrap().is_empty());
    let by_name = Filter {
        template: Some("app".into()),
        ..all.clone()
    };
    assert_eq!(list(&h.st, &by_name).await.unwrap().len(), 2);
    let later = Filter {
        started_after: Some(crate::time::now_ms() + 60_000),
        ..all.clone()
    };
    assert!(list(&h.st, &later).await.unwrap().is_empty());
    let earlier = Filter {
        started_after: Some(0),
        ..all
    };
    assert_eq!(list(&h.st, &earlier).await.unwrap().len(), 2);

    assert_eq!(
        find(&h.st, &b, LISTED).await.unwrap().state,
        SandboxState::Paused
    );
    for e in [
        find(&h.st, &gone, LISTED).await.unwrap_err(),
        kill(&h.st, h.team(), &gone).await.unwrap_err(),
        metrics(&h.st, h.team(), &gone, None, None)
            .await
            .unwrap_err(),
        resume(&h.st, h.team(), &gone, None, None)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(e, SandboxError::NotFound(ref id) if *id == gone),
            "{e}"
        );
    }
    // Resuming answers with the running sandbox's row.
    let (outcome, row) = resume(&h.st, h.team(), &b, None, None).await.unwrap();
    assert_eq!(
        (outcome, row.state),
        (ResumeOutcome::Resumed, SandboxState::Running)
    );
}

/// The layers a template row records.
async fn template_of(h: &Harness, id_or_name: &str) -> hutch_image::TemplateMetadata {
    use hutch_image::TemplateDocument as _;
    let row =
        h.st.db
            .find_template(id_or_name.into())
            .await
            .unwrap()
            .unwrap();
    hutch_image::TemplateMetadata::from_json(&row.metadata).unwrap()
}

/// A running sandbox is frozen while the node writes its layer, then runs
/// on; the snapshot is a template of its template's layers and that one,
/// its variables and its limits. A paused one stays paused, untouched.
#[tokio::test]
async fn a_snapshot_freezes_a_running_sandbox_for_its_layer_only() {
    a_snapshot_freezes_a_running_sandbox_for_its_layer_only_on(Harness::new().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_snapshot_freezes_a_running_sandbox_for_its_layer_only_through_the_node_api() {
    a_snapshot_freezes_a_running_sandbox_for_its_layer_only_on(Harness::through_node_api().await)
        .await;
}

async fn a_snapshot_freezes_a_running_sandbox_for_its_layer_only_on(h: Harness) {
    let mut args = h.create_args();
    args.limits.memory_mb = Some(256);
    let id = create(&h.st, args).await.unwrap().id;
    let meta = snapshot_sandbox(&h.st, &id, None).await.unwrap();
    let ops: Vec<String> = h
        .node
        .calls()
        .into_iter()
        .filter(|c| c.ends_with(&id) && !c.starts_with("create"))
        .collect();
    assert_eq!(
        ops,
        [
            format!("pause {id}"),
            format!("snapshot_layer {id}"),
            format!("resume {id}")
        ]
    );
    assert_eq!(h.node.state(&id), Some(FakeState::Running));
    assert_eq!(h.row_state(&id).await, SandboxState::Running);

    let stored = template_of(&h, &meta.id).await;
    assert_eq!(stored, meta);
    assert_eq!(meta.name, meta.id, "unnamed: known by its id");
    assert_eq!(meta.layers.len(), h.template().layers.len() + 1);
    assert_eq!(meta.env, [("A".to_string(), "1".to_string())]);
    assert_eq!(meta.limits.unwrap().memory_mb, Some(256));
    assert!(matches!(
        meta.source,
        hutch_image::TemplateSource::Snapshot { ref sandbox_id, ref template }
            if *sandbox_id == id && template == "app"
    ));
    // A sandbox starts from it.
    let mut from = h.create_args();
    from.template = meta.id.clone();
    from.env = BTreeMap::new();
    let child = create(&h.st, from).await.unwrap();
    assert_eq!(child.template_id, meta.id);
    assert_eq!(
        child.memory_mb, 256,
        "the snapshot's limits are its defaults"
    );

    // Paused in memory: frozen already, and left so.
    pause(&h.st, h.team(), &id, PauseMode::Memory)
        .await
        .unwrap();
    let before = h.node.calls().len();
    snapshot_sandbox(&h.st, &id, None).await.unwrap();
    let calls = h.node.calls();
    assert_eq!(calls[before..], [format!("snapshot_layer {id}")]);
    assert_eq!(h.row_state(&id).await, SandboxState::Paused);

    // Paused with its files only: read as it is, and left so.
    resume(&h.st, h.team(), &id, None, None).await.unwrap();
    pause(&h.st, h.team(), &id, PauseMode::Filesystem)
        .await
        .unwrap();
    let before = h.node.calls().len();
    snapshot_sandbox(&h.st, &id, None).await.unwrap();
    assert_eq!(h.node.calls()[before..], [format!("snapshot_layer {id}")]);
    assert_eq!(h.node.state(&id), Some(FakeState::DiskOnly));
    assert_eq!(h.row_state(&id).await, SandboxState::Paused);
    let e = snapshot_sandbox(&h.st, "nope", None).await.unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
}

/// A named snapshot replaces the snapshot of that name, never a template
/// of another kind; listings show snapshots, not the forks' hidden ones.
#[tokio::test]
async fn named_snapshots_replace_snapshots_only() {
    let h = Harness::new().await;
    let id = h.create().await;
    let first = snapshot_sandbox(&h.st, &id, Some("mine".into()))
        .await
        .unwrap();
    let second = snapshot_sandbox(&h.st, &id, Some("mine".into()))
        .await
        .unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(template_of(&h, "mine").await.id, second.id);
    let e = snapshot_sandbox(&h.st, &id, Some("app".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::Catalog(crate::catalog::CatalogError::Exists(_))
        ),
        "{e}"
    );
    let e = snapshot_sandbox(&h.st, &id, Some("Bad Name".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            SandboxError::Catalog(crate::catalog::CatalogError::InvalidName(_))
        ),
        "{e}"
    );
    let other = h.create().await;
    let unnamed = snapshot_sandbox(&h.st, &other, None).await.unwrap();
    fork_sandbox(&h.st, &other, None, 1).await.unwrap();

    let names = |list: Vec<hutch_image::TemplateMetadata>| {
        list.into_iter().map(|t| t.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(list_snapshots(&h.st, h.team(), None, None).await.unwrap()),
        ["mine".to_string(), unnamed.id.clone()]
    );
    assert_eq!(
        names(
            list_snapshots(&h.st, h.team(), Some(&other), None)
                .await
                .unwrap()
        ),
        std::slice::from_ref(&unnamed.id)
    );
    assert_eq!(
        names(
            list_snapshots(&h.st, h.team(), None, Some("mine"))
                .await
                .unwrap()
        ),
        ["mine"]
    );
}

/// A fork starts `count` sandboxes from one snapshot with the source's
/// metadata, variables, limits and lifecycle; the source runs on.
#[tokio::test]
async fn a_fork_starts_sandboxes_like_the_source() {
    let h = Harness::new().await;
    let mut args = h.create_args();
    args.metadata = BTreeMap::from([("team".into(), "a".into())]);
    args.limits.cpu_count = Some(1);
    args.access_token = Some("secret".into());
    let source = create(&h.st, args).await.unwrap();
    let forks = fork_sandbox(&h.st, &source.id, Some(60), 2).await.unwrap();
    assert_eq!(forks.len(), 2);
    let snapshots = h
        .node
        .calls()
        .iter()
        .filter(|c| c.starts_with("snapshot_layer"))
        .count();
    assert_eq!(snapshots, 1, "one snapshot for every fork");
    let mut ids = Vec::new();
    for fork in forks {
        let fork = fork.unwrap();
        assert_eq!(fork.metadata, source.metadata);
        assert_eq!(fork.cpu_count, 1);
        let token = fork.access_token.as_deref().unwrap();
        assert_ne!(token, "secret", "a secure fork gets its own token");
        assert!(fork.end_at - fork.started_at <= 61_000);
        let meta = template_of(&h, &fork.template_id).await;
        assert!(meta.name.starts_with("app@fork-"), "{}", meta.name);
        assert_eq!(meta.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(h.row_state(&fork.id).await, SandboxState::Running);
        ids.push(fork.id);
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(h.row_state(&source.id).await, SandboxState::Running);
    assert_eq!(h.node.state(&source.id), Some(FakeState::Running));

    // The hidden snapshot goes with its last fork.
    let snapshot =
        h.st.db
            .get_sandbox(ids[0].clone())
            .await
            .unwrap()
            .unwrap()
            .template_id;
    kill(&h.st, h.team(), &ids[0]).await.unwrap();
    patiently("a teardown", async {
        while h.node.state(&ids[0]).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        h.st.db
            .find_template(snapshot.clone())
            .await
            .unwrap()
            .is_some(),
        "one fork is left"
    );
    kill(&h.st, h.team(), &ids[1]).await.unwrap();
    patiently("the snapshot's removal", async {
        while h
            .st
            .db
            .find_template(snapshot.clone())
            .await
            .unwrap()
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    for bad in [0, super::snapshots::MAX_FORKS + 1] {
        let e = fork_sandbox(&h.st, &source.id, None, bad)
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::Invalid(_)), "{e}");
    }
    let e = fork_sandbox(&h.st, "gone", None, 1).await.unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
}

/// New network rules reach the node at once while the sandbox has a
/// network, and are recorded either way (a sandbox paused with its files
/// only gets them when it boots again).
#[tokio::test]
async fn network_rules_are_applied_and_recorded() {
    let h = Harness::new().await;
    let id = h.create().await;
    let closed = EgressPolicy {
        allow_internet_access: false,
        ..EgressPolicy::default()
    };
    let applied = |h: &Harness| {
        h.node
            .calls()
            .iter()
            .filter(|c| **c == format!("set_egress_policy {id}"))
            .count()
    };
    set_network(&h.st, h.team(), &id, closed.clone())
        .await
        .unwrap();
    assert_eq!(applied(&h), 1);
    assert_eq!(recorded_network(&h, &id).await, closed);

    pause(&h.st, h.team(), &id, PauseMode::Filesystem)
        .await
        .unwrap();
    set_network(&h.st, h.team(), &id, EgressPolicy::default())
        .await
        .unwrap();
    assert_eq!(applied(&h), 1, "nothing to apply it to while stopped");
    assert_eq!(recorded_network(&h, &id).await, EgressPolicy::default());

    let e = set_network(&h.st, h.team(), "nope", closed)
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
}

async fn recorded_network(h: &Harness, id: &str) -> hutch_runtime::EgressPolicy {
    let row = h.st.db.get_sandbox(id.into()).await.unwrap().unwrap();
    crate::db::NetworkRecord::decode(row.network.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn running_sandboxes_are_sampled_for_their_life() {
    let h = Harness::new().await;
    let a = h.create().await;
    let b = h.create().await;
    // Not sampled yet: a sample taken now.
    assert_eq!(
        metrics(&h.st, h.team(), &a, None, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        metrics(&h.st, h.team(), &a, Some(i64::MAX / 2), None)
            .await
            .unwrap()
            .is_empty(),
        "nothing after now"
    );
    // Two rounds: a base, then a sample.
    crate::metrics::sample_all(&h.st).await;
    crate::metrics::sample_all(&h.st).await;
    let series = metrics(&h.st, h.team(), &a, None, None).await.unwrap();
    assert_eq!(series.len(), 1);
    assert!(h.st.metrics.latest(&b).is_some());
    // Paused sandboxes are not sampled; their series is kept.
    pause(&h.st, h.team(), &b, PauseMode::Memory).await.unwrap();
    crate::metrics::sample_all(&h.st).await;
    assert_eq!(h.st.metrics.range(&a, None, None).len(), 2);
    assert_eq!(h.st.metrics.range(&b, None, None).len(), 1);
    let latest = latest_metrics(&h.st, h.team(), &[a.clone(), b.clone(), "gone".into()])
        .await
        .unwrap();
    let ids: Vec<&str> = latest.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    // A killed sandbox's history goes with it.
    assert!(kill_sandbox(&h.st, &a).await.unwrap());
    crate::metrics::sample_all(&h.st).await;
    assert!(h.st.metrics.latest(&a).is_none());
}

#[tokio::test]
async fn a_private_sandbox_and_its_forks_need_their_own_traffic_tokens() {
    let h = Harness::new().await;
    let mut args = h.create_args();
    args.ingress = crate::db::Ingress {
        traffic_token: Some("t".repeat(32)),
        mask_request_host: Some("localhost:${PORT}".into()),
    };
    let source = create_sandbox(&h.st, args).await.unwrap();
    let live = h.st.live().get(&source.id).unwrap().ingress.clone();
    assert_eq!(live, source.ingress, "the front door knows it");
    let forks = fork(&h.st, h.team(), &source.id, None, 2).await.unwrap();
    let mut tokens = vec![source.ingress.traffic_token.clone().unwrap()];
    for f in forks {
        let f = f.unwrap();
        assert_eq!(
            f.ingress.mask_request_host.as_deref(),
            Some("localhost:${PORT}")
        );
        tokens.push(f.ingress.traffic_token.unwrap());
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "each fork has a token of its own");
    let public = h.create().await;
    assert_eq!(
        h.st.live().get(&public).unwrap().ingress,
        crate::db::Ingress::default()
    );
}

#[tokio::test]
async fn a_sandbox_log_records_its_life_and_outlives_it() {
    a_sandbox_log_records_its_life_and_outlives_it_on(Harness::new().await).await;
}

/// The same, the control side driving the node through the node API.
#[tokio::test]
async fn a_sandbox_log_records_its_life_and_outlives_it_through_the_node_api() {
    a_sandbox_log_records_its_life_and_outlives_it_on(Harness::through_node_api().await).await;
}

async fn a_sandbox_log_records_its_life_and_outlives_it_on(h: Harness) {
    let id = h.create().await;
    pause(&h.st, h.team(), &id, PauseMode::Memory)
        .await
        .unwrap();
    resume(&h.st, h.team(), &id, None, None).await.unwrap();
    assert!(kill_sandbox(&h.st, &id).await.unwrap());
    let all = crate::sandbox_logs::Query {
        limit: 100,
        forward: true,
        ..Default::default()
    };
    let messages: Vec<String> = logs(&h.st, h.team(), &id, &all)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(
        messages,
        [
            "sandbox started from template 'app'",
            "sandbox paused (memory)",
            "sandbox resumed",
            "sandbox killed"
        ]
    );
    assert!(matches!(
        logs(&h.st, h.team(), "nope", &all).await.unwrap_err(),
        SandboxError::NotFound(_)
    ));
}

#[tokio::test]
async fn volumes_are_mounted_checked_and_kept_while_used() {
    let h = Harness::new().await;
    let vol = crate::volumes::create(&h.st, h.team(), "shared")
        .await
        .unwrap();
    assert!(matches!(
        crate::volumes::create(&h.st, h.team(), "shared")
            .await
            .unwrap_err(),
        crate::volumes::VolumeError::Exists(_)
    ));
    let mut args = h.create_args();
    args.volume_mounts = vec![("shared".into(), "/data".into())];
    let a = create_sandbox(&h.st, args).await.unwrap();
    assert_eq!(a.volume_mounts[0].volume_id, vol.id);
    assert_eq!(
        h.node.mounted.lock().unwrap()[&a.id],
        [(vol.id.clone(), "/data".to_owned())]
    );
    // By id too; every problem of a create is named at once.
    let mut args = h.create_args();
    args.volume_mounts = vec![
        (vol.id.clone(), "/x".into()),
        ("missing".into(), "rel".into()),
        ("shared".into(), "/x".into()),
    ];
    let e = create_sandbox(&h.st, args).await.unwrap_err();
    let text = e.to_string();
    for want in [
        "volume mount #1: volume 'missing' not found",
        "volume mount #1: path must be absolute",
        "volume mount #2: path '/x' is already used",
    ] {
        assert!(text.contains(want), "{text}");
    }
    assert!(matches!(e, SandboxError::Invalid(_)), "{e}");

    // A filesystem pause boots it again with its volumes.
    pause(&h.st, h.team(), &a.id, PauseMode::Filesystem)
        .await
        .unwrap();
    h.node.mounted.lock().unwrap().clear();
    resume(&h.st, h.team(), &a.id, None, None).await.unwrap();
    assert_eq!(h.node.mounted.lock().unwrap()[&a.id].len(), 1);

    // Deleted while used: its name is free, its data stays until the
    // sandbox is gone.
    crate::volumes::delete(&h.st, h.team(), &vol.id)
        .await
        .unwrap();
    assert!(
        crate::volumes::live(&h.st, h.team())
            .await
            .unwrap()
            .is_empty()
    );
    let calls = |what: &str| {
        h.node
            .calls()
            .iter()
            .filter(|c| c.starts_with(what))
            .count()
    };
    assert_eq!(calls("destroy_volume"), 0);
    let mut args = h.create_args();
    args.volume_mounts = vec![("shared".into(), "/data".into())];
    assert!(create_sandbox(&h.st, args).await.is_err(), "deleted");
    assert!(kill_sandbox(&h.st, &a.id).await.unwrap());
    h.st.teardowns.close();
    h.st.teardowns.wait().await;
    assert_eq!(calls("destroy_volume"), 1);
    assert!(h.st.db.list_volumes().await.unwrap().is_empty(), "purged");
}
