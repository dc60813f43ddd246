//! A server's state on a [`FakeNode`], for tests of the control side
//! (no root, no runc): one template, `app`, with no layers.

use hutch_image::TemplateDocument as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hutch_image::{ImageConfig, TEMPLATE_SCHEMA_VERSION, TemplateMetadata, TemplateSource};
use hutch_runtime::EgressPolicy;

use crate::ServerConfig;
use crate::db::{Lifecycle, SandboxState, TemplateRow};
use crate::lifecycle::{CreateArgs, create_sandbox};
use crate::limits;
use crate::node::fake::FakeNode;
use crate::state::AppState;

/// Long enough for anything that should happen to happen; a test waiting
/// this long has found a deadlock.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub st: Arc<AppState>,
    pub node: Arc<FakeNode>,
    _tmp: tempfile::TempDir,
    /// The PostgreSQL server of [`Harness::on_postgres`].
    _postgres: Option<hutch_test_support::Postgres>,
    /// Stops the node API of [`Harness::through_node_api`].
    _node_api: Option<tokio_util::sync::DropGuard>,
}

/// The secret of the node API in [`Harness::through_node_api`].
pub const NODE_SECRET: &str = "a-test-node-secret-of-more-than-32-chars";

impl Harness {
    /// State in SQLite, in the data directory.
    pub async fn new() -> Harness {
        Harness::with_database(None).await
    }

    /// State in SQLite; the fake node served by the node API on a loopback
    /// port, and the control side driving it through
    /// [`crate::node::remote::RemoteNode`] — as a control plane drives a
    /// node of another machine.
    pub async fn through_node_api() -> Harness {
        Harness::build(None, true).await
    }

    /// State in a PostgreSQL server of its own.
    pub async fn on_postgres() -> Harness {
        let postgres = tokio::task::spawn_blocking(hutch_test_support::Postgres::start)
            .await
            .unwrap();
        Harness::with_database(Some(postgres)).await
    }

