//! Users, roles and what they may touch: the policy file the registry's `[auth]` section
//! names, loaded and checked the same way by every node (and reloaded on SIGHUP).
//!
//! ```toml
//! [[role]]
//! name = "app-reader"
//! read = ["app/"]           # key prefixes ("" is every key)
//!
//! [[role]]
//! name = "app-writer"
//! write = ["app/"]          # write implies read of the same keys
//!
//! [[role]]
//! name = "operator"
//! admin = true              # membership, leadership, status, backup
//!
//! [[role]]
//! name = "gateway"
//! proxy = true              # may act for any other user (the HTTP gateway)
//!
//! [[user]]
//! name = "billing"          # a client certificate's subject common name, or a token's user
//! roles = ["app-writer"]
//! tokens = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! ```
//!
//! A connection whose user has `proxy` may name, in its hello, another user to act for: every
//! request is then checked against that user's rights alone. `corekv gateway` does this for
//! the HTTP clients whose certificates it verified; give its user no other rights.
//!
//! A key range is readable when one prefix the user may read holds all of it (so a scan or a
//! watch of a range is allowed or refused whole; it is never cut down silently).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// The policy file's text form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "role")]
    roles: Vec<RoleEntry>,
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    proxy: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tokens: Vec<String>,
}

/// What one user may do: the union of its roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Prefixes the user may read (those it may write included).
    pub read: Vec<Vec<u8>>,
    /// Prefixes the user may write.
    pub write: Vec<Vec<u8>>,
    /// Membership, leadership transfers, status and backups.
    pub admin: bool,
    /// May act for any other user (see the module docs).
    pub proxy: bool,
}

impl Access {
    /// Whether the user may read `key`.
    pub fn can_read(&self, key: &[u8]) -> bool {
        self.read.iter().any(|p| key.starts_with(p))
    }

    /// Whether the user may write `key`.
    pub fn can_write(&self, key: &[u8]) -> bool {
        self.write.iter().any(|p| key.starts_with(p))
    }

    /// Whether the user may read every key in `[start, end)` (`end` `None`: no end): one
    /// readable prefix must hold the whole range.
    pub fn can_read_range(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        self.read.iter().any(|p| prefix_holds(p, start, end))
    }

    /// Whether the user may write anything at all.
    pub fn writes_anything(&self) -> bool {
        !self.write.is_empty()
    }
}

/// Whether every key in `[start, end)` starts with `prefix`: the range starts at or after
/// the prefix and ends at or before the first key past every key with it.
pub fn prefix_holds(prefix: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    if start < prefix {
        return false;
    }
    match (prefix_end(prefix), end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(limit), Some(end)) => end <= limit.as_slice(),
    }
}

/// The smallest key greater than every key that starts with `prefix`; `None` when there is
/// none (an empty prefix, or one of 0xff bytes only).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    users: HashMap<String, Access>,
    /// Token digest (lowercase hex SHA-256) → user.
    tokens: HashMap<String, String>,
}

