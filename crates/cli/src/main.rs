//! `hutch`: runs the Hutch server and drives it.
//!
//! ```text
//! hutch serve [--listen ADDR] [--data-dir DIR] [--envd PATH] [--runc PATH] [--warm-pool N]
//!             [--max-cpus N] [--max-memory-mb MIB] [--max-disk-mb MIB] [--max-pids N]
//! hutch template import SOURCE --name NAME | list [--json] | rm NAME
//! hutch template pull REFERENCE --name NAME [--username USER --password-stdin]
//! hutch sandbox create TEMPLATE [--env K=V]... [--timeout SECS] [--metadata K=V]...
//!                      [--cpus N] [--memory MIB] [--disk MIB] [--pids N]
//!                      [--auto-pause] [--auto-pause-filesystem] [--auto-resume]
//! hutch sandbox list [--json] | kill ID | pause ID [--filesystem] | resume ID
//! hutch sandbox logs ID [--json] | metrics ID [--watch] [--json]
//! hutch api-key create [--json] | list [--json] | revoke ID
//! hutch exec ID [--env K=V]... [--cwd DIR] [--user USER] -- CMD [ARG]...
//! hutch run TEMPLATE [--env K=V]... [--cwd DIR] [--user USER] -- CMD [ARG]...
//! hutch node --node-secret-file FILE [--listen ADDR] [--data-dir DIR]
//! hutch mcp [--http ADDR]
//! hutch completions SHELL | man
//! ```
//!
//! Client commands talk to `--server` (env `HUTCH_SERVER`) with the API key
//! from `HUTCH_API_KEY`, else from `<data dir>/api-key`.

mod apikey;
mod build;
mod client;
mod exec;
mod mcp;
mod sandbox;
mod serve;
mod team;
mod template;
mod volume;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Default server URL for client commands.
const DEFAULT_SERVER: &str = "http://127.0.0.1:3000";
/// Default data directory.
const DEFAULT_DATA_DIR: &str = "/var/lib/hutch";

#[derive(Debug, Parser)]
#[command(
    name = "hutch",
    version,
    about = "Self-hosted sandboxes for running untrusted code, compatible with the E2B SDKs"
)]
struct Cli {
    /// URL of the Hutch server (client commands).
    #[arg(long, global = true, env = "HUTCH_SERVER", default_value = DEFAULT_SERVER)]
    server: String,

