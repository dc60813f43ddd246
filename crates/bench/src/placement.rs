//! `hutch-bench --placement`: the control plane alone, its nodes simulated
//! (`hutch_server::simulation`: the node API over sandboxes that are a
//! process and a small agent), on PostgreSQL. The same control plane is
//! measured with 1 node, then with 100: sequential creates and creates by
//! concurrent clients (latency and throughput), through the REST API as a
//! client sees them. What this isolates is what the control plane adds —
//! placement, the reservation in the store, the template's image lookup,
//! the agent's `/init` through the node's tunnel — and whether it stays flat
//! as the cluster grows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hutch_server::simulation::SimulatedNode;
use hutch_server::{Capacity, ClusterConfig, ServerConfig};

use crate::{Args, Target, ms, percentile};

/// Nodes in the large cluster.
const NODES: usize = 100;

/// Concurrent clients in the throughput runs.
const CLIENTS: usize = 16;

/// What one cluster size measured.
struct Run {
    nodes: usize,
    sequential: Vec<Duration>,
    concurrent: Vec<Duration>,
    throughput: f64,
}

pub(crate) async fn run(args: &Args, tmp: &Path, envd: PathBuf) -> anyhow::Result<()> {
    let postgres = tokio::task::spawn_blocking(hutch_test_support::Postgres::start).await?;
    let registry = tokio::task::spawn_blocking(|| {
        hutch_test_support::Registry::start(hutch_test_support::RegistryAuthMode::Anonymous)
    })
    .await?;
    let secret = format!(
        "{:032x}{:032x}",
        crate::remote::rand_u128(),
        crate::remote::rand_u128()
    );
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse()?, tmp.join("c"), envd);
    cfg.database_url = Some(postgres.url());
    cfg.cluster = Some(ClusterConfig {
        secret: secret.clone(),
        template_registry: format!("127.0.0.1:{}/hutch/placement", registry.port()),
        node_lease: hutch_server::DEFAULT_NODE_LEASE,
    });
    let control = Target::start_config(cfg, 0).await?;
    let result = measure(args, tmp, &control, &secret).await;
    control.shutdown().await;
    drop(registry);
    drop(postgres);
    let (runs, nodes) = result?;
    for node in nodes {
        node.stop().await;
    }
    report(args, &runs);
    Ok(())
}

async fn measure(
    args: &Args,
    tmp: &Path,
    control: &Target,
    secret: &str,
) -> anyhow::Result<(Vec<Run>, Vec<SimulatedNode>)> {
    control
        .api
        .import(&hutch_test_support::busybox_image())
        .await?;
    let capacity = Capacity {
        cpus: 2000,
        memory_mb: 512_000,
        sandboxes: 1000,
    };
    let mut nodes = Vec::new();
    let mut runs = Vec::new();
    for size in [1, NODES] {
        while nodes.len() < size {
            let name = format!("sim{:03}", nodes.len());
            let node = SimulatedNode::start(
                &name,
                &tmp.join("nodes").join(&name),
                &control.api.base,
                secret,
                capacity,
            )
            .await
            .with_context(|| format!("simulated node {name}"))?;
            nodes.push(node);
        }
        control.api.wait_for_nodes(size).await?;
        runs.push(measure_size(args, control, size).await?);
    }
    Ok((runs, nodes))
}

async fn measure_size(args: &Args, control: &Target, nodes: usize) -> anyhow::Result<Run> {
    // The first create pushes the template to the registry: not measured.
    for _ in 0..args.warmup.max(1) {
        let id = control.api.create().await?;
        control.api.kill(&id).await?;
    }
    let mut sequential = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        let id = control.api.create().await?;
        sequential.push(t.elapsed());
        control.api.kill(&id).await?;
    }
    let per_client = args.iterations.max(CLIENTS) * 2 / CLIENTS;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let api = control.api.clone();
            tokio::spawn(async move {
                let mut made = Vec::new();
                for _ in 0..per_client {
                    let t = Instant::now();
                    let id = api.create().await?;
                    made.push((t.elapsed(), id));
                }
                anyhow::Ok(made)
            })
        })
        .collect();
    let mut concurrent = Vec::new();
    let mut ids = Vec::new();
    for client in clients {
        for (d, id) in client.await?? {
            concurrent.push(d);
            ids.push(id);
        }
    }
    let elapsed = started.elapsed();
    let throughput = ids.len() as f64 / elapsed.as_secs_f64();
    for id in ids {
        control.api.kill(&id).await?;
    }
    Ok(Run {
        nodes,
        sequential,
        concurrent,
        throughput,
    })
}

fn report(args: &Args, runs: &[Run]) {
    println!(
        "The control plane alone on PostgreSQL, its nodes simulated; {} sequential creates, then {} clients creating {} each (milliseconds)\n",
        args.iterations,
        CLIENTS,
        args.iterations.max(CLIENTS) * 2 / CLIENTS
    );
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "nodes", "seq p50", "seq p99", "conc p50", "conc p99", "creates/s"
    );
    for r in runs {
        println!(
            "{:<10} {:>12} {:>12} {:>12} {:>12} {:>12.0}",
            r.nodes,
            ms(percentile(&r.sequential, 50.0)),
            ms(percentile(&r.sequential, 99.0)),
            ms(percentile(&r.concurrent, 50.0)),
            ms(percentile(&r.concurrent, 99.0)),
            r.throughput
        );
    }
    if let [small, large] = runs {
        println!(
            "\ncreate p99 with {} nodes / with {}: {:.2}x (sequential), {:.2}x (concurrent)",
            large.nodes,
            small.nodes,
            percentile(&large.sequential, 99.0).as_secs_f64()
                / percentile(&small.sequential, 99.0).as_secs_f64(),
            percentile(&large.concurrent, 99.0).as_secs_f64()
                / percentile(&small.concurrent, 99.0).as_secs_f64()
        );
    }
}
