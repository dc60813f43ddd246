//! Prometheus metrics, served at `GET /metrics` (text exposition format)
//! to keys of the default team: the server's operator.
//!
//! Every label has a bounded set of values: routes are the router's path
//! templates (`/sandboxes/{id}`, never an id), operations and outcomes are
//! fixed words, templates are the templates that exist. No label carries a
//! sandbox id, so a thousand sandboxes make no more series than one.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hutch_http_requests_total` | counter | `route`, `method`, `status` |
//! | `hutch_http_request_duration_seconds` | histogram | `route`, `method` |
//! | `hutch_sandbox_operations_total` | counter | `operation` (`create`, `kill`, `pause`, `resume`), `outcome` (`ok`, `error`) |
//! | `hutch_sandbox_operation_duration_seconds` | histogram | `operation` |
//! | `hutch_pool_creates_total` | counter | `source` (`pool`: a warm sandbox was claimed, `boot`: one was booted) |
//! | `hutch_builds_total` | counter | `outcome` (`ready`, `failed`) |
//! | `hutch_build_duration_seconds` | histogram | — |
//! | `hutch_relay_errors_total` | counter | — (front-door requests the sandbox's agent did not answer) |
//! | `hutch_sandboxes` | gauge, at scrape | `state` (`starting`, `running`, `paused`), `template` |
//! | `hutch_sandbox_memory_bytes`, `hutch_sandbox_cpu_cores` | gauges, at scrape | `template`: the sum over its running sandboxes of their latest sample (memory without page cache; CPUs in use) |

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationOnly {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    template: String,
}

/// A sandbox operation the metrics count.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    Create,
    Kill,
    Pause,
    Resume,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Kill => "kill",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
        }
    }
}

