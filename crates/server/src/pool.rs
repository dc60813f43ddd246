//! The warm pool: sandboxes booted ahead of demand, so that creating a
//! sandbox is a claim instead of a boot.
//!
//! For every template the server keeps up to `N` sandboxes ready
//! (`hutch serve --warm-pool N`, default [`crate::DEFAULT_WARM_POOL`]; 0
//! turns the pool off). A pooled sandbox is booted exactly like a cold one
//! (`lifecycle::sandbox_spec`), with the template's default limits
//! ([`crate::limits`]): the template's layers, its boot
//! config, and an id picked in advance — the id it will have when a client
//! gets it, which is also its hostname and `E2B_SANDBOX_ID`. Its agent is up
//! and has answered `/health`, but it has no sandbox layer yet: no user state
//! at all.
//!
//! # Claim
//!
//! `POST /sandboxes` takes a ready sandbox of the template, hands it the
//! sandbox layer with `POST /init` (which also proves the agent alive; a
//! dead one is destroyed and the request falls back to a cold boot),
//! records its row as `running` with its expiry counted from the claim, and
//! schedules a refill. When no sandbox is ready but one is being booted for
//! the pool, the request waits for that one instead of booting a second
//! next to it; only one request may wait for a given boot, others boot
//! cold. A request asking for limits other than the template's defaults
//! never claims: it boots a sandbox with its own limits.
//!
//! # Refill
//!
//! One task per template at most fills its pool, one sandbox at a time, and
//! the whole server boots one pooled sandbox at a time (a semaphore), so
//! that background boots never compete with each other for the CPUs.
//! Requests come first: a pool boot waits (up to [`COLD_BOOT_PRIORITY`])
//! while a request boots a sandbox cold. A refill starts at server start
//! (for every template), after an import or the `base` build, and
//! [`REFILL_DELAY`] after every create, claimed or cold (a cold create
//! schedules it once its own sandbox is up). A failed boot stops the refill
//! until the next of those events.
//!
//! # Invisible until claimed
//!
//! A pooled sandbox has no database row and no entry in the live map: it is
//! not listed, not routed to by the front door, not counted as a running
//! sandbox of its template, and has no expiry. Removing a template destroys
//! its pooled sandboxes. A server that stops (SIGTERM) destroys its pool
//! (`shutdown`); one that is killed leaves it on the host, where the next
//! start destroys it like any sandbox the database does not know (see
//! [`crate::lifecycle`]), then boots a new pool.

use hutch_image::TemplateDocument as _;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hutch_image::TemplateMetadata;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::ids;
use crate::lifecycle::{boot_sandbox, sandbox_spec};
use crate::state::AppState;

/// How long [`shutdown`] waits for a boot in progress.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// How long a pool boot defers to requests booting sandboxes cold.
pub const COLD_BOOT_PRIORITY: Duration = Duration::from_secs(2);

/// How long after a create its template's pool starts refilling: a client
/// usually runs its first command at once, and on a small host a boot next
/// to it would slow it down (measured: the first output of a claimed
/// sandbox took twice as long).
pub const REFILL_DELAY: Duration = Duration::from_millis(100);

/// A booted sandbox waiting for a client.
#[derive(Debug)]
pub(crate) struct Pooled {
    /// Its id (fixed at boot).
    pub id: String,
    /// Where its agent is reached.
    pub agent: hutch_runtime::AgentLink,
    /// Host pid of its agent (watched once it is claimed).
    pub init_pid: u32,
    /// The build of the template it was booted from: a sandbox booted
    /// while a newer build took the template's id is not handed out.
    pub build_id: String,
}

/// What [`Pool::take`] found.
pub(crate) enum Claim {
    /// A ready sandbox, now the caller's.
    Ready(Pooled),
    /// None ready, but one is booting for the pool and is promised to the
    /// caller; the sender is dropped if its boot fails.
    Wait(oneshot::Receiver<Pooled>),
    /// Nothing to take: boot one.
    Cold,
}

/// The pool's numbers for one template (`GET /hutch/v1/pool`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TemplateStats {
    /// Sandboxes ready now.
    pub ready: usize,
    /// Whether one is being booted for the pool now.
    pub booting: bool,
    /// Creates served from the pool since the server started.
    pub claimed: u64,
    /// Creates that booted a sandbox since the server started.
    pub cold: u64,
    /// Why the last pool boot failed, if it did.
    pub last_error: Option<String>,
}

