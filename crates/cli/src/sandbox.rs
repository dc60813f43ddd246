//! `hutch sandbox create | list | kill | pause | resume | logs`.

use hutch_protocol::api::{
    AutoResume, ConnectSandbox, ListedSandbox, NewSandbox, PauseSandbox, SandboxCreated,
    SandboxLogsV2, SandboxNetwork,
};

use crate::client::Api;

/// Resource limits a created sandbox asks for (`None`: the template's
/// default).
#[derive(Debug, Default)]
pub(crate) struct LimitOpts {
    /// `cpuCount`.
    pub cpus: Option<u64>,
    /// `memoryMB`.
    pub memory_mb: Option<u64>,
    /// `diskSizeMB`.
    pub disk_mb: Option<u64>,
    /// `hutchPids`.
    pub pids: Option<u64>,
}

/// What a created sandbox may reach on the network (E2B's
/// `allow_internet_access` and `network`); the default is internet access
/// and no lists.
#[derive(Debug, Default)]
pub(crate) struct NetworkOpts {
    /// No internet access (`allow_internet_access: false`).
    pub no_internet: bool,
    /// `network.allowOut`.
    pub allow_out: Vec<String>,
    /// `network.denyOut`.
    pub deny_out: Vec<String>,
}

/// What a created sandbox does at its timeout, and whether requests resume
/// it (E2B's `autoPause`, `autoPauseMemory`, `autoResume`); the default is
/// to be killed at the timeout.
#[derive(Debug, Default)]
pub(crate) struct LifecycleOpts {
    /// Paused instead of killed at its timeout.
    pub auto_pause: bool,
    /// That pause keeps only the filesystem (`autoPauseMemory: false`).
    pub auto_pause_filesystem: bool,
    /// A request through the front door resumes it while paused.
    pub auto_resume: bool,
}

/// Everything but the template, variables, timeout and metadata a create
/// can ask for.
#[derive(Debug, Default)]
pub(crate) struct CreateOpts {
    /// Its network policy.
    pub network: NetworkOpts,
    /// Its resource limits.
    pub limits: LimitOpts,
    /// Its timeout and resume behaviour.
    pub lifecycle: LifecycleOpts,
}

/// Creates a sandbox; returns its id.
pub(crate) async fn create(
    api: &Api,
    template: &str,
    env: &[(String, String)],
    timeout: Option<u64>,
    metadata: &[(String, String)],
) -> anyhow::Result<String> {
    create_with(
        api,
        template,
        env,
        timeout,
        metadata,
        &CreateOpts::default(),
    )
    .await
    .map(|created| created.sandbox_id)
}

/// [`create`] with a network policy, limits and lifecycle.
pub(crate) async fn create_with(
    api: &Api,
    template: &str,
    env: &[(String, String)],
    timeout: Option<u64>,
    metadata: &[(String, String)],
    opts: &CreateOpts,
) -> anyhow::Result<SandboxCreated> {
    let CreateOpts {
        network,
        limits,
        lifecycle,
    } = opts;
    let auto_pause = lifecycle.auto_pause || lifecycle.auto_pause_filesystem;
    let body = NewSandbox {
        template_id: template.to_owned(),
        timeout,
        metadata: Some(metadata.iter().cloned().collect()),
        env_vars: Some(env.iter().cloned().collect()),
        secure: None,
        allow_internet_access: network.no_internet.then_some(false),
        network: (!network.allow_out.is_empty() || !network.deny_out.is_empty()).then(|| {
            SandboxNetwork {
                allow_out: Some(network.allow_out.clone()),
                deny_out: Some(network.deny_out.clone()),
                ..Default::default()
            }
        }),
        cpu_count: limits.cpus.map(signed),
        memory_mb: limits.memory_mb.map(signed),
        disk_size_mb: limits.disk_mb.map(signed),
        hutch_pids: limits.pids.map(signed),
        auto_pause: auto_pause.then_some(true),
        auto_pause_memory: auto_pause.then_some(!lifecycle.auto_pause_filesystem),
        auto_resume: lifecycle
            .auto_resume
            .then_some(AutoResume { enabled: true }),
        volume_mounts: None,
    };
    post_waiting_for_template(api, &body).await
}

