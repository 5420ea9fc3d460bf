//! `policy/` — what the operator asked for per path: pins and TTLs
//! (`mod.rs`, persisted in `policies.json`) and per-mount quotas
//! (`quota.rs`, each shard's share).
//!
//! Owns: the rules and the answer to "what applies to this path", and a
//! shard's per-mount accounting. Must never: walk the namespace, talk to
//! clients, or decide eviction beyond a quota (the store's own capacity
//! eviction stays in `store/`).
//!
//! Data policies per path prefix: pinned (never evicted) and TTL (cached
//! blocks expire a while after they were cached). Rules persist in
//! `cache-dir/stoker-v1/policies.json` (written to a temp file, fsynced,
//! renamed), so they survive restarts.
//!
//! A rule applies to its path and everything under it. The policy table
//! only answers "what applies to this path"; shards enforce it.

pub mod quota;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub prefix: String,
    #[serde(default)]
    pub pinned: bool,
    /// Seconds a block may stay cached; None = no TTL.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// What applies to one path: pinned if any covering rule pins, the shortest TTL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub pinned: bool,
    pub ttl: Option<Duration>,
}

pub struct Policies {
    file: PathBuf,
    rules: RwLock<Vec<Rule>>,
}

/// `prefix` covers `path` if equal or a directory ancestor of it.
pub fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Policies {
    pub fn load(file: &Path) -> std::io::Result<Policies> {
        let rules = match std::fs::read(file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Policies { file: file.to_path_buf(), rules: RwLock::new(rules) })
    }

    fn save(&self, rules: &[Rule]) -> std::io::Result<()> {
        crate::durable::write(&self.file, &serde_json::to_vec_pretty(rules).expect("rules serialize"))
    }

    /// Change the rule for `prefix` with `f` and persist; rules left with
    /// nothing set are dropped.
    pub fn update(&self, prefix: &str, f: impl FnOnce(&mut Rule)) -> std::io::Result<()> {
        let mut rules = self.rules.write();
        let mut next = rules.clone();
        match next.iter_mut().find(|r| r.prefix == prefix) {
            Some(r) => f(r),
            None => {
                let mut r = Rule { prefix: prefix.to_string(), pinned: false, ttl_secs: None };
                f(&mut r);
                next.push(r);
            }
        }
        next.retain(|r| r.pinned || r.ttl_secs.is_some());
        self.save(&next)?;
        *rules = next;
        Ok(())
    }

    pub fn effective(&self, path: &str) -> Effective {
        let mut e = Effective::default();
        for r in self.rules.read().iter().filter(|r| covers(&r.prefix, path)) {
            e.pinned |= r.pinned;
            if let Some(t) = r.ttl_secs {
                let t = Duration::from_secs(t);
                e.ttl = Some(e.ttl.map_or(t, |old| old.min(t)));
            }
        }
        e
    }

    pub fn rules(&self) -> Vec<Rule> {
        self.rules.read().clone()
    }

    /// True when some rule (pin or TTL) covers anything under `path`, or `path` itself.
    pub fn any_under(&self, path: &str) -> bool {
        self.rules.read().iter().any(|r| covers(&r.prefix, path) || covers(path, &r.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_to_prefixes_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policies.json");
        let p = Policies::load(&f).unwrap();
        p.update("/m/train", |r| r.pinned = true).unwrap();
        p.update("/m", |r| r.ttl_secs = Some(60)).unwrap();
        p.update("/m/train/tmp", |r| r.ttl_secs = Some(5)).unwrap();
        assert_eq!(p.effective("/m/train/a.jpg"), Effective { pinned: true, ttl: Some(Duration::from_secs(60)) });
        assert_eq!(p.effective("/m/train/tmp/x").ttl, Some(Duration::from_secs(5)));
        assert_eq!(p.effective("/m/trainee/x"), Effective { pinned: false, ttl: Some(Duration::from_secs(60)) });
        assert_eq!(p.effective("/other/x"), Effective::default());

        let p = Policies::load(&f).unwrap();
        assert!(p.effective("/m/train/a.jpg").pinned, "pin must survive a reload");
        p.update("/m/train", |r| r.pinned = false).unwrap();
        assert_eq!(p.rules().len(), 2, "an empty rule is dropped");
        assert!(!Policies::load(&f).unwrap().effective("/m/train/a").pinned);
    }
}
