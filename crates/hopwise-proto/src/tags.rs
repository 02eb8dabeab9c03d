//! Node tags (`hopwise node --tags a,b`) and who wants to connect to them (`--connect-tags x`).
//!
//! Tags travel as a 64-bit Bloom filter: 3 bits per tag, from an unkeyed hash every node
//! computes alike. A node's probes carry its own filter, gossip entries carry what the gossiper
//! knows, and nothing at all is sent for untagged nodes. A filter can claim a tag it lacks (for
//! a node with 2 tags, about 0.07% of other tags match by accident); the price is one routing
//! link too many, never a missed match.

use blake2::{Blake2s256, Digest};

/// Tags a node may carry, and the longest tag, in bytes.
pub const MAX_TAGS: usize = 8;
pub const MAX_TAG_LEN: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TagFilter(pub u64);

impl TagFilter {
    pub const NONE: TagFilter = TagFilter(0);

    pub fn of<S: AsRef<str>>(tags: &[S]) -> Self {
        Self(
            tags.iter()
                .fold(0, |bits, tag| bits | tag_bits(tag.as_ref())),
        )
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a node with this filter (probably) carries every tag of `wanted`.
    pub fn covers(self, wanted: TagFilter) -> bool {
        !wanted.is_empty() && self.0 & wanted.0 == wanted.0
    }
}

fn tag_bits(tag: &str) -> u64 {
    let hash = Blake2s256::digest(tag.as_bytes());
    hash[..3]
        .iter()
        .fold(0, |bits, byte| bits | 1 << (byte % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_covers_its_tags_and_rarely_others() {
        let filter = TagFilter::of(&["db", "eu-west"]);
        assert!(filter.covers(TagFilter::of(&["db"])));
        assert!(filter.covers(TagFilter::of(&["eu-west"])));
        assert!(!TagFilter::NONE.covers(TagFilter::of(&["db"])));
        assert!(!filter.covers(TagFilter::NONE), "no tag wanted is no match");
        let accidental = (0..10_000)
            .filter(|i| filter.covers(TagFilter::of(&[format!("tag-{i}")])))
            .count();
        assert!(accidental < 30, "{accidental} of 10,000 other tags match");
    }
}
