//! Tags: names for builds of a template. The build `name` starts is its
//! default (the row named `name`, E2B's implicit tag `default`); other
//! builds are hidden rows (`name@<id>`) that tags point at, kept while a
//! tag or a sandbox uses them.

use std::sync::Arc;

use super::{
    CatalogError, DEFAULT_TAG, Registration, collect_layers, log_collection, metadata, owned_tags,
    prune_replaced, register_build, resolve_owned, template_name, valid_tag, visible,
};
use crate::db::TemplateRow;
use crate::state::AppState;
use crate::{ids, time};

/// Points `tags` at the build `target` names (`name`, `name:tag`,
/// `name:<buildID>`); returns that build's row. Tagging a build `default`
/// makes it the one `name` starts (the template keeps its id); the build it
/// replaces is kept while sandboxes or tags use it.
pub(crate) async fn assign_tags(
    st: &Arc<AppState>,
    team: &str,
    target: &str,
    tags: &[String],
) -> Result<TemplateRow, CatalogError> {
    if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
        return Err(CatalogError::InvalidTag(bad.clone()));
    }
    let row = resolve_owned(st, team, target)
        .await?
        .ok_or_else(|| CatalogError::NotFound(target.to_owned()))?;
    let name = template_name(&row).to_owned();
    let mut tagged = row.clone();
    if tags.iter().any(|t| t == DEFAULT_TAG) && row.name != name {
        // A copy of the build's row becomes the default (same build id,
        // same layers): the rows of other tags and sandboxes stay put.
        let default_id = match st.db.find_template(name.clone()).await? {
            Some(current) if current.name == name => current.id,
            _ => ids::new_id(),
        };
        let mut meta = metadata(&row)?;
        meta.id = default_id;
        meta.name = name.clone();
        register_build(st, team, &meta, Registration::Replace, row.build_id.clone()).await?;
        tagged = st
            .db
            .find_template(name.clone())
            .await?
            .ok_or_else(|| CatalogError::NotFound(name.clone()))?;
    }
    let named: Vec<String> = tags.iter().filter(|t| *t != DEFAULT_TAG).cloned().collect();
    if !named.is_empty() {
        st.db
            .set_tags(name.clone(), named, tagged.id.clone(), time::now_ms())
            .await?;
        // A build the tags moved away from may be unused now.
        let _layers = st.layers_lock.write().await;
        prune_replaced(st).await;
        log_collection(collect_layers(st).await);
    }
    tracing::info!(template = %name, build = %row.build_id, ?tags, "tags assigned");
    Ok(row)
}

/// Removes `tags` of template `name` (a name or an id), all or none; the
/// builds only they kept are removed, with their layers.
pub(crate) async fn remove_tags(
    st: &Arc<AppState>,
    team: &str,
    name: &str,
    tags: &[String],
) -> Result<(), CatalogError> {
    let asked = name;
    let name = match st.db.find_template(name.to_owned()).await? {
        Some(row) if row.team_id != team => return Err(CatalogError::NotFound(asked.to_owned())),
        Some(row) => template_name(&row).to_owned(),
        None if !owned_tags(st, team, name).await? => {
            return Err(CatalogError::NotFound(asked.to_owned()));
        }
        None => name.to_owned(),
    };
    if tags.iter().any(|t| t == DEFAULT_TAG) {
        return Err(CatalogError::DefaultTag(name));
    }
    let missing = st.db.remove_tags(name.clone(), tags.to_vec()).await?;
    if !missing.is_empty() {
        return Err(CatalogError::NoSuchTags {
            name,
            tags: missing,
        });
    }
    let _layers = st.layers_lock.write().await;
    prune_replaced(st).await;
    log_collection(collect_layers(st).await);
    tracing::info!(template = %name, ?tags, "tags removed");
    Ok(())
}

/// The tags of a template team `team` may use (its `name` or id),
/// `default` first (when it has a default build), each with the build row
/// it names.
pub(crate) async fn tags_of(
    st: &AppState,
    team: &str,
    template: &str,
) -> Result<Vec<(String, TemplateRow, i64)>, CatalogError> {
    let found = st
        .db
        .find_template(template.to_owned())
        .await?
        .filter(|row| !row.name.contains('@'));
    let not_found = || CatalogError::NotFound(template.to_owned());
    let default = match found {
        Some(row) if !visible(&row, team) => return Err(not_found()),
        Some(row) => Some(row),
        None if !owned_tags(st, team, template).await? => return Err(not_found()),
        None => None,
    };
    let name = default.as_ref().map_or(template, |row| row.name.as_str());
    let tags = st.db.list_tags(Some(name.to_owned())).await?;
    if default.is_none() && tags.is_empty() {
        return Err(not_found());
    }
    let rows = st.db.list_templates().await?;
    let mut out = Vec::new();
    if let Some(row) = &default {
        out.push((DEFAULT_TAG.to_owned(), row.clone(), row.created_at));
    }
    for tag in tags {
        if let Some(row) = rows.iter().find(|r| r.id == tag.template_id) {
            out.push((tag.tag, row.clone(), tag.created_at));
        }
    }
    Ok(out)
}
