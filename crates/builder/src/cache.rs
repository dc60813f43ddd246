//! The layer cache: what each filesystem step produced, keyed by everything
//! that step's result depends on.
//!
//! A step's key is the SHA-256 of its parent's key (which chains back to the
//! base's layers), the step as it will run (values expanded), the build
//! state it sees (environment, build arguments, user, working directory,
//! shell) and a digest of the files it reads from the context. An entry
//! records the layer's diff id (or that the step changed nothing); it is
//! used only while that layer is still in the store. Entries are small
//! files under `DATA_DIR/build-cache/`, written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::BuildError;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// One cached result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The layer the step produced; `None` if it changed nothing.
    pub diff_id: Option<String>,
}

impl Cache {
    /// Opens (creating) the cache at `dir`.
    pub fn open(dir: &Path) -> Result<Cache, BuildError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BuildError::Io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry for `key`, if any (an unreadable entry counts as none).
    pub fn get(&self, key: &str) -> Option<Entry> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records `entry` under `key`.
    pub fn put(&self, key: &str, entry: &Entry) -> Result<(), BuildError> {
        let json = serde_json::to_vec(entry).expect("cache entries serialize");
        let tmp = self.dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, self.path(key)))
            .map_err(|e| BuildError::Io(format!("cannot write the build cache: {e}")))
    }

    /// Diff ids every entry refers to (layers the cache keeps alive).
    pub fn referenced_layers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<Entry>(&t).ok())
            .filter_map(|e| e.diff_id)
            .collect()
    }

    /// Removes every entry; returns how many there were.
    pub fn clear(&self) -> Result<usize, BuildError> {
        let mut n = 0;
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| BuildError::Io(format!("cannot list {}: {e}", self.dir.display())))?;
        for e in entries.filter_map(Result::ok) {
            if std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The key of the base: its layers, in order.
pub fn base_key(layers: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"hutch-build-base\0");
    for l in layers {
        h.update(l.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The key of a step: parent key plus a JSON description of everything
/// the step's result depends on.
pub fn step_key(parent: &str, what: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update([0]);
    h.update(what.to_string().as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_and_entries_round_trip() {
        let base = base_key(&["sha256:a".into()]);
        assert_ne!(base, base_key(&["sha256:b".into()]));
        let k1 = step_key(&base, &serde_json::json!({"run": "x"}));
        assert_ne!(k1, step_key(&base, &serde_json::json!({"run": "y"})));
        assert_ne!(k1, step_key(&k1, &serde_json::json!({"run": "x"})));

        let t = tempfile::tempdir().unwrap();
        let cache = Cache::open(t.path()).unwrap();
        assert!(cache.get(&k1).is_none());
        let e = Entry {
            diff_id: Some("sha256:c".into()),
        };
        cache.put(&k1, &e).unwrap();
        assert_eq!(cache.get(&k1), Some(e));
        assert_eq!(cache.referenced_layers(), vec!["sha256:c".to_owned()]);
        assert_eq!(cache.clear().unwrap(), 1);
        assert!(cache.get(&k1).is_none());
    }
}