/// A limit as the create body takes it (a value beyond its range is
/// refused by the server as above the maximum).
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Every running and paused sandbox, following `x-next-token` pages.
pub(crate) async fn list_all(api: &Api) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = "/v2/sandboxes?state=running,paused&limit=1000".to_string();
        if let Some(t) = &token {
            path.push_str(&format!("&nextToken={}", crate::client::encode(t)));
        }
        let resp = api.send(api.request(reqwest::Method::GET, &path)).await?;
        let next = resp
            .headers()
            .get("x-next-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await?;
        let page: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|_| anyhow::anyhow!("unexpected answer from the server: {text}"))?;
        all.extend(page);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(all),
        }
    }
}

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    let values = list_all(api).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let sandboxes: Vec<ListedSandbox> = values
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()?;
    let rows: Vec<Vec<String>> = sandboxes
        .into_iter()
        .map(|s| {
            let metadata = s
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let ends = if s.is_paused() {
                "-".to_string()
            } else {
                s.end_at.clone()
            };
            let state = if s.is_paused_filesystem() {
                "paused-fs".to_string()
            } else {
                s.state.clone()
            };
            vec![
                s.sandbox_id,
                s.alias.unwrap_or(s.template_id),
                state,
                s.started_at,
                ends,
                s.cpu_count.to_string(),
                s.memory_mb.to_string(),
                s.disk_size_mb.to_string(),
                s.hutch_pids
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                metadata,
            ]
        })
        .collect();
    crate::template::print_table(
        &[
            "ID", "TEMPLATE", "STATE", "STARTED", "ENDS", "CPUS", "MEM_MB", "DISK_MB", "PIDS",
            "METADATA",
        ],
        &rows,
    );
    Ok(())
}

/// One metrics sample, as the server answers it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    timestamp: String,
    timestamp_unix: i64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    disk_used: u64,
    disk_total: u64,
}

impl Sample {
    fn row(&self) -> [String; 4] {
        let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
        [
            self.timestamp.clone(),
            format!("{:.1}% of {}", self.cpu_used_pct, self.cpu_count),
            format!("{}/{}", mib(self.mem_used), mib(self.mem_total)),
            format!("{}/{}", mib(self.disk_used), mib(self.disk_total)),
        ]
    }
}

const METRICS_HEADER: [&str; 4] = ["TIME", "CPU", "MEM_MIB", "DISK_MIB"];

/// One line of the metrics view: fixed columns, so that lines printed
/// over time line up.
fn metrics_line(cells: &[String]) -> String {
    const WIDTHS: [usize; 3] = [24, 14, 18];
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match WIDTHS.get(i) {
            Some(&w) => line.push_str(&format!("{cell:<w$}  ")),
            None => line.push_str(cell),
        }
    }
    line.trim_end().to_owned()
}

