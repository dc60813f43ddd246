//! Several control planes on one PostgreSQL database: any of them serves
//! any request.
//!
//! What a control plane keeps in memory about sandboxes — the live map
//! ([`AppState::live`]) the front door routes by, and the cluster's
//! placements — follows the store: every change to a sandbox row is
//! announced (`NOTIFY hutch_sandboxes` from a trigger,
//! [`crate::db::Store::sandbox_changes`]) and each replica reloads that row
//! ([`sync_one`]); after a lost connection, and every [`RESYNC`] in case a
//! notification went missing, it reloads them all ([`sync_all`]). A request
//! for a sandbox this replica does not know yet (created through another
//! one an instant ago) loads its row first ([`ensure_known`]).
//!
//! Work that must run once runs on the replica that holds the store's
//! leader lock ([`crate::db::Store::leads`]): expiry and auto-pause (the
//! reaper), reconciling nodes as they join, return or restart, reporting
//! lost nodes, and watching the agents of sandboxes other replicas
//! created. When it dies its session ends and another replica takes the
//! lock within a second or two; it then watches every agent and
//! reconciles every node again.
//!
//! What stays per replica: its warm pool, its transitions lock (two
//! replicas pausing one sandbox at the same instant are not serialised),
//! and the metrics it samples.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{SandboxChange, SandboxRow, SandboxState};
use crate::state::{AppState, LiveSandbox, Paused};
use crate::time;

/// How often a replica reloads every sandbox row, whatever it heard.
const RESYNC: Duration = Duration::from_secs(10);

/// How often a replica looks whether it came to lead.
const LEAD_LOOK: Duration = Duration::from_millis(500);

/// Loads every live sandbox of a control plane (those of nodes lost now
/// too: they are answered as such until their node comes back), then, when
/// other control planes share the store, follows its changes and the
/// leader lock for as long as the server runs.
pub(crate) async fn start(st: &Arc<AppState>) {
    if st.cluster.is_none() {
        return;
    }
    sync_all(st).await;
    if !st.replicated {
        return;
    }
    let Some(mut changes) = st.db.sandbox_changes().await else {
        return;
    };
    let follower = st.clone();
    tokio::spawn(async move {
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = follower.reaper_stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(SandboxChange::One(id)) => sync_one(&follower, &id).await,
                    Some(SandboxChange::All) => sync_all(&follower).await,
                    None => return,
                },
                _ = resync.tick() => sync_all(&follower).await,
            }
        }
    });
    let leader = st.clone();
    tokio::spawn(async move {
        let mut led = false;
        loop {
            tokio::select! {
                _ = leader.reaper_stop.cancelled() => return,
                _ = tokio::time::sleep(LEAD_LOOK) => {}
            }
            let leads = leader.db.leads();
            if leads && !led {
                tracing::info!(
                    "leading: this control plane reaps, watches agents and reconciles nodes"
                );
                watch_unwatched(&leader).await;
                leader.reaper_wake.notify_one();
            }
            led = leads;
        }
    });
}

/// Makes sure this replica knows sandbox `id` if the store has it live:
/// for a request that may come right after another replica made it.
pub(crate) async fn ensure_known(st: &Arc<AppState>, id: &str) {
    if st.replicated && !st.live().contains_key(id) {
        sync_one(st, id).await;
    }
}

/// Reloads sandbox `id`'s row and placement into this replica's memory.
pub(crate) async fn sync_one(st: &Arc<AppState>, id: &str) {
    let row = match st.db.get_sandbox(id.to_owned()).await {
        Ok(row) => row,
        Err(e) => {
            tracing::debug!(sandbox = %id, "cannot reload the sandbox: {e}");
            return;
        }
    };
    match row {
        Some(row) if matches!(row.state, SandboxState::Running | SandboxState::Paused) => {
            learn_placement(st, id).await;
            apply(st, &row);
        }
        // Being created: the replica creating it routes it when it runs.
        Some(row) if row.state == SandboxState::Starting => {}
        // Killed, or gone: not routed to any more. Its placement goes when
        // its node has torn it down.
        _ => {
            st.live().remove(id);
            learn_placement(st, id).await;
        }
    }
}