    /// State in SQLite; a control plane whose one node, `n1`, is the fake
    /// node behind the node API, joined (one heartbeat, leased for
    /// `lease`) and reconciled.
    pub async fn in_cluster(lease: Duration) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let node = FakeNode::new(&tmp.path().join("node"));
        let (url, guard) = serve_node_api(node.clone()).await;
        let cfg = Harness::config(&tmp, None);
        let st = AppState::with_cluster(&cfg, NODE_SECRET, lease)
            .await
            .unwrap();
        let h = Harness::assemble(st, node, tmp, None, Some(guard)).await;
        h.beat(&url).await;
        crate::lifecycle::follow_cluster(&h.st, true).await;
        h
    }

    /// A heartbeat of node `n1` at `url` ([`Harness::in_cluster`]).
    pub async fn beat(&self, url: &str) {
        let cluster = self.st.cluster.as_ref().expect("a cluster");
        cluster
            .heartbeat(crate::db::NodeBeat {
                id: "n1".into(),
                url: url.into(),
                instance_id: "test-instance".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                capacity: crate::db::Capacity {
                    cpus: 100,
                    memory_mb: 100_000,
                    sandboxes: 10,
                },
                sandboxes: 0,
                layers: Vec::new(),
            })
            .await
            .unwrap();
    }

    async fn with_database(postgres: Option<hutch_test_support::Postgres>) -> Harness {
        Harness::build(postgres, false).await
    }

    async fn build(postgres: Option<hutch_test_support::Postgres>, remote: bool) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let node = FakeNode::new(&tmp.path().join("node"));
        let (driven, node_api): (Arc<dyn crate::node::Node>, _) = if remote {
            let (url, guard) = serve_node_api(node.clone()).await;
            let secret = crate::node::api::NodeSecret::new(NODE_SECRET).unwrap();
            let remote = crate::node::remote::RemoteNode::new(&url, secret).unwrap();
            (Arc::new(remote), Some(guard))
        } else {
            (node.clone(), None)
        };
        let cfg = Harness::config(&tmp, postgres.as_ref());
        let st = AppState::with_node(&cfg, driven).await.unwrap();
        Harness::assemble(st, node, tmp, postgres, node_api).await
    }

    /// The configuration of a harness in `tmp`.
    fn config(
        tmp: &tempfile::TempDir,
        postgres: Option<&hutch_test_support::Postgres>,
    ) -> ServerConfig {
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            tmp.path().join("data"),
            PathBuf::from("/nonexistent"),
        );
        cfg.runc = PathBuf::from("/nonexistent");
        cfg.database_url = postgres.map(|p| p.url());
        cfg
    }

    /// A harness over `st`, with no warm pool and the template `app`.
    async fn assemble(
        st: Arc<AppState>,
        node: Arc<FakeNode>,
        tmp: tempfile::TempDir,
        postgres: Option<hutch_test_support::Postgres>,
        node_api: Option<tokio_util::sync::DropGuard>,
    ) -> Harness {
        st.pool.set_target(0);
        let meta = template_app();
        st.db
            .insert_template(TemplateRow {
                id: meta.id.clone(),
                name: meta.name.clone(),
                metadata: meta.to_json(),
                created_at: 0,
                build_id: crate::ids::new_build_id(),
                public: false,
                team_id: st.default_team.clone(),
            })
            .await
            .unwrap();
        Harness {
            st,
            node,
            _tmp: tmp,
            _postgres: postgres,
            _node_api: node_api,
        }
    }

    /// The template `app`, as registered.
    pub fn template(&self) -> TemplateMetadata {
        template_app()
    }

    /// The default team (that of `app` and of [`Harness::create_args`]).
    pub fn team(&self) -> &str {
        &self.st.default_team
    }

    /// A create of `app` for the default team, with one variable and every
    /// default.
    pub fn create_args(&self) -> CreateArgs {
        CreateArgs {
            team: self.st.default_team.clone(),
            template: "app".into(),
            timeout_secs: 300,
            metadata: BTreeMap::new(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            access_token: None,
            network: EgressPolicy::default(),
            limits: limits::Requested::default(),
            lifecycle: Lifecycle::default(),
            ingress: Default::default(),
            volume_mounts: Vec::new(),
        }
    }

    /// Creates a sandbox of `app`; its id.
    pub async fn create(&self) -> String {
        create_sandbox(&self.st, self.create_args())
            .await
            .unwrap()
            .id
    }

    pub async fn row_state(&self, id: &str) -> SandboxState {
        self.st
            .db
            .get_sandbox(id.to_owned())
            .await
            .unwrap()
            .unwrap()
            .state
    }

    pub fn routed(&self, id: &str) -> bool {
        self.st.live().get(id).is_some_and(|e| e.paused.is_none())
    }
}

/// Serves `node` through the node API on a free loopback port, admitting
/// [`NODE_SECRET`]; its URL, and what stops it when dropped.
pub async fn serve_node_api(
    node: Arc<dyn crate::node::Node>,
) -> (String, tokio_util::sync::DropGuard) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = crate::node::api::router(
        node,
        crate::node::api::NodeSecret::new(NODE_SECRET).unwrap(),
        crate::node::api::NodeInfo {
            instance_id: "test-instance".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(crate::http::serve(
        listener,
        router,
        crate::http::Limits::default(),
        async move { stopped.cancelled().await },
        Duration::from_millis(100),
    ));
    (url, stop.drop_guard())
}

pub async fn patiently<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {PATIENCE:?}"))
}

/// The template `app`.
fn template_app() -> TemplateMetadata {
    TemplateMetadata {
        schema_version: TEMPLATE_SCHEMA_VERSION,
        id: "tpl".into(),
        name: "app".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        source: TemplateSource::Recipe {
            recipe: "test".into(),
            description: "none".into(),
        },
        image: ImageConfig::default(),
        env: vec![],
        user: None,
        workdir: None,
        layers: vec![],
        allow_privilege_escalation: false,
        start_cmd: None,
        ready_cmd: None,
        limits: None,
    }
}