    /// Data directory: where `hutch serve` keeps its state, and where client
    /// commands look for `api-key` when HUTCH_API_KEY is not set.
    #[arg(long, global = true, env = "HUTCH_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (REST API and sandbox front door).
    Serve(ServeArgs),
    /// Run this machine as a node: its sandboxes, driven by a control plane
    /// (`hutch control`) through the node API.
    Node(NodeArgs),
    /// Run a control plane: the API of `hutch serve`, its sandboxes on the
    /// nodes that join it (`hutch node --join`), its templates reaching
    /// them through a registry.
    Control(ControlArgs),
    /// Manage templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Manage sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Manage API keys (of the team of the key in use).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Manage teams (with a key of the default team).
    #[command(subcommand)]
    Team(TeamCommand),
    /// Manage volumes (file systems that outlive sandboxes).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Run a command in a sandbox, streaming its output; exits with its code.
    Exec(ExecArgs),
    /// Create a sandbox, run a command in it, kill it; exits with the
    /// command's code.
    Run(RunArgs),
    /// Serve the Model Context Protocol on stdin/stdout (or over streamable
    /// HTTP with --http): tools that create sandboxes, run commands and
    /// code, and read and write files in them.
    Mcp(McpArgs),
    /// Print a shell completion script: `source <(hutch completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `hutch man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
struct McpArgs {
    /// Serve MCP's streamable HTTP transport at http://ADDR/mcp instead of
    /// stdio; every request must carry this client's API key
    /// (`Authorization: Bearer KEY` or `X-API-Key`).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HUTCH_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Do not build the default `base` template (from Debian packages with
    /// mmdebstrap) when it does not exist yet.
    #[arg(long, env = "HUTCH_NO_BASE_TEMPLATE")]
    no_base_template: bool,
    /// Sandboxes to keep booted per template, so that creating one takes
    /// milliseconds (0: boot every sandbox on demand).
    #[arg(long, env = "HUTCH_WARM_POOL", value_name = "N", default_value_t = hutch_server::DEFAULT_WARM_POOL)]
    warm_pool: usize,
    /// Most CPUs a sandbox may be given [default: the host's CPUs].
    #[arg(long, env = "HUTCH_MAX_CPUS", value_name = "N")]
    max_cpus: Option<u32>,
    /// Most memory a sandbox may be given, MiB.
    #[arg(long, env = "HUTCH_MAX_MEMORY_MB", value_name = "MIB", default_value_t = hutch_server::limits::DEFAULT_MAX_MEMORY_MB)]
    max_memory_mb: u64,
    /// Largest disk a sandbox may be given, MiB.
    #[arg(long, env = "HUTCH_MAX_DISK_MB", value_name = "MIB", default_value_t = hutch_server::limits::DEFAULT_MAX_DISK_MB)]
    max_disk_mb: u64,
    /// Most processes and threads a sandbox may be given.
    #[arg(long, env = "HUTCH_MAX_PIDS", value_name = "N", default_value_t = hutch_server::limits::DEFAULT_MAX_PIDS)]
    max_pids: u64,
    /// Keep the server's state in this PostgreSQL database
    /// (postgres://user:password@host:port/db) instead of SQLite in the
    /// data directory. One server per database.
    #[arg(
        long,
        env = "HUTCH_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Size of a new volume in MiB: its quota (sparse: it takes host disk
    /// only as it is written).
    #[arg(long, env = "HUTCH_VOLUME_SIZE_MB", value_name = "MIB", default_value_t = hutch_server::DEFAULT_VOLUME_SIZE_MB)]
    volume_size_mb: u64,
}

/// `hutch control`.
#[derive(Debug, Args)]
struct ControlArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// File holding the cluster's node secret (32 characters or more):
    /// nodes join with it, and admit control planes by it.
    #[arg(long, env = "HUTCH_NODE_SECRET_FILE", value_name = "FILE")]
    node_secret_file: PathBuf,
    /// Registry repository (HOST[:PORT]/PATH) templates are pushed to for
    /// the nodes to pull.
    #[arg(long, env = "HUTCH_TEMPLATE_REGISTRY", value_name = "REPOSITORY")]
    template_registry: String,
    /// Seconds a node counts as alive after its last heartbeat; then it is
    /// lost (no sandbox is placed on it; its sandboxes are reported lost
    /// until it comes back).
    #[arg(long, env = "HUTCH_NODE_LEASE", value_name = "SECS", default_value_t = hutch_server::DEFAULT_NODE_LEASE.as_secs())]
    node_lease: u64,
}

/// What `serve` and `node` share.
#[derive(Debug, Args)]
struct DaemonArgs {
    #[command(flatten)]
    machine: MachineArgs,
    #[command(flatten)]
    registries: RegistryArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// What a machine that runs sandboxes is set up with (`serve`, `node`).
#[derive(Debug, Args)]
struct MachineArgs {
    /// The static agent binary mounted into sandboxes [default: a static
    /// hutch-envd next to this executable, else the musl build in this
    /// executable's cargo target directory, else
    /// /usr/local/lib/hutch/hutch-envd].
    #[arg(long, env = "HUTCH_ENVD")]
    envd: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, env = "HUTCH_RUNC", default_value = "runc")]
    runc: PathBuf,
    /// IPv4 block the sandboxes' addresses come from (/8 to /28; must not
    /// overlap the host's networks).
    #[arg(long, env = "HUTCH_NETWORK_POOL", value_name = "CIDR", default_value_t = hutch_runtime::NetworkConfig::default().pool)]
    network_pool: hutch_runtime::Cidr,
    /// Nameservers sandboxes use when the host has none they can reach
    /// (comma-separated).
    #[arg(long, env = "HUTCH_FALLBACK_DNS", value_name = "IP,...", value_delimiter = ',', default_values_t = hutch_runtime::NetworkConfig::default().fallback_nameservers)]
    fallback_dns: Vec<std::net::IpAddr>,
    /// Nameservers every sandbox uses instead of the host's
    /// (comma-separated); the egress proxy resolves allowed domain names
    /// with them too.
    #[arg(long, env = "HUTCH_DNS", value_name = "IP,...", value_delimiter = ',')]
    dns: Vec<std::net::IpAddr>,
}

