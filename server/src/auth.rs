//! A node's auth: the policy file the registry's `[auth]` names (users, roles, prefixes;
//! `corekv_types::auth`), read at start and again on SIGHUP. Every shard's core checks
//! requests against the policy in force (`core::access`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use corekv_types::auth::Policy;

/// See the module docs.
#[derive(Debug)]
pub struct NodeAuth {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    /// Counts reloads that put a policy in force.
    generation: AtomicU64,
}

impl NodeAuth {
    /// Reads and checks the policy file at `path`.
    pub fn load(path: &Path) -> Result<NodeAuth, String> {
        let policy = read(path)?;
        Ok(NodeAuth {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the file again and, when it is good, puts it in force (for open connections
    /// too); a bad file keeps the policy in force.
    pub fn reload(&self) -> Result<(), String> {
        let policy = read(&self.path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// How many reloads have put a policy in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

fn read(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Policy::parse(&text, &path.display().to_string())
}

/// How a policy file names a token: the lowercase hex SHA-256 digest of its bytes.
pub fn token_digest(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The node's auth from the registry's `[auth]`; `None` without it.
pub fn node_auth(
    registry: &corekv_types::registry::Registry,
) -> Result<Option<Arc<NodeAuth>>, String> {
    match &registry.auth {
        Some(settings) => NodeAuth::load(&settings.policy).map(|auth| Some(Arc::new(auth))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shows: token digests are SHA-256 in lowercase hex (what `sha256sum` prints).
    #[test]
    fn token_digests() {
        assert_eq!(
            token_digest("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