/// What the scrape-time gauges are set from: per template and state, how
/// many sandboxes; per template, the running ones' memory and CPU.
#[derive(Debug, Default)]
pub(crate) struct Census {
    /// (state, template, count)
    pub sandboxes: Vec<(&'static str, String, i64)>,
    /// (template, memory bytes, CPUs in use)
    pub usage: Vec<(String, i64, f64)>,
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    operations: Family<OperationLabels, Counter>,
    operation_duration: Family<OperationOnly, Histogram>,
    pool_creates: Family<SourceLabels, Counter>,
    builds: Family<OutcomeLabels, Counter>,
    build_duration: Histogram,
    relay_errors: Counter,
    sandboxes: Family<StateLabels, Gauge>,
    memory: Family<TemplateLabels, Gauge>,
    cpu: Family<TemplateLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One scrape at a time sets the scrape-time gauges.
    scraping: Mutex<()>,
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hutch");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to its headers, for streams)",
            http_duration.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "sandbox_operations",
            "Sandbox creates, kills, pauses and resumes, by outcome",
            operations.clone(),
        );
        let operation_duration = Family::<OperationOnly, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "sandbox_operation_duration_seconds",
            "Time a sandbox operation took, as its caller waited",
            operation_duration.clone(),
        );
        let pool_creates = Family::<SourceLabels, Counter>::default();
        registry.register(
            "pool_creates",
            "Sandboxes created from the warm pool (pool) or booted (boot)",
            pool_creates.clone(),
        );
        let builds = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "builds",
            "Template builds ended, by outcome",
            builds.clone(),
        );
        let build_duration = Histogram::new(exponential_buckets(0.5, 2.0, 14));
        registry.register(
            "build_duration_seconds",
            "Time a template build took",
            build_duration.clone(),
        );
        let relay_errors = Counter::default();
        registry.register(
            "relay_errors",
            "Requests to sandboxes that the sandbox's agent did not answer",
            relay_errors.clone(),
        );
        let sandboxes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "sandboxes",
            "Sandboxes by state and template",
            sandboxes.clone(),
        );
        let memory = Family::<TemplateLabels, Gauge>::default();
        registry.register(
            "sandbox_memory_bytes",
            "Memory of the running sandboxes of a template (latest samples, summed)",
            memory.clone(),
        );
        let cpu = Family::<TemplateLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "sandbox_cpu_cores",
            "CPUs in use by the running sandboxes of a template (latest samples, summed)",
            cpu.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            operations,
            operation_duration,
            pool_creates,
            builds,
            build_duration,
            relay_errors,
            sandboxes,
            memory,
            cpu,
            scraping: Mutex::new(()),
        }
    }

    /// One answered HTTP request; `route` is the router's path template.
    pub(crate) fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One sandbox operation, how it ended and how long it took.
    pub(crate) fn operation(&self, op: Operation, ok: bool, took: Duration) {
        self.operations
            .get_or_create(&OperationLabels {
                operation: op.name(),
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
        self.operation_duration
            .get_or_create(&OperationOnly {
                operation: op.name(),
            })
            .observe(took.as_secs_f64());
    }

    /// A create served by a claimed warm sandbox (`true`) or a boot.
    pub(crate) fn pool_create(&self, claimed: bool) {
        self.pool_creates
            .get_or_create(&SourceLabels {
                source: if claimed { "pool" } else { "boot" },
            })
            .inc();
    }

    /// A build that ended.
    pub(crate) fn build(&self, ready: bool, took: Duration) {
        self.builds
            .get_or_create(&OutcomeLabels {
                outcome: if ready { "ready" } else { "failed" },
            })
            .inc();
        self.build_duration.observe(took.as_secs_f64());
    }

    /// A front-door request whose sandbox's agent did not answer.
    pub(crate) fn relay_error(&self) {
        self.relay_errors.inc();
    }

    /// The text exposition, with the scrape-time gauges set from `census`.
    pub(crate) fn render(&self, census: &Census) -> String {
        let _one = self.scraping.lock().unwrap_or_else(|p| p.into_inner());
        self.sandboxes.clear();
        for (state, template, n) in &census.sandboxes {
            self.sandboxes
                .get_or_create(&StateLabels {
                    state,
                    template: template.clone(),
                })
                .set(*n);
        }
        self.memory.clear();
        self.cpu.clear();
        for (template, memory, cpu) in &census.usage {
            let labels = TemplateLabels {
                template: template.clone(),
            };
            self.memory.get_or_create(&labels).set(*memory);
            self.cpu.get_or_create(&labels).set(*cpu);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Why a scrape was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    /// The caller's key is not one of the default team's.
    #[error("only keys of the default team may read the server's metrics")]
    NotAdmin,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// The metrics for `GET /metrics`, for a key of the default team: the
/// counters, and the sandboxes as the store and the sampler see them now.
pub(crate) async fn scrape(
    st: &crate::state::AppState,
    caller: &crate::auth::Caller,
) -> Result<String, ScrapeError> {
    use crate::db::SandboxState;
    use std::collections::BTreeMap;
    if !caller.admin {
        return Err(ScrapeError::NotAdmin);
    }
    let rows = st
        .db
        .sandboxes_in(&[
            SandboxState::Starting,
            SandboxState::Running,
            SandboxState::Paused,
        ])
        .await?;
    let mut counts: BTreeMap<(&'static str, String), i64> = BTreeMap::new();
    let mut usage: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    for row in &rows {
        *counts
            .entry((row.state.as_str(), row.template_name.clone()))
            .or_default() += 1;
        if row.state == SandboxState::Running
            && let Some(sample) = st.metrics.latest(&row.id)
        {
            let used = usage.entry(row.template_name.clone()).or_default();
            used.0 += i64::try_from(sample.mem_used).unwrap_or(i64::MAX);
            used.1 += sample.cpu_used_pct / 100.0 * f64::from(sample.cpu_count);
        }
    }
    let census = Census {
        sandboxes: counts
            .into_iter()
            .map(|((state, template), n)| (state, template, n))
            .collect(),
        usage: usage
            .into_iter()
            .map(|(template, (memory, cpu))| (template, memory, cpu))
            .collect(),
    };
    Ok(st.prometheus.render(&census))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_scrape_time_gauges_are_rendered() {
        let m = Metrics::new();
        m.http("/sandboxes/{id}", "GET", 200, Duration::from_millis(3));
        m.http("/sandboxes/{id}", "GET", 200, Duration::from_millis(5));
        m.operation(Operation::Create, true, Duration::from_millis(40));
        m.operation(Operation::Kill, false, Duration::from_millis(2));
        m.pool_create(true);
        m.build(false, Duration::from_secs(3));
        m.relay_error();
        let text = m.render(&Census {
            sandboxes: vec![("running", "base".into(), 2), ("paused", "base".into(), 1)],
            usage: vec![("base".into(), 1 << 20, 1.5)],
        });
        for line in [
            r#"hutch_http_requests_total{route="/sandboxes/{id}",method="GET",status="200"} 2"#,
            r#"hutch_sandbox_operations_total{operation="create",outcome="ok"} 1"#,
            r#"hutch_sandbox_operations_total{operation="kill",outcome="error"} 1"#,
            r#"hutch_pool_creates_total{source="pool"} 1"#,
            r#"hutch_builds_total{outcome="failed"} 1"#,
            "hutch_relay_errors_total 1",
            r#"hutch_sandboxes{state="running",template="base"} 2"#,
            r#"hutch_sandbox_memory_bytes{template="base"} 1048576"#,
            r#"hutch_sandbox_cpu_cores{template="base"} 1.5"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // A later scrape forgets what is gone.
        let text = m.render(&Census::default());
        assert!(!text.contains("hutch_sandboxes{"), "{text}");
    }
}