/// The pools of every template.
pub(crate) struct Pool {
    /// Sandboxes to keep ready per template.
    target: AtomicUsize,
    inner: Mutex<Inner>,
    /// One pool boot at a time, server-wide.
    boots: Semaphore,
    /// Signalled whenever a refill task ends.
    task_ended: Notify,
    /// Requests booting a sandbox cold now.
    cold_boots: AtomicUsize,
    /// Signalled whenever one of those ends.
    cold_boot_ended: Notify,
}

/// Counts a request's cold boot while it lives (see [`Pool::cold_boot`]).
pub(crate) struct ColdBoot<'a>(&'a Pool);

impl Drop for ColdBoot<'_> {
    fn drop(&mut self) {
        self.0.cold_boots.fetch_sub(1, Ordering::SeqCst);
        self.0.cold_boot_ended.notify_waiters();
    }
}

#[derive(Default)]
struct Inner {
    /// Set by [`shutdown`]: nothing new is booted.
    closed: bool,
    /// By template id.
    templates: HashMap<String, Entry>,
}

#[derive(Default)]
struct Entry {
    ready: VecDeque<Pooled>,
    /// A refill task runs for this template.
    filling: bool,
    /// That task is booting a sandbox now.
    booting: bool,
    /// The request promised the sandbox being booted.
    waiter: Option<oneshot::Sender<Pooled>>,
    claimed: u64,
    cold: u64,
    last_error: Option<String>,
}

impl Pool {
    pub fn new(target: usize) -> Pool {
        Pool {
            target: AtomicUsize::new(target),
            inner: Mutex::new(Inner::default()),
            boots: Semaphore::new(1),
            task_ended: Notify::new(),
            cold_boots: AtomicUsize::new(0),
            cold_boot_ended: Notify::new(),
        }
    }

