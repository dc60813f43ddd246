//! The sandbox state machine on a [`FakeNode`]: no root, no runc, seconds.

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
    let h = Harness::new().await;
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
    let h = Harness::new().await;
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
    let h = Harness::new().await;
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
    kill(&h.st, &gone).await.unwrap();
    assert_eq!(
        pause(&h.st, &b, PauseMode::Memory).await.unwrap(),
        PauseOutcome::Paused
    );

    let ids = |rows: Vec<SandboxRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = Filter {
        states: LISTED.to_vec(),
        ..Filter::default()
    };
    assert_eq!(
        ids(list(&h.st, &all).await.unwrap()),
        [a.clone(), b.clone()]
    );
    let running = Filter {
        states: vec![SandboxState::Running],
        ..Filter::default()
    };
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
        ..all
    };
    assert_eq!(list(&h.st, &by_name).await.unwrap().len(), 2);

    assert_eq!(
        find(&h.st, &b, LISTED).await.unwrap().state,
        SandboxState::Paused
    );
    for e in [
        find(&h.st, &gone, LISTED).await.unwrap_err(),
        kill(&h.st, &gone).await.unwrap_err(),
        metrics(&h.st, &gone).await.unwrap_err(),
        resume(&h.st, &gone, None, None).await.unwrap_err(),
    ] {
        assert!(
            matches!(e, SandboxError::NotFound(ref id) if *id == gone),
            "{e}"
        );
    }
    // Resuming answers with the running sandbox's row.
    let (outcome, row) = resume(&h.st, &b, None, None).await.unwrap();
    assert_eq!(
        (outcome, row.state),
        (ResumeOutcome::Resumed, SandboxState::Running)
    );
}