/// How often `sandbox metrics --watch` asks for new samples.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// `hutch sandbox metrics ID [--watch] [--json]`.
pub(crate) async fn metrics(api: &Api, id: &str, watch: bool, as_json: bool) -> anyhow::Result<()> {
    let path = format!("/sandboxes/{id}/metrics");
    let first: Vec<serde_json::Value> = api.get_json(&path).await?;
    let mut last = print_samples(&first, as_json, true, None)?;
    if !watch {
        return Ok(());
    }
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let since = last.map_or(String::new(), |t| format!("?start={}", t + 1));
        let samples: Vec<serde_json::Value> = match api.get_json(&format!("{path}{since}")).await {
            Ok(s) => s,
            Err(e) if crate::client::ServerReplied::is_not_found(&e) => {
                eprintln!("sandbox {id} has ended");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        last = print_samples(&samples, as_json, false, last)?.or(last);
    }
}

/// Prints `samples` newer than `after` (a table, its header first when
/// `header`, or one JSON array); the newest one's unix time.
fn print_samples(
    samples: &[serde_json::Value],
    as_json: bool,
    header: bool,
    after: Option<i64>,
) -> anyhow::Result<Option<i64>> {
    let parsed: Vec<Sample> = samples
        .iter()
        .cloned()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()?;
    let fresh: Vec<usize> = (0..parsed.len())
        .filter(|&i| after.is_none_or(|t| parsed[i].timestamp_unix > t))
        .collect();
    if as_json {
        if header || !fresh.is_empty() {
            let chosen: Vec<&serde_json::Value> = fresh.iter().map(|&i| &samples[i]).collect();
            println!("{}", serde_json::to_string(&chosen)?);
        }
    } else {
        if header {
            println!("{}", metrics_line(&METRICS_HEADER.map(String::from)));
        }
        for &i in &fresh {
            println!("{}", metrics_line(&parsed[i].row()));
        }
    }
    Ok(fresh.iter().map(|&i| parsed[i].timestamp_unix).max())
}

pub(crate) async fn kill(api: &Api, id: &str) -> anyhow::Result<()> {
    api.delete(&format!("/sandboxes/{}", crate::client::encode(id)))
        .await
}

/// Pauses a sandbox: frozen in memory, or (`filesystem`) stopped with only
/// its files kept.
pub(crate) async fn pause(api: &Api, id: &str, filesystem: bool) -> anyhow::Result<()> {
    let path = format!("/sandboxes/{}/pause", crate::client::encode(id));
    let body = PauseSandbox {
        memory: filesystem.then_some(false),
    };
    api.send(api.request(reqwest::Method::POST, &path).json(&body))
        .await?;
    Ok(())
}

pub(crate) async fn resume(api: &Api, id: &str) -> anyhow::Result<()> {
    let path = format!("/sandboxes/{}/connect", crate::client::encode(id));
    api.send(
        api.request(reqwest::Method::POST, &path)
            .json(&ConnectSandbox::default()),
    )
    .await?;
    Ok(())
}

/// Prints a sandbox's log (`GET /v2/sandboxes/{id}/logs`), oldest first:
/// one `TIMESTAMP LEVEL MESSAGE` line per entry, or the entries as JSON.
pub(crate) async fn logs(
    api: &Api,
    id: &str,
    level: Option<&str>,
    search: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut path = format!(
        "/v2/sandboxes/{}/logs?limit=10000",
        crate::client::encode(id)
    );
    if let Some(level) = level {
        path.push_str(&format!("&level={}", crate::client::encode(level)));
    }
    if let Some(search) = search {
        path.push_str(&format!("&search={}", crate::client::encode(search)));
    }
    let logs: SandboxLogsV2 = api.get_json(&path).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&logs.logs)?);
        return Ok(());
    }
    for e in logs.logs {
        let level = serde_json::to_value(e.level)?;
        println!(
            "{} {:<5} {}",
            e.timestamp,
            level.as_str().unwrap_or_default(),
            e.message
        );
    }
    Ok(())
}

/// How long a create waits for a template the server is still building
/// (the default `base` template on a server's first start).
const TEMPLATE_BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `POST /sandboxes`; while the server answers that the template is still
/// being built, waits (showing the server's progress on a terminal) and
/// tries again.
async fn post_waiting_for_template(api: &Api, body: &NewSandbox) -> anyhow::Result<SandboxCreated> {
    use std::io::IsTerminal;
    let deadline = std::time::Instant::now() + TEMPLATE_BUILD_WAIT;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut told = false;
    loop {
        match api.post_json::<SandboxCreated>("/sandboxes", body).await {
            Err(e)
                if e.to_string().contains("is still being built")
                    && std::time::Instant::now() < deadline =>
            {
                let msg = e.to_string();
                if std::io::stderr().is_terminal() {
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::new_spinner();
                        b.enable_steady_tick(std::time::Duration::from_millis(120));
                        b
                    });
                    b.set_message(msg);
                } else if !told {
                    eprintln!("{msg}; waiting");
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            other => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return other;
            }
        }
    }
}