    /// Marks a request's cold boot in progress until the guard drops; pool
    /// boots wait for it.
    pub fn cold_boot(&self) -> ColdBoot<'_> {
        self.cold_boots.fetch_add(1, Ordering::SeqCst);
        ColdBoot(self)
    }

    /// Waits until no request boots a sandbox, or [`COLD_BOOT_PRIORITY`].
    async fn defer_to_cold_boots(&self) {
        let wait = async {
            loop {
                let ended = self.cold_boot_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.cold_boots.load(Ordering::SeqCst) == 0 {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(COLD_BOOT_PRIORITY, wait).await;
    }

    /// Sandboxes kept ready per template.
    pub fn target(&self) -> usize {
        self.target.load(Ordering::SeqCst)
    }

    pub fn set_target(&self, n: usize) {
        self.target.store(n, Ordering::SeqCst);
    }

    /// Locked briefly; never held across an await.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a ready sandbox of `template_id`, or the promise of the one
    /// being booted (see [`Claim`]).
    pub fn take(&self, template_id: &str) -> Claim {
        let mut inner = self.lock();
        let Some(entry) = inner.templates.get_mut(template_id) else {
            return Claim::Cold;
        };
        if let Some(p) = entry.ready.pop_front() {
            return Claim::Ready(p);
        }
        if entry.booting && entry.waiter.as_ref().is_none_or(|w| w.is_closed()) {
            let (tx, rx) = oneshot::channel();
            entry.waiter = Some(tx);
            return Claim::Wait(rx);
        }
        Claim::Cold
    }

    /// Whether sandbox `id` is in the pool, ready.
    pub fn holds(&self, id: &str) -> bool {
        self.lock()
            .templates
            .values()
            .any(|e| e.ready.iter().any(|p| p.id == id))
    }

    /// Counts a create served from the pool.
    pub fn record_claim(&self, template_id: &str) {
        self.lock()
            .templates
            .entry(template_id.to_owned())
            .or_default()
            .claimed += 1;
    }

    /// Counts a create that booted its sandbox.
    pub fn record_cold(&self, template_id: &str) {
        self.lock()
            .templates
            .entry(template_id.to_owned())
            .or_default()
            .cold += 1;
    }

    /// Takes every ready sandbox of a template being removed (the caller
    /// destroys them) and forgets the template unless a refill task still
    /// runs for it (that task finds the template gone and stops).
    pub fn remove_template(&self, template_id: &str) -> Vec<Pooled> {
        let mut inner = self.lock();
        let Some(entry) = inner.templates.get_mut(template_id) else {
            return Vec::new();
        };
        let ready = entry.ready.drain(..).collect();
        if !entry.filling {
            inner.templates.remove(template_id);
        }
        ready
    }

    /// The numbers of one template.
    pub fn stats(&self, template_id: &str) -> TemplateStats {
        let inner = self.lock();
        inner
            .templates
            .get(template_id)
            .map(|e| TemplateStats {
                ready: e.ready.len(),
                booting: e.booting,
                claimed: e.claimed,
                cold: e.cold,
                last_error: e.last_error.clone(),
            })
            .unwrap_or_default()
    }

    /// Whether the refill task of `template_id` should boot another
    /// sandbox; if not, the task is marked ended.
    fn wants_more(&self, template_id: &str) -> bool {
        let target = self.target();
        let mut inner = self.lock();
        let closed = inner.closed;
        let entry = inner.templates.entry(template_id.to_owned()).or_default();
        if !closed && entry.ready.len() < target {
            return true;
        }
        entry.filling = false;
        drop(inner);
        self.task_ended.notify_waiters();
        false
    }

    /// Ends the refill task of `template_id`; `forget` drops the template
    /// (it no longer exists), `error` records why a boot failed.
    fn end_task(&self, template_id: &str, forget: bool, error: Option<String>) {
        let mut inner = self.lock();
        if forget {
            inner.templates.remove(template_id);
        } else if let Some(entry) = inner.templates.get_mut(template_id) {
            entry.filling = false;
            entry.booting = false;
            entry.waiter = None;
            if error.is_some() {
                entry.last_error = error;
            }
        }
        drop(inner);
        self.task_ended.notify_waiters();
    }

    /// Marks a boot started for `template_id`; `false` if the pool closed
    /// in the meantime.
    fn start_boot(&self, template_id: &str) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner
            .templates
            .entry(template_id.to_owned())
            .or_default()
            .booting = true;
        true
    }

    /// Hands a freshly booted sandbox to the request waiting for it, else
    /// puts it in the pool. Returns it if neither is possible (the pool
    /// closed), for the caller to destroy.
    fn deliver(&self, template_id: &str, mut pooled: Pooled) -> Option<Pooled> {
        let mut inner = self.lock();
        let closed = inner.closed;
        let entry = inner.templates.entry(template_id.to_owned()).or_default();
        entry.booting = false;
        entry.last_error = None;
        if let Some(waiter) = entry.waiter.take() {
            match waiter.send(pooled) {
                Ok(()) => return None,
                Err(back) => pooled = back,
            }
        }
        if closed {
            return Some(pooled);
        }
        entry.ready.push_back(pooled);
        None
    }

    fn any_filling(&self) -> bool {
        self.lock().templates.values().any(|e| e.filling)
    }
}

/// Starts filling the pool of `template_id` unless the pool is off or
/// closed, a refill already runs for it, or it is full.
pub(crate) fn refill(st: &Arc<AppState>, template_id: &str) {
    refill_after(st, template_id, Duration::ZERO);
}

/// [`refill`] after a create, which leaves its client
/// [`REFILL_DELAY`] to start using the sandbox before a boot competes
/// with it for the CPUs.
pub(crate) fn refill_after_create(st: &Arc<AppState>, template_id: &str) {
    refill_after(st, template_id, REFILL_DELAY);
}

fn refill_after(st: &Arc<AppState>, template_id: &str, delay: Duration) {
    let target = st.pool.target();
    {
        let mut inner = st.pool.lock();
        if inner.closed || target == 0 {
            return;
        }
        let entry = inner.templates.entry(template_id.to_owned()).or_default();
        if entry.filling || entry.ready.len() >= target {
            return;
        }
        entry.filling = true;
    }
    let st = st.clone();
    let template_id = template_id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        refill_task(st, template_id).await
    });
}

/// Starts filling the pool of every template (at server start).
pub(crate) async fn fill_all(st: &Arc<AppState>) {
    if st.pool.target() == 0 {
        return;
    }
    match st.db.list_templates().await {
        Ok(templates) => {
            for t in templates {
                refill(st, &t.id);
            }
        }
        Err(e) => tracing::warn!("cannot list templates to fill the warm pool: {e}"),
    }
}

/// Whether template `id` keeps a warm pool: not when it is a snapshot
/// (each would hold an idle sandbox for as long as it exists, for creates
/// that come now and then) or hidden (a replaced build, or a fork's
/// snapshot, whose sandboxes are all created at once). A template that
/// cannot be read does: the boot then reports why.
async fn keeps_a_pool(st: &AppState, id: &str) -> bool {
    match crate::catalog::find(st, id).await {
        Ok(Some((row, meta))) => {
            !row.name.contains('@')
                && !matches!(meta.source, hutch_image::TemplateSource::Snapshot { .. })
        }
        Ok(None) | Err(_) => true,
    }
}

