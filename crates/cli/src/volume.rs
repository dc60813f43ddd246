//! `hutch volume create | list | rm`: volumes, through E2B's `/volumes`
//! routes.

use hutch_protocol::api::{NewVolume, VolumeAndToken, VolumeInfo};

use crate::client::{Api, encode};

/// Creates volume `name`; prints its id.
pub(crate) async fn create(api: &Api, name: &str, as_json: bool) -> anyhow::Result<()> {
    let created: VolumeAndToken = api
        .post_json(
            "/volumes",
            &NewVolume {
                name: name.to_owned(),
            },
        )
        .await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        println!("{}", created.volume_id);
    }
    Ok(())
}

pub(crate) async fn list(api: &Api, as_json: bool) -> anyhow::Result<()> {
    let volumes: Vec<VolumeInfo> = api.get_json("/volumes").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&volumes)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = volumes
        .into_iter()
        .map(|v| vec![v.volume_id, v.name])
        .collect();
    crate::template::print_table(&["ID", "NAME"], &rows);
    Ok(())
}

/// Deletes a volume by id or name (its data goes once no sandbox uses it).
pub(crate) async fn remove(api: &Api, volume: &str) -> anyhow::Result<()> {
    let volumes: Vec<VolumeInfo> = api.get_json("/volumes").await?;
    let Some(v) = volumes
        .iter()
        .find(|v| v.volume_id == volume || v.name == volume)
    else {
        anyhow::bail!("volume '{volume}' not found");
    };
    api.delete(&format!("/volumes/{}", encode(&v.volume_id)))
        .await
}
