//! `--remote-node`: what running the sandboxes on a node apart costs. One
//! server alone (`hutch serve`) and one control plane (`hutch control`)
//! whose sandboxes run on a `hutch node` — both in this process, the node
//! with its own data directory and runc state, the template reaching it
//! through a real registry (`docker-registry`) — measured side by side in
//! one run, cold boots on both (no warm pool), through each server's REST
//! API and front door:
//!
//! * **create** — `POST /v2/sandboxes` until the 201;
//! * **create → first output** — a create, then `Start echo hi` until the
//!   first output byte;
//! * **exec round-trip** — on a live sandbox, `Start /bin/true` until its
//!   `end` event (on the control plane: front door, then a tunnel through
//!   the node API to the agent).
//!
//! The warm-up iterations include the push to the registry and the node's
//! pull of the template.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hutch_server::{
    Capacity, ClusterConfig, JoinConfig, MachineConfig, NodeConfig, NodeServer, ServerConfig,
};

use super::{Args, Target, first_output, ms, percentile, round_trip};

/// One scenario's samples on both.
struct Pair {
    name: &'static str,
    single: Vec<Duration>,
    remote: Vec<Duration>,
}

pub(crate) async fn run(args: &Args, tmp: &Path, envd: PathBuf) -> anyhow::Result<()> {
    let registry = tokio::task::spawn_blocking(|| {
        hutch_test_support::Registry::start(hutch_test_support::RegistryAuthMode::Anonymous)
    })
    .await?;
    let secret = format!("{:032x}{:032x}", rand_u128(), rand_u128());
    let single = Target::start(tmp.join("s"), envd.clone(), 0).await?;
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse()?, tmp.join("c"), envd.clone());
    cfg.cluster = Some(ClusterConfig {
        secret: secret.clone(),
        template_registry: format!("127.0.0.1:{}/hutch/bench", registry.port()),
        node_lease: hutch_server::DEFAULT_NODE_LEASE,
    });
    let control = Target::start_config(cfg, 0).await?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let node_addr = listener.local_addr()?;
    drop(listener);
    let node = NodeServer::bind(NodeConfig {
        listen: node_addr,
        data_dir: tmp.join("n"),
        machine: MachineConfig {
            envd,
            runc: "runc".into(),
            network: hutch_server::NetworkConfig::default(),
        },
        secret,
        insecure_registries: Vec::new(),
        http: hutch_server::http::Limits::default(),
        join: Some(JoinConfig {
            control: vec![control.api.base.clone()],
            name: "bench-node".into(),
            advertise: format!("http://{node_addr}"),
            capacity: Capacity {
                cpus: 2000,
                memory_mb: 512_000,
                sandboxes: 1000,
            },
        }),
    })
    .await?;
    let (stop_node, stopped) = tokio::sync::oneshot::channel::<()>();
    let node_task = tokio::spawn(node.run_until(async {
        let _ = stopped.await;
    }));
    control.api.wait_for_nodes(1).await?;
    let result = measure(args, &single, &control).await;
    single.shutdown().await;
    control.shutdown().await;
    let _ = stop_node.send(());
    let _ = node_task.await;
    drop(registry);
    result
}

/// A random number from the kernel, for the node secret.
pub(crate) fn rand_u128() -> u128 {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("the kernel gives random bytes");
    u128::from_le_bytes(bytes)
}

async fn measure(args: &Args, single: &Target, control: &Target) -> anyhow::Result<()> {
    let image = hutch_test_support::busybox_image();
    single.api.import(&image).await?;
    control.api.import(&image).await?;
    let (n, w) = (args.iterations, args.warmup.max(1));
    let mut results = Vec::new();

    let mut create = Pair::new("sandbox create (cold)");
    let mut first = Pair::new("create → first output (cold)");
    for i in 0..n + w {
        let mut sample = [Duration::ZERO; 4];
        for (j, target) in [single, control].into_iter().enumerate() {
            let t = Instant::now();
            let id = target.api.create().await?;
            sample[j] = t.elapsed();
            target.api.kill(&id).await?;

            let t = Instant::now();
            let id = target.api.create().await?;
            first_output(&target.front, Some(&id), &["echo", "hi"]).await?;
            sample[2 + j] = t.elapsed();
            target.api.kill(&id).await?;
        }
        if i >= w {
            create.push(sample[0], sample[1]);
            first.push(sample[2], sample[3]);
        }
    }
    results.push(create);
    results.push(first);

    let mut exec = Pair::new("exec round-trip (front door)");
    let ids = [single.api.create().await?, control.api.create().await?];
    for i in 0..n + w {
        let mut sample = [Duration::ZERO; 2];
        for (j, target) in [single, control].into_iter().enumerate() {
            let t = Instant::now();
            round_trip(&target.front, Some(&ids[j]), &["/bin/true"]).await?;
            sample[j] = t.elapsed();
        }
        if i >= w {
            exec.push(sample[0], sample[1]);
        }
    }
    single.api.kill(&ids[0]).await?;
    control.api.kill(&ids[1]).await?;
    results.push(exec);

    println!(
        "A server alone vs a control plane and its node, {n} iterations each (milliseconds)\n"
    );
    println!(
        "{:<32} {:>11} {:>11} {:>13} {:>13} {:>7}",
        "scenario", "alone p50", "alone p95", "+node p50", "+node p95", "ratio"
    );
    for p in &results {
        let (a50, r50) = (percentile(&p.single, 50.0), percentile(&p.remote, 50.0));
        println!(
            "{:<32} {:>11} {:>11} {:>13} {:>13} {:>7.2}",
            p.name,
            ms(a50),
            ms(percentile(&p.single, 95.0)),
            ms(r50),
            ms(percentile(&p.remote, 95.0)),
            r50.as_secs_f64() / a50.as_secs_f64(),
        );
    }
    Ok(())
}

impl Pair {
    fn new(name: &'static str) -> Pair {
        Pair {
            name,
            single: Vec::new(),
            remote: Vec::new(),
        }
    }

    fn push(&mut self, single: Duration, remote: Duration) {
        self.single.push(single);
        self.remote.push(remote);
    }
}