/// Registries reached over plain HTTP (`serve`, `node`).
#[derive(Debug, Args)]
struct RegistryArgs {
    /// A registry (HOST:PORT) that image pulls reach over plain HTTP
    /// instead of HTTPS (repeatable). Registries on loopback always are.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
}

/// The listener's connection limits (`serve`, `node`).
#[derive(Debug, Args)]
struct ConnectionArgs {
    /// Most open client connections at once; more are answered 429.
    #[arg(long, env = "HUTCH_MAX_CONNECTIONS", value_name = "N", default_value_t = hutch_server::http::Limits::default().max_connections)]
    max_connections: usize,
    /// Most open connections at once from one client address.
    #[arg(long, env = "HUTCH_MAX_CONNECTIONS_PER_CLIENT", value_name = "N", default_value_t = hutch_server::http::Limits::default().max_per_client)]
    max_connections_per_client: usize,
    /// Seconds a client has to send a request's headers (and the longest an
    /// HTTP/1 connection may idle between requests).
    #[arg(long, env = "HUTCH_HEADER_READ_TIMEOUT", value_name = "SECS", default_value_t = hutch_server::http::Limits::default().header_read_timeout.as_secs())]
    header_read_timeout: u64,
}

/// `hutch node`.
#[derive(Debug, Args)]
struct NodeArgs {
    /// Address the node API listens on (reachable by the control plane
    /// only).
    #[arg(long, env = "HUTCH_NODE_LISTEN", default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// File holding the secret control planes present (32 characters or
    /// more).
    #[arg(long, env = "HUTCH_NODE_SECRET_FILE", value_name = "FILE")]
    node_secret_file: PathBuf,
    /// The control plane to join (http://HOST:PORT: `hutch control`, a
    /// load balancer in front of its replicas, or several replicas,
    /// comma-separated: heartbeats go to the first that answers). Without
    /// it the node only answers the control plane that drives it.
    #[arg(
        long,
        env = "HUTCH_JOIN",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    join: Vec<String>,
    /// This node's name in the cluster: unique, kept across restarts
    /// [default: the host name].
    #[arg(long, env = "HUTCH_NODE_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Where control planes reach this node's API [default:
    /// http://<--listen>].
    #[arg(long, env = "HUTCH_NODE_ADVERTISE", value_name = "URL")]
    advertise: Option<String>,
    /// Most sandboxes placed on this node (warm-pool ones included).
    #[arg(
        long,
        env = "HUTCH_NODE_MAX_SANDBOXES",
        value_name = "N",
        default_value_t = 1000
    )]
    max_sandboxes: u64,
    /// Sum of the vCPU limits placed on this node [default: 2 per sandbox
    /// of --max-sandboxes: limits are ceilings, and idle sandboxes use
    /// none].
    #[arg(long, env = "HUTCH_NODE_CPUS", value_name = "N")]
    capacity_cpus: Option<u64>,
    /// Sum of the memory limits placed on this node, MiB [default: 512 per
    /// sandbox of --max-sandboxes].
    #[arg(long, env = "HUTCH_NODE_MEMORY_MB", value_name = "MIB")]
    capacity_memory_mb: Option<u64>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// Where traces go (`serve`, `node`).
