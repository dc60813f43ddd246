//! `hutch team create | list`: teams, each with its own keys, sandboxes,
//! templates and volumes (keys of the default team only).

use hutch_protocol::api::{NewTeam, TeamInfo};

use crate::client::Api;

/// Creates team `name` and prints its first API key (shown only this
/// once).
pub(crate) async fn create(api: &Api, name: &str, as_json: bool) -> anyhow::Result<()> {
    let body = NewTeam {
        name: name.to_owned(),
    };
    let team: TeamInfo = api.post_json("/hutch/v1/teams", &body).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&team)?);
        return Ok(());
    }
    println!("{}", team.api_key.unwrap_or_default());
    eprintln!(
        "team '{}' ({}) created; its first API key is above, shown only this once (give it to the team: `HUTCH_API_KEY=… hutch api-key create` makes more)",
        team.name, team.team_id
    );
    Ok(())
}

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let value: serde_json::Value = api.get_json("/hutch/v1/teams").await?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let teams: Vec<TeamInfo> = api.get_json("/hutch/v1/teams").await?;
    let rows: Vec<Vec<String>> = teams
        .into_iter()
        .map(|t| {
            vec![
                t.team_id,
                t.name,
                t.created_at,
                if t.is_default { "yes" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    crate::template::print_table(&["ID", "NAME", "CREATED", "DEFAULT"], &rows);
    Ok(())
}
