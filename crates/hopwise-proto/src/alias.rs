//! Node aliases: names a node claims in the key-value store.
//!
//! An alias `NAME` is the key `alias/NAME`; each claimant holds the sub-key of its own id with
//! an ephemeral entry, so a name lists every node that claims it (anycast) and a claim goes
//! with its node. The store's owner rule means a node can only withdraw its own claim.

use std::fmt;

use crate::NodeId;

/// The longest alias.
pub const MAX_ALIAS: usize = 63;
const PREFIX: &[u8] = b"alias/";
const DIRECTORY_PREFIX: &[u8] = b"alias-names/";
/// The reverse directory (node to its aliases) is spread over this many keys, by the first
/// byte of the id, so no key holds every node's record.
pub const DIRECTORY_SHARDS: u8 = 16;

/// Why a name is not an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAlias {
    pub name: String,
    pub reason: &'static str,
}

impl fmt::Display for InvalidAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid alias {:?}: {} (an alias has 1 to {MAX_ALIAS} lowercase letters, digits, '-' and '.')",
            self.name, self.reason
        )
    }
}

impl std::error::Error for InvalidAlias {}

/// Checks that `name` is an alias: lowercase letters, digits, `-` and `.`, 1 to 63 characters.
pub fn validate(name: &str) -> Result<(), InvalidAlias> {
    let invalid = |reason| {
        Err(InvalidAlias {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_ALIAS {
        return invalid("it is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return invalid("it has a character that is not allowed");
    }
    Ok(())
}

/// The store key of an alias.
pub fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

/// The key of the directory shard that holds `id`'s aliases (its sub-key is [`sub`], its
/// value the aliases joined by commas).
pub fn directory_key(id: NodeId) -> Vec<u8> {
    directory_shard(id.as_bytes()[0] % DIRECTORY_SHARDS)
}

/// The key of one directory shard.
pub fn directory_shard(shard: u8) -> Vec<u8> {
    [DIRECTORY_PREFIX, format!("{shard:02}").as_bytes()].concat()
}

/// The sub-key a claimant writes: its own id.
pub fn sub(id: NodeId) -> Vec<u8> {
    id.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["knoxville", "new-york", "a", "db.eu-1", &"x".repeat(63)] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        for bad in ["", "Knoxville", "new york", "café", "a/b", &"x".repeat(64)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(key("db"), b"alias/db");
    }
}
