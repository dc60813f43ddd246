//! `hutch sandbox create | list | kill`.

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

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let value: serde_json::Value = api.get_json("/sandboxes").await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let sandboxes: Vec<Listed> = api.get_json("/sandboxes").await?;
    let rows: Vec<Vec<String>> = sandboxes
        .into_iter()
        .map(|s| {
            let metadata = s
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                s.sandbox_id,
                s.alias.unwrap_or(s.template_id),
                s.started_at,
                s.end_at,
                metadata,
            ]
        })
        .collect();
    crate::template::print_table(&["ID", "TEMPLATE", "STARTED", "ENDS", "METADATA"], &rows);
    Ok(())
}

pub(crate) async fn kill(api: &Api, id: &str) -> anyhow::Result<()> {
    api.delete(&format!("/sandboxes/{}", crate::client::encode(id)))
        .await
}
