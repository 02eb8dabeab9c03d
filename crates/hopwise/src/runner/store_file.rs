//! `--data-dir`: what the node's key-value store holds, kept on disk in a redb database, so a
//! restarted node serves its entries again and rejoins repair.
//!
//! Each change is a row (key and sub-key → writer, version, state, lifetime, value), written in
//! one transaction per batch of changes; redb's commits are atomic, so a crash mid-write leaves
//! the last committed state. Lifetimes are kept as wall-clock times, since protocol time starts
//! again with every run. Ephemeral entries are not kept: they die with their writer anyway.

use std::path::Path;

use anyhow::Context;
use hopwise_proto::kv::{Change, State, Stored};
use hopwise_proto::{Duration, Instant, NodeId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_entries");
/// The file inside the data directory.
pub const FILE_NAME: &str = "kv.redb";

/// A kept entry: key, sub-key and the stored copy.
pub type KeptEntry = (Vec<u8>, Vec<u8>, Stored);

pub struct StoreFile {
    db: Database,
}

/// Maps protocol time to wall-clock milliseconds and back, for this run.
#[derive(Debug, Clone, Copy)]
pub struct WallTime {
    pub now: Instant,
    pub unix_ms: u64,
}

impl WallTime {
    fn to_unix_ms(self, at: Instant) -> u64 {
        let offset_ms = (at.as_micros() - self.now.as_micros()) / 1_000;
        (self.unix_ms as i64 + offset_ms).max(1) as u64
    }

    fn to_instant(self, unix_ms: u64) -> Instant {
        let offset_ms = unix_ms as i64 - self.unix_ms as i64;
        Instant::from_micros(self.now.as_micros() + offset_ms * 1_000)
    }
}

fn row_key(key: &[u8], sub: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(1 + key.len() + sub.len());
    row.push(key.len() as u8);
    row.extend_from_slice(key);
    row.extend_from_slice(sub);
    row
}

fn encode(stored: &Stored, wall: WallTime) -> Vec<u8> {
    let mut row = Vec::with_capacity(26);
    row.extend_from_slice(stored.writer.as_bytes());
    row.extend_from_slice(&stored.version.to_be_bytes());
    row.push(stored.state.rank());
    let deadline = stored.deadline.map_or(0, |at| wall.to_unix_ms(at));
    row.extend_from_slice(&deadline.to_be_bytes());
    if let State::Live(value) = &stored.state {
        row.extend_from_slice(value);
    }
    row
}

fn decode(row: &[u8], value: &[u8], wall: WallTime) -> Option<KeptEntry> {
    let (&key_len, rest) = row.split_first()?;
    let (key, sub) = rest.split_at_checked(usize::from(key_len))?;
    let (writer, value) = value.split_first_chunk::<8>()?;
    let (version, value) = value.split_first_chunk::<8>()?;
    let (&state, value) = value.split_first()?;
    let (deadline, value) = value.split_first_chunk::<8>()?;
    let state = match state {
        0 => State::Live(value.to_vec()),
        1 => State::Deleted,
        2 => State::Expired,
        _ => return None,
    };
    let deadline = u64::from_be_bytes(*deadline);
    let stored = Stored {
        writer: NodeId::from_bytes(*writer),
        version: u64::from_be_bytes(*version),
        state,
        ephemeral: false,
        deadline: (deadline > 0).then(|| wall.to_instant(deadline)),
    };
    Some((key.to_vec(), sub.to_vec(), stored))
}

impl StoreFile {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// Everything kept, with lifetimes mapped to this run's time; entries whose lifetime ended
    /// while the node was down are left out (the next write of changes removes them).
    pub fn load(&self, wall: WallTime) -> anyhow::Result<Vec<KeptEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let mut entries = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            if let Some(entry) = decode(key.value(), value.value(), wall) {
                if entry
                    .2
                    .deadline
                    .is_none_or(|at| at > wall.now + Duration::ZERO)
                {
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }

    /// Writes a batch of changes in one transaction.
    pub fn write(&self, changes: &[Change], wall: WallTime) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            for change in changes {
                let row = row_key(&change.key, &change.sub);
                match &change.stored {
                    Some(stored) if !stored.ephemeral => {
                        table.insert(row.as_slice(), encode(stored, wall).as_slice())?;
                    }
                    _ => {
                        table.remove(row.as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_after_a_restart_with_their_lifetimes() {
        let dir = std::env::temp_dir().join(format!("hopwise-store-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first_run = WallTime {
            now: Instant::from_micros(5_000_000),
            unix_ms: 1_000_000,
        };
        let writer = NodeId::from_bytes([3; 8]);
        let live = |value: &[u8], deadline| Stored {
            writer,
            version: 7,
            state: State::Live(value.to_vec()),
            ephemeral: false,
            deadline,
        };
        let change = |sub: &[u8], stored| Change {
            key: b"k".to_vec(),
            sub: sub.to_vec(),
            stored,
        };
        {
            let file = StoreFile::open(&dir).unwrap();
            let in_a_minute = Some(first_run.now + Duration::from_secs(60));
            let ephemeral = Stored {
                ephemeral: true,
                ..live(b"gone", None)
            };
            file.write(
                &[
                    change(b"a", Some(live(b"kept", None))),
                    change(b"b", Some(live(b"ttl", in_a_minute))),
                    change(b"c", Some(ephemeral)),
                    change(b"d", Some(live(b"removed", None))),
                ],
                first_run,
            )
            .unwrap();
            file.write(&[change(b"d", None)], first_run).unwrap();
        }
        // Ten seconds later, in a run whose protocol time starts at zero.
        let second_run = WallTime {
            now: Instant::ZERO,
            unix_ms: 1_010_000,
        };
        let file = StoreFile::open(&dir).unwrap();
        let loaded = file.load(second_run).unwrap();
        let subs: Vec<&[u8]> = loaded.iter().map(|(_, sub, _)| sub.as_slice()).collect();
        assert_eq!(subs, vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(loaded[0].2, live(b"kept", None));
        assert_eq!(
            loaded[1].2.deadline,
            Some(Instant::ZERO + Duration::from_secs(50))
        );
        let later = WallTime {
            now: Instant::ZERO,
            unix_ms: 1_070_000,
        };
        assert_eq!(
            file.load(later).unwrap().len(),
            1,
            "an entry whose time ran out stays out"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