#[derive(Debug, Args)]
struct TelemetryArgs {
    /// Send traces (spans of creates, boots and relayed requests) to this
    /// OpenTelemetry collector over OTLP/HTTP (http://HOST:4318); off when
    /// not given.
    #[arg(long, env = "HUTCH_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The OTLP encoding: http/protobuf or http/json.
    #[arg(long, env = "HUTCH_OTLP_PROTOCOL", value_name = "PROTOCOL", default_value = "http/protobuf", value_parser = ["http/protobuf", "http/json"])]
    otlp_protocol: String,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Build a template from a Dockerfile: each RUN in a build sandbox,
    /// layers cached, the build log shown live.
    Build {
        /// The template's name (a template of that name is replaced).
        #[arg(long)]
        name: String,
        /// The Dockerfile (default: CONTEXT/Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
        file: Option<PathBuf>,
        /// Build argument for an ARG (repeatable).
        #[arg(long = "build-arg", value_name = "KEY=VALUE")]
        build_arg: Vec<String>,
        /// Run every step, ignoring cached layers.
        #[arg(long)]
        no_cache: bool,
        /// Command started in the background in every sandbox of the
        /// template.
        #[arg(long, value_name = "COMMAND")]
        start_cmd: Option<String>,
        /// Command that must succeed before a sandbox of the template is
        /// handed out (polled).
        #[arg(long, value_name = "COMMAND")]
        ready_cmd: Option<String>,
        /// How long the ready command may take to succeed, in seconds.
        #[arg(long, value_name = "SECONDS")]
        ready_timeout: Option<u64>,
        /// Default CPUs of the template's sandboxes.
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// Default memory limit of the template's sandboxes, MiB.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Default disk (writable layer) size of the template's sandboxes, MiB.
        #[arg(long, value_name = "MIB")]
        disk: Option<u64>,
        /// Default process limit of the template's sandboxes.
        #[arg(long, value_name = "N")]
        pids: Option<u64>,
        /// The build context directory COPY and ADD read from.
        #[arg(default_value = ".")]
        context: PathBuf,
    },
    /// Import an image as a template: an OCI archive or Docker archive file,
    /// or an OCI image layout directory.
    Import {
        /// The image: a file (oci-archive, docker-archive) or a directory
        /// (OCI layout).
        source: PathBuf,
        /// The template's name.
        #[arg(long)]
        name: String,
        /// Which image to take when the source holds several (a tag or
        /// reference name).
        #[arg(long = "ref")]
        reference: Option<String>,
        /// Let processes in its sandboxes gain privileges through setuid
        /// binaries such as `sudo` (sandboxes run without no_new_privs).
        #[arg(long)]
        allow_privilege_escalation: bool,
        /// Print the template as JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from an OCI / Docker registry as a template (the
    /// server pulls it; linux/amd64 from multi-platform images).
    Pull {
        /// The image: [REGISTRY/]NAME[:TAG|@DIGEST], e.g.
        /// docker.io/library/debian:bookworm.
        reference: String,
        /// The template's name.
        #[arg(long)]
        name: String,
        /// Registry username [default: the server host's Docker
        /// credentials for the registry, if any, else none].
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password (or access token) from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Let processes in its sandboxes gain privileges through setuid
        /// binaries such as `sudo` (sandboxes run without no_new_privs).
        #[arg(long)]
        allow_privilege_escalation: bool,
        /// Print the template as JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// List templates.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a template (and the layers no other template uses).
    #[command(alias = "remove")]
    Rm {
        /// Template name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Create a sandbox; prints only its id.
    Create {
        /// Template name or id.
        template: String,
        /// Sandbox environment variable (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Lifetime in seconds [default: the server's, 300].
        #[arg(long)]
        timeout: Option<u64>,
        /// Metadata entry (repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// No internet access: every destination is denied unless
        /// `--allow-out` re-allows it.
        #[arg(long)]
        no_internet: bool,
        /// IP address, CIDR block or domain name (`api.example.com`,
        /// `*.example.com`) the sandbox may reach even when denied
        /// (repeatable; names need everything else denied: `--no-internet`
        /// or `--deny-out 0.0.0.0/0`).
        #[arg(long = "allow-out", value_name = "CIDR|NAME")]
        allow_out: Vec<String>,
        /// IP address or CIDR block the sandbox may not reach (repeatable).
        #[arg(long = "deny-out", value_name = "CIDR")]
        deny_out: Vec<String>,
        /// CPUs it may use [default: the template's, else 2].
        #[arg(long, value_name = "N")]
        cpus: Option<u64>,
        /// Memory limit in MiB [default: the template's, else 512].
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Disk size (its writable layer) in MiB [default: the template's,
        /// else 2048].
        #[arg(long, value_name = "MIB")]
        disk: Option<u64>,
        /// Maximum number of processes and threads [default: the
        /// template's, else 1024].
        #[arg(long, value_name = "N")]
        pids: Option<u64>,
        /// Pause it at its timeout instead of killing it (frozen in
        /// memory; `hutch sandbox resume` resumes it).
        #[arg(long)]
        auto_pause: bool,
        /// Pause it at its timeout keeping only its files: its processes
        /// are stopped, and a resume boots it again on its files. Implies
        /// --auto-pause; cannot be combined with --auto-resume.
        #[arg(long, conflicts_with = "auto_resume")]
        auto_pause_filesystem: bool,
        /// Resume it, while paused in memory, when a request for it comes
        /// through the server (`hutch exec`, an SDK call, a user port).
        #[arg(long)]
        auto_resume: bool,
        /// Print the server's answer as JSON (sandboxID, templateID,
        /// envdAccessToken...) instead of only the id.
        #[arg(long)]
        json: bool,
    },
    /// List running and paused sandboxes.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Kill a sandbox.
    Kill {
        /// Sandbox id.
        id: String,
    },
    /// Pause a sandbox and stop its clock: freeze its processes, or with
    /// --filesystem stop them and keep only its files.
    Pause {
        /// Sandbox id.
        id: String,
        /// Keep only its files: every process is stopped and its memory
        /// freed; a resume boots it again on its files.
        #[arg(long)]
        filesystem: bool,
    },
    /// Resume a paused sandbox (a filesystem-paused one boots again on its
    /// files).
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// Show a sandbox's CPU, memory and disk use, sampled every 5 s.
    Metrics {
        /// Sandbox id.
        id: String,
        /// Keep printing new samples until the sandbox ends (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
        /// Print JSON (E2B's samples; one array per line with --watch).
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox's log: what happened to it (created, paused,
    /// resumed, killed...) and what its template's start command printed.
    Logs {
        /// Sandbox id.
        id: String,
        /// Only entries at this level or above (debug, info, warn, error).
        #[arg(long)]
        level: Option<String>,
        /// Only entries containing this text.
        #[arg(long)]
        search: Option<String>,
        /// Print JSON (E2B's log entries) instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume of the server's volume size; prints its id.
    Create {
        /// Its name: 1 to 250 characters from A-Z, a-z, 0-9, '_' and '-'.
        name: String,
        /// Print the server's answer as JSON (volumeID, name, token)
        /// instead of only the id.
        #[arg(long)]
        json: bool,
    },
    /// List volumes.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume (by id or name); its data goes once no sandbox uses
    /// it.
    Rm {
        /// Volume id or name.
        volume: String,
    },
}

#[derive(Debug, Subcommand)]
enum TeamCommand {
    /// Create a team; prints its first API key (shown only this once).
    Create {
        /// Its name (1 to 63 characters from a-z, 0-9, '.', '_', '-').
        name: String,
        /// Print JSON (teamID, name, createdAt, apiKey) instead of the key.
        #[arg(long)]
        json: bool,
    },
    /// List teams.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create an API key (`e2b_…`, sent as `X-API-Key`); prints the key
    /// (shown only this once).
    Create {
        /// Print JSON (id, key, prefix, createdAt) instead of the key.
        #[arg(long)]
        json: bool,
        /// Create an access token instead (`sk_e2b_…`, sent as
        /// `Authorization: Bearer`, as E2B's CLI does).
        #[arg(long)]
        access_token: bool,
        /// Its name, for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List API keys (ids and prefixes, never the keys).
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key (a team's last valid key cannot be revoked).
    Revoke {
        /// Key id, as `api-key list` shows it.
        id: String,
    },
}

/// How to run one command.
#[derive(Debug, Args)]
struct ProcessArgs {
    /// Environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the sandbox.
    #[arg(long)]
    cwd: Option<String>,
    /// User to run as in the sandbox.
    #[arg(long)]
    user: Option<String>,
    /// The command and its arguments.
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Sandbox id.
    id: String,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Template name or id.
    template: String,
    /// Lifetime of the sandbox in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    #[command(flatten)]
    process: ProcessArgs,
}

/// A mistake in how the command was called: exit status 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `KEY=VALUE` arguments of `--flag` → pairs, or a usage error.
pub(crate) fn parse_pairs(flag: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(UsageError(format!("invalid --{flag} '{item}': expected KEY=VALUE")).into()),
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for lingering blocking tasks (e.g. a stdin reader).
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Serve(args) => {
            serve::run(args, cli.data_dir).await?;
            Ok(0)
        }
        Command::Node(args) => {
            serve::run_node(args, cli.data_dir).await?;
            Ok(0)
        }
        Command::Control(args) => {
            serve::run_control(args, cli.data_dir).await?;
            Ok(0)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "hutch", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(0)
        }
        Command::Template(cmd) => {
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            match cmd {
                TemplateCommand::Import {
                    source,
                    name,
                    reference,
                    allow_privilege_escalation,
                    json,
                } => {
                    template::import(
                        &api,
                        &source,
                        &name,
                        reference.as_deref(),
                        allow_privilege_escalation,
                        json,
                    )
                    .await?
                }
                TemplateCommand::Build {
                    name,
                    file,
                    build_arg,
                    no_cache,
                    start_cmd,
                    ready_cmd,
                    ready_timeout,
                    cpus,
                    memory,
                    disk,
                    pids,
                    context,
                } => {
                    let args = build::BuildArgs {
                        name,
                        context,
                        dockerfile: file,
                        build_args: parse_pairs("build-arg", &build_arg)?,
                        no_cache,
                        start_cmd,
                        ready_cmd,
                        ready_timeout,
                        limits: Some(hutch_protocol::api::TemplateLimits {
                            cpu_count: cpus,
                            memory_mb: memory,
                            disk_size_mb: disk,
                            pids,
                        })
                        .filter(|l| !l.is_empty()),
                    };
                    return build::build(&api, args).await;
                }
                TemplateCommand::Pull {
                    reference,
                    name,
                    username,
                    password_stdin,
                    allow_privilege_escalation,
                    json,
                } => {
                    let credentials = match username {
                        Some(user) if password_stdin => Some((user, template::read_password()?)),
                        _ => None,
                    };
                    template::pull(
                        &api,
                        &reference,
                        &name,
                        credentials,
                        allow_privilege_escalation,
                        json,
                    )
                    .await?
                }
                TemplateCommand::List { json } => template::list(&api, json).await?,
                TemplateCommand::Rm { name } => template::remove(&api, &name).await?,
            }
            Ok(0)
        }
        Command::Sandbox(cmd) => {
            match cmd {
                SandboxCommand::Create {
                    template,
                    env,
                    timeout,
                    metadata,
                    no_internet,
                    allow_out,
                    deny_out,
                    cpus,
                    memory,
                    disk,
                    pids,
                    auto_pause,
                    auto_pause_filesystem,
                    auto_resume,
                    json,
                } => {
                    let env = parse_pairs("env", &env)?;
                    let metadata = parse_pairs("metadata", &metadata)?;
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    let opts = sandbox::CreateOpts {
                        network: sandbox::NetworkOpts {
                            no_internet,
                            allow_out,
                            deny_out,
                        },
                        limits: sandbox::LimitOpts {
                            cpus,
                            memory_mb: memory,
                            disk_mb: disk,
                            pids,
                        },
                        lifecycle: sandbox::LifecycleOpts {
                            auto_pause,
                            auto_pause_filesystem,
                            auto_resume,
                        },
                    };
                    let created =
                        sandbox::create_with(&api, &template, &env, timeout, &metadata, &opts)
                            .await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&created)?);
                    } else {
                        println!("{}", created.sandbox_id);
                    }
                }
                SandboxCommand::List { json } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::list(&api, json).await?;
                }
                SandboxCommand::Kill { id } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::kill(&api, &id).await?;
                }
                SandboxCommand::Pause { id, filesystem } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::pause(&api, &id, filesystem).await?;
                }
                SandboxCommand::Resume { id } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::resume(&api, &id).await?;
                }
                SandboxCommand::Metrics { id, watch, json } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::metrics(&api, &id, watch, json).await?;
                }
                SandboxCommand::Logs {
                    id,
                    level,
                    search,
                    json,
                } => {
                    let api = client::Api::new(&cli.server, &cli.data_dir)?;
                    sandbox::logs(&api, &id, level.as_deref(), search.as_deref(), json).await?;
                }
            }
            Ok(0)
        }
        Command::ApiKey(cmd) => {
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            match cmd {
                ApiKeyCommand::Create {
                    json,
                    access_token,
                    name,
                } => apikey::create(&api, json, access_token, name).await?,
                ApiKeyCommand::List { json } => apikey::list(&api, json).await?,
                ApiKeyCommand::Revoke { id } => apikey::revoke(&api, &id).await?,
            }
            Ok(0)
        }
        Command::Team(cmd) => {
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            match cmd {
                TeamCommand::Create { name, json } => team::create(&api, &name, json).await?,
                TeamCommand::List { json } => team::list(&api, json).await?,
            }
            Ok(0)
        }
        Command::Volume(cmd) => {
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            match cmd {
                VolumeCommand::Create { name, json } => volume::create(&api, &name, json).await?,
                VolumeCommand::List { json } => volume::list(&api, json).await?,
                VolumeCommand::Rm { volume } => volume::remove(&api, &volume).await?,
            }
            Ok(0)
        }
        Command::Exec(args) => {
            let process = exec::Process::from_args(args.process)?;
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            exec::exec(&api, &args.id, &process).await
        }
        Command::Run(args) => {
            let sandbox_env = parse_pairs("env", &args.process.env)?;
            let process = exec::Process::from_args(ProcessArgs {
                env: Vec::new(),
                ..args.process
            })?;
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            exec::run(&api, &args.template, &sandbox_env, args.timeout, &process).await
        }
        Command::Mcp(args) => {
            let api = client::Api::new(&cli.server, &cli.data_dir)?;
            match args.http {
                Some(addr) => mcp::serve_http(api, addr).await?,
                None => mcp::serve(api).await?,
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_rest_as_the_command() {
        let cli = Cli::try_parse_from([
            "hutch", "exec", "abc", "--env", "A=1", "--", "ls", "-la", "--env", "x",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.id, "abc");
        assert_eq!(args.process.env, ["A=1"]);
        assert_eq!(args.process.command, ["ls", "-la", "--env", "x"]);
    }

    #[test]
    fn pairs_need_an_equals_sign() {
        assert_eq!(
            parse_pairs("env", &["A=b=c".into(), "E=".into()]).unwrap(),
            [("A".into(), "b=c".into()), ("E".into(), String::new())]
        );
        let err = parse_pairs("env", &["FOO".into()]).unwrap_err();
        assert_eq!(err.to_string(), "invalid --env 'FOO': expected KEY=VALUE");
        assert!(err.is::<UsageError>());
        assert!(parse_pairs("env", &["=x".into()]).is_err());
    }

    #[test]
    fn serve_takes_the_network_settings() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["hutch", "serve"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Serve(args)) => Ok(args),
                Ok(_) => panic!("not serve"),
                Err(e) => Err(e.to_string()),
            }
        };
        let defaults = serve(&[]).unwrap().daemon.machine;
        assert_eq!(defaults.network_pool.to_string(), "10.200.0.0/16");
        assert_eq!(defaults.fallback_dns.len(), 2);
        assert!(defaults.dns.is_empty());
        assert_eq!(
            serve(&["--dns", "198.51.100.2"])
                .unwrap()
                .daemon
                .machine
                .dns
                .len(),
            1
        );
        let set = serve(&[
            "--network-pool",
            "10.99.0.0/20",
            "--fallback-dns",
            "9.9.9.9,149.112.112.112",
        ])
        .unwrap()
        .daemon
        .machine;
        assert_eq!(set.network_pool.to_string(), "10.99.0.0/20");
        assert_eq!(
            set.fallback_dns,
            [
                "9.9.9.9".parse::<std::net::IpAddr>().unwrap(),
                "149.112.112.112".parse().unwrap()
            ]
        );
        let e = serve(&["--network-pool", "nope"]).unwrap_err();
        assert!(e.contains("--network-pool"), "{e}");
        let e = serve(&["--fallback-dns", "1.1.1.1,dns.example"]).unwrap_err();
        assert!(e.contains("--fallback-dns"), "{e}");
        // A cluster's settings are `hutch control`'s, which needs them.
        let e = serve(&["--node-secret-file", "/etc/hutch/node-secret"]).unwrap_err();
        assert!(e.contains("--node-secret-file"), "{e}");
        let e = Cli::try_parse_from(["hutch", "control"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--node-secret-file") && e.contains("--template-registry"),
            "{e}"
        );
        let node = |extra: &[&str]| {
            let mut argv = vec!["hutch", "node", "--node-secret-file", "/s"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Node(args)) => args,
                _ => panic!("not node"),
            }
        };
        assert!(node(&[]).join.is_empty());
        assert_eq!(
            node(&["--join", "http://a:3000,http://b:3000"]).join,
            ["http://a:3000", "http://b:3000"]
        );
    }
}
