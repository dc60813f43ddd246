//! `hutch api-key create | list | revoke`.

use hutch_protocol::api::{CreatedApiKey, ListedApiKey, NewApiKey};

use crate::client::Api;

/// Creates a key (or, with `access_token`, an access token for
/// `Authorization: Bearer`) and prints it (the only time it can be seen)
/// and its id.
pub(crate) async fn create(
    api: &Api,
    as_json: bool,
    access_token: bool,
    name: Option<String>,
) -> anyhow::Result<()> {
    let body = NewApiKey {
        kind: access_token.then(|| NewApiKey::ACCESS_TOKEN.to_owned()),
        name,
    };
    if as_json {
        let value: serde_json::Value = api.post_json("/hutch/v1/api-keys", &body).await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let created: CreatedApiKey = api.post_json("/hutch/v1/api-keys", &body).await?;
    println!("{}", created.key);
    let what = if access_token {
        "access token"
    } else {
        "API key"
    };
    eprintln!(
        "{what} {} created; it is shown only this once (revoke it with `hutch api-key revoke {}`)",
        created.id, created.id
    );
    Ok(())
}

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let value: serde_json::Value = api.get_json("/hutch/v1/api-keys").await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let keys: Vec<ListedApiKey> = api.get_json("/hutch/v1/api-keys").await?;
    let rows: Vec<Vec<String>> = keys
        .into_iter()
        .map(|k| {
            vec![
                k.id,
                k.name,
                format!("{}…", k.prefix),
                k.created_at,
                k.revoked_at.unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    crate::template::print_table(&["ID", "NAME", "PREFIX", "CREATED", "REVOKED"], &rows);
    Ok(())
}

pub(crate) async fn revoke(api: &Api, id: &str) -> anyhow::Result<()> {
    api.delete(&format!("/hutch/v1/api-keys/{}", crate::client::encode(id)))
        .await
}
