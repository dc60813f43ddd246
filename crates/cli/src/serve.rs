//! `hutch serve`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hutch_server::{MachineConfig, NodeConfig, NodeServer, RemoteNodeConfig, Server, ServerConfig};
use tracing_subscriber::EnvFilter;

use crate::{ConnectionArgs, MachineArgs, NodeArgs, ServeArgs};

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

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    init_logging();
    let remote_node = match (args.node, args.node_secret_file, args.template_registry) {
        (Some(url), Some(secret), Some(template_registry)) => Some(RemoteNodeConfig {
            url,
            secret: read_secret(&secret)?,
            template_registry,
        }),
        _ => None,
    };
    let machine = machine(args.machine);
    let cfg = ServerConfig {
        listen: args.listen,
        data_dir,
        envd: machine.envd,
        runc: machine.runc,
        insecure_registries: args.registries.insecure_registries,
        max_limits: hutch_server::LimitMaxima {
            cpus: args
                .max_cpus
                .unwrap_or_else(hutch_server::limits::host_cpus),
            memory_mb: args.max_memory_mb,
            disk_mb: args.max_disk_mb,
            pids: args.max_pids,
        },
        network: machine.network,
        http: connections(&args.connections),
        database_url: args.database_url,
        volume_size_mb: args.volume_size_mb,
        remote_node,
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
    init_logging();
    let cfg = NodeConfig {
        listen: args.listen,
        data_dir,
        machine: machine(args.machine),
        secret: read_secret(&args.node_secret_file)?,
        insecure_registries: args.registries.insecure_registries,
        http: connections(&args.connections),
    };
    let node = NodeServer::bind(cfg).await?;
    println!("hutch node listening on http://{}", node.local_addr());
    node.run().await?;
    Ok(())
}