async fn refill_task(st: Arc<AppState>, template_id: String) {
    if !keeps_a_pool(&st, &template_id).await {
        st.pool.end_task(&template_id, true, None);
        return;
    }
    while st.pool.wants_more(&template_id) {
        let Ok(_permit) = st.pool.boots.acquire().await else {
            st.pool.end_task(&template_id, false, None);
            return;
        };
        st.pool.defer_to_cold_boots().await;
        // Held until the sandbox is in the pool: the template's layers
        // cannot be removed under it, and a template removal (which takes
        // the lock exclusively) finds it there.
        let _layers = st.layers_lock.read().await;
        // The pool may have filled or closed while this task waited.
        if !st.pool.wants_more(&template_id) {
            return;
        }
        let template = match st.db.find_template(template_id.clone()).await {
            Ok(Some(t)) if t.id == template_id => t,
            Ok(_) => {
                // Removed while this task waited.
                st.pool.end_task(&template_id, true, None);
                return;
            }
            Err(e) => {
                tracing::warn!(template = %template_id, "warm pool: cannot look up the template: {e}");
                st.pool.end_task(&template_id, false, Some(e.to_string()));
                return;
            }
        };
        let meta = match TemplateMetadata::from_json(&template.metadata) {
            Ok(m) => m,
            Err(e) => {
                let e = format!("unreadable template metadata: {e}");
                tracing::warn!(template = %template.name, "warm pool: {e}");
                st.pool.end_task(&template_id, false, Some(e));
                return;
            }
        };
        // Pooled sandboxes have the template's default limits.
        let limits = match crate::limits::template_defaults(
            &template.name,
            meta.limits.as_ref(),
            &st.max_limits,
        ) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(template = %template.name, "warm pool: {e}");
                st.pool.end_task(&template_id, false, Some(e));
                return;
            }
        };
        if !st.pool.start_boot(&template_id) {
            st.pool.end_task(&template_id, false, None);
            return;
        }
        let id = ids::new_id();
        let started = std::time::Instant::now();
        let spec = sandbox_spec(&id, &template, &meta, limits);
        match boot_sandbox(&st, spec, &meta).await {
            Ok(sandbox) => {
                tracing::debug!(
                    sandbox = %id,
                    template = %template.name,
                    ms = started.elapsed().as_millis() as u64,
                    "warm sandbox ready"
                );
                let pooled = Pooled {
                    id,
                    agent: sandbox.agent,
                    init_pid: sandbox.init_pid,
                    build_id: template.build_id.clone(),
                };
                if let Some(p) = st.pool.deliver(&template_id, pooled) {
                    destroy(&st, &p.id).await;
                }
            }
            Err(e) => {
                // The runtime cleaned up after itself.
                tracing::warn!(
                    template = %template.name,
                    "warm pool: booting a sandbox failed, not retrying until the next create: {e}"
                );
                st.pool.end_task(&template_id, false, Some(e.to_string()));
                return;
            }
        }
    }
}

/// Destroys a pooled sandbox, logging a failure (whatever is left is
/// destroyed at the next start: the database does not know it).
pub(crate) async fn destroy(st: &AppState, id: &str) {
    st.logs.forget(id);
    match st.node.destroy(id).await {
        Ok(()) => tracing::debug!(sandbox = %id, "pooled sandbox destroyed"),
        Err(e) => tracing::warn!(sandbox = %id, "cannot destroy pooled sandbox: {e}"),
    }
}

/// Destroys a pooled sandbox in the background.
pub(crate) fn discard(st: &Arc<AppState>, id: String) {
    let st = st.clone();
    tokio::spawn(async move { destroy(&st, &id).await });
}

