//! `hutch serve`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hutch_server::{
    Capacity, ClusterConfig, JoinConfig, MachineConfig, NodeConfig, NodeServer, Server,
    ServerConfig,
};
use tracing_subscriber::EnvFilter;

use crate::{ConnectionArgs, ControlArgs, MachineArgs, NodeArgs, ServeArgs, TelemetryArgs};

/// Where the agent binary is installed by default.
const INSTALLED_ENVD: &str = "/usr/local/lib/hutch/hutch-envd";

/// A static `hutch-envd` next to this executable (an installation), else
/// the musl build in this executable's cargo target directory (a checkout),
/// else the installed location.
fn default_envd() -> PathBuf {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from));
    let candidates = exe_dir.iter().flat_map(|dir| {
        [
            dir.join("hutch-envd"),
            dir.join("../x86_64-unknown-linux-musl/agent/hutch-envd"),
        ]
    });
    candidates
        .into_iter()
        .find(|p| p.is_file() && !hutch_runtime::elf_interpreter(p))
        .unwrap_or_else(|| PathBuf::from(INSTALLED_ENVD))
}

/// Logs to stderr (`RUST_LOG`, default `info`); with an OTLP endpoint,
/// also Hutch's spans to it. The tracer provider returned is flushed and
/// shut down when it is dropped.
fn init_logging(telemetry: &TelemetryArgs, role: &'static str) -> anyhow::Result<Traces> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, &telemetry.otlp_protocol, role)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("hutch"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("hutch_server", tracing::Level::INFO)
                    .with_target("hutch_runtime", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(endpoint) = &telemetry.otlp_endpoint {
        // Traces continue across the node API (`traceparent`).
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing::info!(%endpoint, protocol = %telemetry.otlp_protocol, "sending traces over OTLP");
    }
    Ok(Traces(provider))
}

/// The OTLP tracer provider while the process runs.
struct Traces(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing the last traces failed: {e}");
        }
    }
}

/// Spans batched to `endpoint` (`…/v1/traces` added unless given).
fn tracer_provider(
    endpoint: &str,
    protocol: &str,
    role: &'static str,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let protocol = match protocol {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_protocol(protocol)
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter for {endpoint}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("hutch")
        .with_attribute(opentelemetry::KeyValue::new("hutch.role", role))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

fn machine(args: MachineArgs) -> MachineConfig {
    MachineConfig {
        envd: args.envd.unwrap_or_else(default_envd),
        runc: args.runc,
        network: hutch_runtime::NetworkConfig {
            pool: args.network_pool,
            fallback_nameservers: args.fallback_dns,
            nameservers: args.dns,
            ..hutch_runtime::NetworkConfig::default()
        },
    }
}

fn connections(args: &ConnectionArgs) -> hutch_server::http::Limits {
    hutch_server::http::Limits {
        max_connections: args.max_connections.max(1),
        max_per_client: args.max_connections_per_client.max(1),
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout.max(1)),
        ..hutch_server::http::Limits::default()
    }
}

/// A node secret from `path`.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("cannot read the node secret file {}", path.display()))
}

pub(crate) async fn run(args: ServeArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let _traces = init_logging(&args.daemon.telemetry, "serve")?;
    serve(args, data_dir, None).await
}

/// `hutch control`.
pub(crate) async fn run_control(args: ControlArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let _traces = init_logging(&args.serve.daemon.telemetry, "control")?;
    let cluster = ClusterConfig {
        secret: read_secret(&args.node_secret_file)?,
        template_registry: args.template_registry,
        node_lease: std::time::Duration::from_secs(args.node_lease.max(1)),
    };
    serve(args.serve, data_dir, Some(cluster)).await
}

/// Runs a server: sandboxes on this machine, or on `cluster`'s nodes.
async fn serve(
    args: ServeArgs,
    data_dir: PathBuf,
    cluster: Option<ClusterConfig>,
) -> anyhow::Result<()> {
    let machine = machine(args.daemon.machine);
    let cfg = ServerConfig {
        listen: args.listen,
        data_dir,
        envd: machine.envd,
        runc: machine.runc,
        insecure_registries: args.daemon.registries.insecure_registries,
        max_limits: hutch_server::LimitMaxima {
            cpus: args
                .max_cpus
                .unwrap_or_else(hutch_server::limits::host_cpus),
            memory_mb: args.max_memory_mb,
            disk_mb: args.max_disk_mb,
            pids: args.max_pids,
        },
        network: machine.network,
        http: connections(&args.daemon.connections),
        database_url: args.database_url,
        volume_size_mb: args.volume_size_mb,
        cluster,
    };
    let mut server = Server::bind(cfg).await?;
    server.set_warm_pool(args.warm_pool);
    if !args.no_base_template {
        server.ensure_base_template().await;
    }
    println!("hutch listening on http://{}", server.local_addr());
    server.run().await?;
    Ok(())
}

/// `hutch node`.
pub(crate) async fn run_node(args: NodeArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let _traces = init_logging(&args.daemon.telemetry, "node")?;
    let join = match args.join {
        control if control.is_empty() => None,
        control => Some(JoinConfig {
            control,
            name: match args.name {
                Some(name) => name,
                None => host_name()?,
            },
            advertise: args
                .advertise
                .unwrap_or_else(|| format!("http://{}", args.listen)),
            capacity: Capacity {
                cpus: args
                    .capacity_cpus
                    .unwrap_or(args.max_sandboxes.saturating_mul(2)),
                memory_mb: args
                    .capacity_memory_mb
                    .unwrap_or(args.max_sandboxes.saturating_mul(512)),
                sandboxes: args.max_sandboxes,
            },
        }),
    };
    let cfg = NodeConfig {
        listen: args.listen,
        data_dir,
        machine: machine(args.daemon.machine),
        secret: read_secret(&args.node_secret_file)?,
        insecure_registries: args.daemon.registries.insecure_registries,
        http: connections(&args.daemon.connections),
        join,
    };
    let node = NodeServer::bind(cfg).await?;
    println!("hutch node listening on http://{}", node.local_addr());
    node.run().await?;
    Ok(())
}

/// This machine's host name, a node's default name.
fn host_name() -> anyhow::Result<String> {
    let name = rustix::system::uname();
    let name = name.nodename().to_string_lossy().trim().to_owned();
    anyhow::ensure!(
        !name.is_empty(),
        "this machine has no host name: give the node one with --name"
    );
    Ok(name)
}
