//! The list index: which tasks exist, and when each was created.
//!
//! Dapr's state query API needs RedisJSON and RediSearch (or another query-capable store); plain
//! Redis and the in-memory store only get, set and delete keys. So the service keeps its own
//! index: [`SHARDS`] JSON documents `tasks-index-00` … `tasks-index-63`, each mapping the ids
//! of the tasks whose id hashes to it to their creation time in microseconds.
//!
//! - A create changes one shard (chosen by a stable hash of the id) with an ETag-guarded
//!   read-modify-write, so concurrent creates contend on 64 keys, not one.
//! - A list reads all shards in one bulk call, merges and sorts them by (creation time, id):
//!   oldest first, a stable order in which new tasks append at the end, so paging with a
//!   keyset token never skips or repeats a task.
//! - Entries hold only facts that never change (id, creation time). Status and other fields are
//!   read from the tasks themselves, so the index never disagrees with a task.
//!
//! Limits: every list reads the whole index (about 60 bytes per task, in 8 concurrent reads to
//! stay under daprd's 4 MiB message size), and every create rewrites one shard (1/64 of it).
//! That is comfortable up to roughly 100,000 tasks (a list then moves ~6 MB); beyond that, use
//! a state store with query support. Tasks written by another implementation without an index
//! entry (the Python original kept none) are readable by id but not listed. The shard count is
//! part of the stored format: changing it needs a re-index.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{SidecarError, StateStore};
use crate::domain::TaskId;

/// Number of index documents.
pub const SHARDS: u32 = 64;
/// Shards per bulk read: 8 shards stay under daprd's 4 MiB message limit up to ~500,000 tasks.
const SHARDS_PER_READ: usize = 8;

/// One indexed task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexEntry {
    /// Microseconds since the Unix epoch (first, so entries sort by creation time).
    pub created_micros: i64,
    pub id: TaskId,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Shard {
    tasks: BTreeMap<String, i64>,
}

#[derive(Debug, Clone)]
pub struct TaskIndex {
    state: StateStore,
}

impl TaskIndex {
    pub fn new(state: StateStore) -> Self {
        Self { state }
    }

    pub async fn add(&self, id: &TaskId, created_at: DateTime<Utc>) -> Result<(), SidecarError> {
        let micros = created_at.timestamp_micros();
        self.state
            .update_document(&shard_key(id), |shard: &mut Shard| {
                let changed = shard.tasks.insert(id.to_string(), micros) != Some(micros);
                (changed, ())
            })
            .await
    }

    pub async fn remove(&self, id: &TaskId) -> Result<(), SidecarError> {
        self.state
            .update_document(&shard_key(id), |shard: &mut Shard| {
                (shard.tasks.remove(id.as_str()).is_some(), ())
            })
            .await
    }

    /// Every entry, oldest first.
    pub async fn all(&self) -> Result<Vec<IndexEntry>, SidecarError> {
        // daprd sends no gRPC message over 4 MiB (its --max-body-size), so the shards are read
        // in groups, concurrently, rather than in one bulk call.
        let mut reads = tokio::task::JoinSet::new();
        let keys: Vec<String> = (0..SHARDS).map(shard_key_of).collect();
        for group in keys.chunks(SHARDS_PER_READ) {
            let state = self.state.clone();
            let group = group.to_vec();
            reads.spawn(async move {
                let stored = state.get_many(&group).await?;
                Ok::<_, SidecarError>(group.into_iter().zip(stored).collect::<Vec<_>>())
            });
        }
        let mut shards = Vec::with_capacity(keys.len());
        while let Some(read) = reads.join_next().await {
            let read = read.map_err(|e| SidecarError::Failed {
                code: tonic::Code::Internal,
                message: format!("reading the list index: {e}"),
            })?;
            shards.extend(read?);
        }
        let mut entries = Vec::new();
        for (key, stored) in &shards {
            let Some(stored) = stored else { continue };
            let shard: Shard = super::state::decode(key, &stored.value)?;
            for (id, created_micros) in shard.tasks {
                // An id that does not parse was not written by this service; skip it.
                if let Ok(id) = TaskId::parse(&id) {
                    entries.push(IndexEntry { created_micros, id });
                }
            }
        }
        entries.sort_unstable();
        Ok(entries)
    }
}

fn shard_key(id: &TaskId) -> String {
    shard_key_of(shard_of(id))
}

fn shard_key_of(shard: u32) -> String {
    format!("tasks-index-{shard:02}")
}

/// FNV-1a: stable across builds and platforms (std's hasher is not), so a task's shard never
/// moves.
fn shard_of(id: &TaskId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let id = TaskId::parse("3f1c9a9e-2b7d-4e7c-9a51-0c0b5f6d2a11").unwrap();
        assert_eq!(shard_of(&id), shard_of(&id.clone()));
        assert_eq!(shard_key_of(7), "tasks-index-07");
        let mut used = std::collections::HashSet::new();
        for _ in 0..2000 {
            used.insert(shard_of(&TaskId::generate()));
        }
        assert_eq!(used.len(), SHARDS as usize, "uuids reach every shard");
    }

    #[test]
    fn entries_sort_by_creation_then_id() {
        let a = IndexEntry {
            created_micros: 2,
            id: TaskId::parse("a").unwrap(),
        };
        let b = IndexEntry {
            created_micros: 1,
            id: TaskId::parse("b").unwrap(),
        };
        let c = IndexEntry {
            created_micros: 2,
            id: TaskId::parse("0").unwrap(),
        };
        let mut entries = vec![a.clone(), b.clone(), c.clone()];
        entries.sort();
        assert_eq!(entries, [b, c, a]);
    }
}