/// Closes the pool, waits (a while) for a boot in progress, and destroys
/// every pooled sandbox. Returns how many were destroyed.
pub(crate) async fn shutdown(st: &Arc<AppState>) -> usize {
    st.pool.lock().closed = true;
    let wait = async {
        loop {
            let ended = st.pool.task_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !st.pool.any_filling() {
                return;
            }
            ended.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_WAIT, wait).await.is_err() {
        tracing::warn!(
            "a warm-pool boot did not finish in {SHUTDOWN_WAIT:?}; the next start destroys what it leaves"
        );
    }
    let pooled: Vec<Pooled> = {
        let mut inner = st.pool.lock();
        inner
            .templates
            .values_mut()
            .flat_map(|e| e.ready.drain(..))
            .collect()
    };
    let n = pooled.len();
    futures::future::join_all(pooled.iter().map(|p| destroy(st, &p.id))).await;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(id: &str) -> Pooled {
        Pooled {
            id: id.to_owned(),
            agent: hutch_runtime::AgentLink::unix(format!("/nowhere/{id}").into()),
            init_pid: 0,
            build_id: "b".to_owned(),
        }
    }

    #[test]
    fn ready_sandboxes_are_taken_oldest_first() {
        let pool = Pool::new(2);
        assert!(matches!(pool.take("t"), Claim::Cold));
        assert!(pool.deliver("t", pooled("a")).is_none());
        assert!(pool.deliver("t", pooled("b")).is_none());
        assert_eq!(pool.stats("t").ready, 2);
        assert!(matches!(pool.take("t"), Claim::Ready(p) if p.id == "a"));
        assert!(matches!(pool.take("t"), Claim::Ready(p) if p.id == "b"));
        assert!(matches!(pool.take("t"), Claim::Cold));
        assert!(matches!(pool.take("other"), Claim::Cold));
    }

    #[tokio::test]
    async fn one_request_waits_for_the_boot_in_progress() {
        let pool = Pool::new(1);
        assert!(pool.start_boot("t"));
        let Claim::Wait(promise) = pool.take("t") else {
            panic!("expected a promise");
        };
        // A second request does not wait for the same boot.
        assert!(matches!(pool.take("t"), Claim::Cold));
        assert!(pool.deliver("t", pooled("a")).is_none());
        assert_eq!(promise.await.unwrap().id, "a");
        assert_eq!(pool.stats("t").ready, 0, "handed over, not pooled");

        // A failed boot breaks the promise.
        assert!(pool.start_boot("t"));
        let Claim::Wait(promise) = pool.take("t") else {
            panic!("expected a promise");
        };
        pool.end_task("t", false, Some("boom".into()));
        assert!(promise.await.is_err());
        assert_eq!(pool.stats("t").last_error.as_deref(), Some("boom"));

        // A promise nobody waits for any more goes to the pool.
        assert!(pool.start_boot("t"));
        drop(pool.take("t"));
        assert!(pool.deliver("t", pooled("b")).is_none());
        assert_eq!(pool.stats("t").ready, 1);
    }

    #[test]
    fn removal_and_shutdown_take_sandboxes_out() {
        let pool = Pool::new(1);
        assert!(pool.deliver("t", pooled("a")).is_none());
        let removed = pool.remove_template("t");
        assert_eq!(removed.len(), 1);
        assert_eq!(pool.stats("t").ready, 0);

        pool.lock().closed = true;
        assert!(!pool.start_boot("t"));
        let back = pool
            .deliver("t", pooled("b"))
            .expect("a closed pool keeps nothing");
        assert_eq!(back.id, "b");
        assert!(!pool.wants_more("t"));
    }

    /// Snapshots and hidden templates (a fork's snapshot) keep no warm
    /// pool; templates do.
    #[tokio::test]
    async fn snapshots_keep_no_warm_pool() {
        let h = crate::testing::Harness::new().await;
        let id = h.create().await;
        let snapshot = crate::lifecycle::snapshot_sandbox(&h.st, &id, None)
            .await
            .unwrap();
        let fork = crate::lifecycle::fork_sandbox(&h.st, &id, None, 1)
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        h.st.pool.set_target(1);
        let creates = |h: &crate::testing::Harness| {
            h.node
                .calls()
                .iter()
                .filter(|c| c.starts_with("create"))
                .count()
        };
        let before = creates(&h);
        for template in [snapshot.id.clone(), fork.template_id.clone()] {
            refill(&h.st, &template);
            crate::testing::patiently("the refill task", async {
                while h.st.pool.lock().templates.contains_key(&template) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        assert_eq!(creates(&h), before, "no boot for a snapshot");
        refill(&h.st, &h.template().id);
        crate::testing::patiently("a pooled boot of the template", async {
            while h.st.pool.stats(&h.template().id).ready == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(creates(&h), before + 1);
    }

    #[test]
    fn a_full_pool_wants_no_more() {
        let pool = Pool::new(1);
        assert!(pool.wants_more("t"));
        assert!(pool.deliver("t", pooled("a")).is_none());
        assert!(!pool.wants_more("t"));
        pool.set_target(0);
        assert!(matches!(pool.take("t"), Claim::Ready(_)));
        assert!(!pool.wants_more("t"));
    }
}
