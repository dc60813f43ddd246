//! Templates as E2B's management routes show them: each template name with
//! its kept builds (the default one, the tagged ones, and replaced ones
//! still in use), how often sandboxes started from it, and its `public`
//! flag. Snapshots are listed by the snapshot routes, not here.

use std::collections::BTreeMap;

use hutch_image::{TemplateMetadata, TemplateSource};

use super::{CatalogError, metadata, template_name};
use crate::db::{Spawns, TemplateRow};
use crate::state::AppState;

/// One template and its builds.
#[derive(Debug, Clone)]
pub(crate) struct TemplateView {
    /// Its name.
    pub name: String,
    /// The build that represents it: its default build, or the newest
    /// one when it has tagged builds only.
    pub main: TemplateRow,
    /// That build's metadata.
    pub meta: TemplateMetadata,
    /// Every kept build, newest first, with its metadata.
    pub builds: Vec<(TemplateRow, TemplateMetadata)>,
    /// Sandboxes started from any of its builds.
    pub spawns: Spawns,
}

/// Every template of team `team` (not snapshots), by name.
pub(crate) async fn overview(st: &AppState, team: &str) -> Result<Vec<TemplateView>, CatalogError> {
    let mut rows = st.db.list_templates().await?;
    rows.retain(|row| row.team_id == team);
    let spawns = st.db.spawns_by_template().await?;
    let tags = st.db.list_tags(None).await?;
    let mut by_name: BTreeMap<String, Vec<(TemplateRow, TemplateMetadata)>> = BTreeMap::new();
    for row in rows {
        let meta = metadata(&row)?;
        if matches!(meta.source, TemplateSource::Snapshot { .. }) {
            continue;
        }
        by_name
            .entry(template_name(&row).to_owned())
            .or_default()
            .push((row, meta));
    }
    let mut out = Vec::new();
    for (name, mut builds) in by_name {
        builds.sort_by_key(|b| std::cmp::Reverse(b.0.created_at));
        let default = builds.iter().find(|(row, _)| row.name == name).cloned();
        let tagged = tags.iter().any(|t| t.name == name);
        // Replaced builds still running, without a default or a tag: the
        // template is gone, its last sandboxes are not.
        let (main, meta) = match default {
            Some(d) => d,
            None if tagged => builds[0].clone(),
            None => continue,
        };
        let spawns = spawns_of(&spawns, &name);
        out.push(TemplateView {
            name,
            main,
            meta,
            builds,
            spawns,
        });
    }
    Ok(out)
}

/// One template of team `team`, by id (of any of its builds) or name.
pub(crate) async fn describe(
    st: &AppState,
    team: &str,
    template: &str,
) -> Result<TemplateView, CatalogError> {
    let name = match st.db.find_template(template.to_owned()).await? {
        Some(row) => template_name(&row).to_owned(),
        None => template.to_owned(),
    };
    overview(st, team)
        .await?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| CatalogError::NotFound(template.to_owned()))
}

/// Records team `team`'s template `template`'s `public` flag (on every
/// build).
pub(crate) async fn set_public(
    st: &AppState,
    team: &str,
    template: &str,
    public: bool,
) -> Result<TemplateView, CatalogError> {
    let view = describe(st, team, template).await?;
    for (row, _) in &view.builds {
        st.db.set_template_public(row.id.clone(), public).await?;
    }
    describe(st, team, template).await
}

/// The sandboxes started from template `name`, whichever build.
fn spawns_of(all: &BTreeMap<String, Spawns>, name: &str) -> Spawns {
    all.iter()
        .filter(|(n, _)| n.as_str() == name || n.split_once('@').is_some_and(|(n, _)| n == name))
        .fold(Spawns::default(), |acc, (_, s)| Spawns {
            count: acc.count + s.count,
            last_at: acc.last_at.max(s.last_at),
        })
}
