//! Users and groups as the sandbox's `/etc/passwd` and `/etc/group` say.

use std::path::Path;

use crate::EnvError;

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// The accounts of one sandbox root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// `/etc/passwd` entries, in file order.
    pub passwd: Vec<PasswdEntry>,
    /// `/etc/group` entries, in file order.
    pub group: Vec<GroupEntry>,
}

/// A user resolved against [`Accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, the primary one first.
    pub groups: Vec<u32>,
    /// Login name, when known.
    pub name: Option<String>,
    /// Home directory: the passwd entry's, else `/root` for uid 0, else `/`.
    pub home: String,
}

impl Accounts {
    /// Reads `etc/passwd` and `etc/group` under `root`; a missing file is
    /// an empty one (images without them run everything as numeric ids).
    pub fn load(root: &Path) -> std::io::Result<Accounts> {
        let read = |rel: &str| match std::fs::read_to_string(root.join(rel)) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        };
        Ok(Accounts::parse(&read("etc/passwd")?, &read("etc/group")?))
    }

    /// Parses the contents of `/etc/passwd` and `/etc/group`. Malformed
    /// lines and comments are skipped, as libc does.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let passwd = passwd
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 7 || f[0].is_empty() {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].to_owned(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_owned(),
                    shell: f[6].to_owned(),
                })
            })
            .collect();
        let group = group
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() < 4 || f[0].is_empty() {
                    return None;
                }
                Some(GroupEntry {
                    name: f[0].to_owned(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect();
        Accounts { passwd, group }
    }

    /// Resolves `name`, `uid`, `name:group`, `uid:gid` (any mix), as
    /// `docker run --user` does: a numeric uid need not exist (it then has
    /// gid 0 unless one is given), a name must.
    pub fn resolve_user(&self, spec: &str) -> Result<ResolvedUser, EnvError> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
            return Err(EnvError::InvalidUser {
                user: spec.to_owned(),
            });
        }
        // `root` is uid 0 even in an image without /etc/passwd: clients
        // (the E2B SDKs among them) name it on every call.
        if user_part == "root" && !self.passwd.iter().any(|e| e.name == "root") {
            return self
                .resolve_user(&match group_part {
                    Some(g) => format!("0:{g}"),
                    None => "0".to_owned(),
                })
                .map(|u| ResolvedUser {
                    name: Some("root".to_owned()),
                    ..u
                });
        }
        let entry = match user_part.parse::<u32>() {
            Ok(uid) => self.passwd.iter().find(|e| e.uid == uid),
            Err(_) => Some(
                self.passwd
                    .iter()
                    .find(|e| e.name == user_part)
                    .ok_or_else(|| EnvError::UnknownUser {
                        user: user_part.to_owned(),
                    })?,
            ),
        };
        let uid = entry.map_or_else(|| user_part.parse().unwrap_or(0), |e| e.uid);
        let gid = match group_part {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.group
                        .iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| EnvError::UnknownGroup {
                            group: g.to_owned(),
                        })?
                        .gid
                }
            },
            None => entry.map_or(0, |e| e.gid),
        };
        let mut groups = vec![gid];
        if let Some(e) = entry {
            for g in &self.group {
                if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        let home = match entry {
            Some(e) if !e.home.is_empty() => e.home.clone(),
            _ if uid == 0 => "/root".to_owned(),
            _ => "/".to_owned(),
        };
        Ok(ResolvedUser {
            uid,
            gid,
            groups,
            name: entry.map(|e| e.name.clone()),
            home,
        })
    }
}
