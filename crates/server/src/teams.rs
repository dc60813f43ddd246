//! Teams: who owns what. Every key acts for one team, and every sandbox,
//! template (a build, a snapshot) and volume belongs to the team of the key
//! that made it. A key sees and acts on its own team's things only;
//! another team's are answered as absent (404), never as forbidden, so
//! that ids do not leak. Templates may be public: every team then starts
//! sandboxes from them (the built-in `base` is the default team's, public).
//!
//! The default team is made with the database; the first key is its. Its
//! keys may create teams (each with its first key) and list them: the
//! operator's team. There are no users: a team is its keys.

use crate::auth::Caller;
use crate::db::{DbError, KeyKind, TeamRow};
use crate::state::AppState;
use crate::{ids, time};

/// Why a team operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TeamError {
    /// The caller's team is not the default team.
    #[error("only keys of the default team may manage teams")]
    NotAdmin,
    /// The name is not a valid team name.
    #[error(
        "invalid team name '{0}': use 1 to 63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    /// A team has that name.
    #[error("team '{0}' already exists")]
    Exists(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Creates team `name` with its first API key, for a key of the default
/// team; returns the team and the key (shown only now).
pub(crate) async fn create(
    st: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<(TeamRow, String), TeamError> {
    if !caller.admin {
        return Err(TeamError::NotAdmin);
    }
    if !crate::catalog::valid_template_name(name) {
        return Err(TeamError::InvalidName(name.to_owned()));
    }
    let team = TeamRow {
        id: ids::new_build_id(),
        name: name.to_owned(),
        created_at: time::now_ms(),
        is_default: false,
    };
    if !st.db.insert_team(team.clone()).await? {
        return Err(TeamError::Exists(name.to_owned()));
    }
    let (key, _) = st
        .keys
        .create(&team.id, KeyKind::ApiKey, "first API key")
        .await?;
    tracing::info!(team = %team.id, name = %team.name, "team created");
    Ok((team, key))
}

/// The teams the caller may see: every team for a key of the default
/// team, else its own.
pub(crate) async fn list(st: &AppState, caller: &Caller) -> Result<Vec<TeamRow>, TeamError> {
    let mut teams = st.db.list_teams().await?;
    if !caller.admin {
        teams.retain(|t| t.id == caller.team);
    }
    Ok(teams)
}

/// The caller's team.
pub(crate) async fn of(st: &AppState, caller: &Caller) -> Result<TeamRow, TeamError> {
    st.db
        .list_teams()
        .await?
        .into_iter()
        .find(|t| t.id == caller.team)
        .ok_or_else(|| DbError::Task(format!("team {} of a valid key is gone", caller.team)).into())
}
