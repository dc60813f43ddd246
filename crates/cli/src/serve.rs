//! `hutch serve`.

use std::path::PathBuf;

use hutch_server::{Server, ServerConfig};
use tracing_subscriber::EnvFilter;

use crate::ServeArgs;

/// Where the agent binary is installed by default.
const INSTALLED_ENVD: &str = "/usr/local/lib/hutch/hutch-envd";

/// `hutch-envd` next to this executable if it is there, else the installed
/// location.
fn default_envd() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("hutch-envd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(INSTALLED_ENVD))
}

pub(crate) async fn run(args: ServeArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = ServerConfig {
        listen: args.listen,
        data_dir,
        envd: args.envd.unwrap_or_else(default_envd),
        runc: args.runc,
    };
    let server = Server::bind(cfg).await?;
    println!("hutch listening on http://{}", server.local_addr());
    server.run().await?;
    Ok(())
}
