//! Hash tables keyed with a per-node secret.
//!
//! Every table here is filled with ids that strangers choose, so the hash is keyed: without the
//! key an attacker cannot pick ids that collide. The key comes from the node's seed, not from the
//! operating system, so a simulation stays deterministic; insertion-ordered maps keep iteration
//! order independent of the key. foldhash is several times faster than the standard SipHash on
//! these small keys, which matters for tables of thousands of routes.

use std::hash::BuildHasher;

use foldhash::fast::{FixedState, FoldHasher};
use indexmap::{IndexMap, IndexSet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type Map<K, V> = IndexMap<K, V, HashKey>;
pub type Set<K> = IndexSet<K, HashKey>;

/// The secret that keys a node's tables: a foldhash seed, copied into every table.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashKey(u64);

impl BuildHasher for HashKey {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        FixedState::with_seed(self.0).build_hasher()
    }
}

/// The hash key of a node with this seed. It is drawn from its own ChaCha stream, so taking it
/// leaves the node's random sequence untouched.
pub fn hash_key(rng_seed: u64) -> HashKey {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    rng.set_stream(1);
    HashKey(rng.next_u64())
}
