//! An ordered environment without duplicate names.

use std::collections::HashMap;

/// Ordered `(name, value)` pairs; setting an existing name replaces its
/// value in place, so the first position of a name is kept and no name
/// ever appears twice.
#[derive(Debug, Clone, Default)]
pub struct EnvList {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl EnvList {
    /// Sets `name` to `value`, replacing any earlier value.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.index.get(name) {
            Some(&i) => value.clone_into(&mut self.vars[i].1),
            None => {
                self.index.insert(name.to_owned(), self.vars.len());
                self.vars.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.vars[i].1.as_str())
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The pairs, in order.
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.vars
    }
}
