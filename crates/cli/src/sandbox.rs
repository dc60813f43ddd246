//! `hutch sandbox create | list | kill | pause | resume`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use crate::client::Api;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "templateID")]
    template_id: String,
    alias: Option<String>,
    started_at: String,
    end_at: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Creates a sandbox; returns its id.
pub(crate) async fn create(
    api: &Api,
    template: &str,
    env: &[(String, String)],
    timeout: Option<u64>,
    metadata: &[(String, String)],
) -> anyhow::Result<String> {
    let env: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let metadata: BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = json!({"templateID": template, "envVars": env, "metadata": metadata});
    if let Some(t) = timeout {
        body["timeout"] = json!(t);
    }
    let created: Created = api.post_json("/sandboxes", &body).await?;
    Ok(created.sandbox_id)
}

/// Every running and paused sandbox, following `x-next-token` pages.
async fn list_all(api: &Api) -> anyhow::Result<Vec<serde_json::Value>> {
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
    let sandboxes: Vec<Listed> = values
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
            let ends = if s.state == "paused" {
                "-".to_string()
            } else {
                s.end_at
            };
            vec![
                s.sandbox_id,
                s.alias.unwrap_or(s.template_id),
                s.state,
                s.started_at,
                ends,
                metadata,
            ]
        })
        .collect();
    crate::template::print_table(
        &["ID", "TEMPLATE", "STATE", "STARTED", "ENDS", "METADATA"],
        &rows,
    );
    Ok(())
}

pub(crate) async fn kill(api: &Api, id: &str) -> anyhow::Result<()> {
    api.delete(&format!("/sandboxes/{}", crate::client::encode(id)))
        .await
}

pub(crate) async fn pause(api: &Api, id: &str) -> anyhow::Result<()> {
    let path = format!("/sandboxes/{}/pause", crate::client::encode(id));
    api.send(api.request(reqwest::Method::POST, &path).json(&json!({})))
        .await?;
    Ok(())
}

pub(crate) async fn resume(api: &Api, id: &str) -> anyhow::Result<()> {
    let path = format!("/sandboxes/{}/connect", crate::client::encode(id));
    api.send(api.request(reqwest::Method::POST, &path).json(&json!({})))
        .await?;
    Ok(())
}