/// Reloads every live sandbox; forgets those killed meanwhile.
pub(crate) async fn sync_all(st: &Arc<AppState>) {
    let rows = match st
        .db
        .sandboxes_in(&[SandboxState::Running, SandboxState::Paused])
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("cannot reload the sandboxes: {e}");
            return;
        }
    };
    if let (Some(cluster), Ok(placements)) = (&st.cluster, st.db.list_placements().await) {
        for p in placements {
            cluster.learn_placement(&p.sandbox_id, Some(p.node_id));
        }
    }
    let listed: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let unlisted: Vec<String> = st
        .live()
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .cloned()
        .collect();
    for row in &rows {
        apply(st, row);
    }
    // Not running or paused in the store: killed, or (created here) not
    // recorded running yet — the row says which.
    for id in unlisted {
        sync_one(st, &id).await;
    }
}

/// Sandbox `id`'s placement, as the store has it.
async fn learn_placement(st: &AppState, id: &str) {
    let Some(cluster) = &st.cluster else {
        return;
    };
    match st.db.placement_of(id.to_owned()).await {
        Ok(p) => cluster.learn_placement(id, p.map(|p| p.node_id)),
        Err(e) => tracing::debug!(sandbox = %id, "cannot read the placement: {e}"),
    }
}

/// Brings this replica's entry for live sandbox `row` in line with it:
/// its expiry, whether it is paused; a sandbox it did not know is routed
/// to (its agent watched, if this replica leads).
fn apply(st: &Arc<AppState>, row: &SandboxRow) {
    let now = time::now_ms();
    let paused = (row.state == SandboxState::Paused).then(|| Paused {
        remaining_ms: row.paused_remaining_ms.unwrap_or(0).max(0),
        mode: row.pause_mode.unwrap_or(crate::db::PauseMode::Memory),
    });
    let end_at = match paused {
        Some(p) => now.saturating_add(p.remaining_ms),
        None => row.end_at,
    };
    let new = {
        let mut live = st.live();
        match live.get_mut(&row.id) {
            Some(entry) => {
                entry.end_at = end_at;
                entry.paused = paused;
                entry.lifecycle = row.lifecycle;
                false
            }
            None => {
                live.insert(
                    row.id.clone(),
                    LiveSandbox {
                        agent: st.node.agent_link(&row.id),
                        end_at,
                        paused,
                        agent_pid: None,
                        lifecycle: row.lifecycle,
                        ingress: row.ingress.clone(),
                        team: row.team_id.clone(),
                    },
                );
                true
            }
        }
    };
    st.reaper_wake.notify_one();
    if new && st.db.leads() && paused.is_none() {
        watch(st, &row.id);
    }
}

/// Watches the agent of every running sandbox this replica knows without
/// its pid (another replica created it): what the leader does.
async fn watch_unwatched(st: &Arc<AppState>) {
    let ids: Vec<String> = st
        .live()
        .iter()
        .filter(|(_, e)| e.agent_pid.is_none() && e.paused.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        watch(st, &id);
    }
}

/// Learns sandbox `id`'s agent from its node and watches it.
fn watch(st: &Arc<AppState>, id: &str) {
    let st = st.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let pid = match st.node.agent_pid(&id).await {
            Ok(Some(pid)) => pid,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(sandbox = %id, "cannot learn the sandbox's agent: {e}");
                return;
            }
        };
        {
            let mut live = st.live();
            match live.get_mut(&id) {
                Some(entry) if entry.agent_pid.is_none() => entry.agent_pid = Some(pid),
                _ => return,
            }
        }
        crate::lifecycle::watch_agent(&st, &id, pid);
    });
}