impl Policy {
    /// Parses and checks a policy file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Policy, String> {
        let fail = |reason: String| format!("{path}: {reason}");
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| fail(e.message().trim().to_string()))?;
        let mut roles: BTreeMap<&str, &RoleEntry> = BTreeMap::new();
        for role in &file.roles {
            if role.name.is_empty() {
                return Err(fail("a role without a name".into()));
            }
            if roles.insert(&role.name, role).is_some() {
                return Err(fail(format!("role {:?} is defined twice", role.name)));
            }
        }
        let mut policy = Policy::default();
        for user in &file.users {
            if user.name.is_empty() {
                return Err(fail("a user without a name".into()));
            }
            let mut access = Access::default();
            for name in &user.roles {
                let role = roles.get(name.as_str()).ok_or_else(|| {
                    fail(format!("user {:?} has role {name:?}, which is not defined", user.name))
                })?;
                access.write.extend(role.write.iter().map(|p| p.as_bytes().to_vec()));
                access
                    .read
                    .extend(role.read.iter().chain(&role.write).map(|p| p.as_bytes().to_vec()));
                access.admin |= role.admin;
                access.proxy |= role.proxy;
            }
            for token in &user.tokens {
                let digest = token
                    .strip_prefix("sha256:")
                    .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| {
                        fail(format!(
                            "user {:?}: a token must be written as sha256:<64 hex digits> (its \
                             SHA-256 digest, never the token itself)",
                            user.name
                        ))
                    })?
                    .to_ascii_lowercase();
                if let Some(other) = policy.tokens.insert(digest, user.name.clone()) {
                    return Err(fail(format!(
                        "a token of user {:?} is listed again (for user {other:?})",
                        user.name
                    )));
                }
            }
            if policy.users.insert(user.name.clone(), access).is_some() {
                return Err(fail(format!("user {:?} is defined twice", user.name)));
            }
        }
        Ok(policy)
    }

    /// What user `name` may do; `None` for a user the policy does not know.
    pub fn user(&self, name: &str) -> Option<&Access> {
        self.users.get(name)
    }

    /// The user a token's digest (lowercase hex SHA-256) belongs to.
    pub fn token_user(&self, digest: &str) -> Option<&str> {
        self.tokens.get(digest).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[[role]]
name = "reader"
read = ["app/"]

[[role]]
name = "writer"
write = ["logs/"]

[[role]]
name = "ops"
admin = true

[[role]]
name = "gateway"
proxy = true

[[user]]
name = "gw"
roles = ["gateway"]

[[user]]
name = "app"
roles = ["reader", "writer"]
tokens = ["sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"]

[[user]]
name = "root"
roles = ["ops"]
"#;

    // Shows: roles add up per user, write implies read, tokens are kept by digest, and a
    // range is readable only inside one readable prefix.
    #[test]
    fn users_roles_and_ranges() {
        let policy = Policy::parse(POLICY, "p.toml").unwrap();
        let app = policy.user("app").unwrap();
        assert!(app.can_read(b"app/x") && !app.can_write(b"app/x"));
        assert!(app.can_read(b"logs/1") && app.can_write(b"logs/1"));
        assert!(!app.can_read(b"other/y") && !app.admin);
        assert!(policy.user("root").unwrap().admin);
        assert!(!policy.user("root").unwrap().proxy && !app.proxy);
        let gw = policy.user("gw").unwrap();
        assert!(gw.proxy && !gw.admin && !gw.can_read(b"app/x"));
        assert!(policy.user("nobody").is_none());
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(policy.token_user(digest), Some("app"));
        assert!(app.can_read_range(b"app/", Some(b"app0")));
        assert!(app.can_read_range(b"app/m", Some(b"app/n")));
        assert!(!app.can_read_range(b"app/", None));
        assert!(!app.can_read_range(b"ap", Some(b"app0")));
        assert!(!app.can_read_range(b"app/", Some(b"app1")));
        assert!(!app.can_read_range(b"", None));
    }

    // Shows: the end of a prefix, with carries past 0xff bytes, and none for an empty or
    // all-0xff prefix (every key, or every key from there on).
    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"app/"), Some(b"app0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        assert!(prefix_holds(b"", b"", None));
        assert!(prefix_holds(b"\xff", b"\xff\x01", None));
    }

    // Shows: each kind of mistake in a policy file is refused with a line naming the file.
    #[test]
    fn refuses_bad_policies() {
        let cases = [
            (POLICY.replace("roles = [\"ops\"]", "roles = [\"nope\"]"), "not defined"),
            (POLICY.replace("name = \"writer\"", "name = \"reader\""), "defined twice"),
            (POLICY.replace("name = \"root\"", "name = \"app\""), "defined twice"),
            (POLICY.replace("sha256:9F86", "9F86"), "sha256:<64 hex digits>"),
            (POLICY.replace("admin = true", "admin = true\nsuper = true"), "unknown field"),
        ];
        for (text, expected) in cases {
            let error = Policy::parse(&text, "p.toml").unwrap_err();
            assert!(error.starts_with("p.toml: ") && error.contains(expected), "{error}");
        }
    }
}
