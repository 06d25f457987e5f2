//! The list index: which tasks exist, and when each was created.
//!
//! Dapr's state query API needs RedisJSON and RediSearch (or another query-capable store); plain
//! Redis and the in-memory store only get, set and delete keys. So the service keeps its own
//! index: [`SHARDS`] JSON documents `tasks-index-00` … `tasks-index-63`, each mapping the ids
//! of the tasks whose id hashes to it to their creation time in microseconds.
//!
//! - A create changes one shard (chosen by a stable hash of the id) with an ETag-guarded
//!   read-modify-write, so concurrent creates contend on 64 keys, not one.
//! - A list reads all shards and keeps the oldest entries after its page token, by (creation
//!   time, id): a stable order in which new tasks append at the end, so paging with a keyset
//!   token never skips or repeats a task. Shards are parsed entry by entry into a bounded
//!   selection, so a list holds about a page of entries in memory, whatever the index size.
//! - Entries hold only facts that never change (id, creation time). Status and other fields are
//!   read from the tasks themselves, so the index never disagrees with a task.
//!
//! Limits: every list reads the whole index over the wire (about 60 bytes per task, in 8
//! concurrent reads to stay under daprd's 4 MiB message size), and every create rewrites one shard (1/64 of it).
//! That is comfortable up to roughly 100,000 tasks (a list then moves ~6 MB); beyond that, use
//! a state store with query support. Tasks written by another implementation without an index
//! entry (the Python original kept none) are readable by id but not listed. The shard count is
//! part of the stored format: changing it needs a re-index.

use std::collections::{BTreeMap, BinaryHeap};

use chrono::{DateTime, Utc};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeSeed, MapAccess, Visitor},
};

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

    /// The (up to) `limit` oldest entries after `cursor`, oldest first, and whether more follow.
    ///
    /// Shards are parsed as they arrive, keeping only the best `limit` candidates, so a list
    /// holds a page's worth of entries in memory, not the whole index.
    pub async fn next_after(
        &self,
        cursor: Option<&IndexEntry>,
        limit: usize,
    ) -> Result<(Vec<IndexEntry>, bool), SidecarError> {
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
        let mut selection = Selection::new(cursor, limit);
        while let Some(read) = reads.join_next().await {
            let read = read.map_err(|e| SidecarError::Failed {
                code: tonic::Code::Internal,
                message: format!("reading the list index: {e}"),
            })??;
            for (key, stored) in read {
                if let Some(stored) = stored {
                    selection.offer_shard(&key, &stored.value)?;
                }
            }
        }
        Ok(selection.finish())
    }
}

/// The `limit` smallest entries after a cursor, chosen while shards stream past.
struct Selection<'c> {
    cursor: Option<(i64, &'c str)>,
    limit: usize,
    /// A max-heap: its top is the worst entry kept, the first to go.
    kept: BinaryHeap<IndexEntry>,
    more: bool,
}

impl<'c> Selection<'c> {
    fn new(cursor: Option<&'c IndexEntry>, limit: usize) -> Self {
        Self {
            cursor: cursor.map(|c| (c.created_micros, c.id.as_str())),
            limit: limit.max(1),
            kept: BinaryHeap::with_capacity(limit.max(1) + 1),
            more: false,
        }
    }

    fn offer(&mut self, created_micros: i64, id: &str) {
        if self
            .cursor
            .is_some_and(|cursor| (created_micros, id) <= cursor)
        {
            return;
        }
        if self.kept.len() == self.limit {
            self.more = true;
            let worst = self.kept.peek().map(|w| (w.created_micros, w.id.as_str()));
            if worst.is_some_and(|worst| (created_micros, id) >= worst) {
                return;
            }
            self.kept.pop();
        }
        // An id that does not parse was not written by this service; skip it.
        if let Ok(id) = TaskId::parse(id) {
            self.kept.push(IndexEntry { created_micros, id });
        }
    }

    /// Visits one stored shard's entries without building the map.
    fn offer_shard(&mut self, key: &str, bytes: &[u8]) -> Result<(), SidecarError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        ShardSeed(self)
            .deserialize(&mut deserializer)
            .map_err(|e| SidecarError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    fn finish(self) -> (Vec<IndexEntry>, bool) {
        (self.kept.into_sorted_vec(), self.more)
    }
}

/// `{"tasks": {"<id>": <micros>, ...}}`, fed entry by entry into a [`Selection`].
struct ShardSeed<'s, 'c>(&'s mut Selection<'c>);

impl<'de> DeserializeSeed<'de> for ShardSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ShardSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list-index shard document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if field == "tasks" {
                map.next_value_seed(EntriesSeed(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'s, 'c>(&'s mut Selection<'c>);

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of task ids to creation times")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Ids are plain ASCII, so they borrow from the stored bytes: no allocation per entry.
        while let Some((id, created_micros)) = map.next_entry::<&'de str, i64>()? {
            self.0.offer(created_micros, id);
        }
        Ok(())
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
    fn selection_keeps_the_oldest_after_the_cursor() {
        let cursor = IndexEntry {
            created_micros: 2,
            id: TaskId::parse("b").unwrap(),
        };
        let mut selection = Selection::new(Some(&cursor), 2);
        let shard = br#"{"tasks":{"a":1,"b":2,"c":2,"d":5,"e":3,"f":4}}"#;
        selection.offer_shard("tasks-index-00", shard).unwrap();
        let (entries, more) = selection.finish();
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["c", "e"], "after (2, b): (2, c), then (3, e)");
        assert!(more, "(4, f) and (5, d) follow");

        let mut everything = Selection::new(None, 10);
        everything.offer_shard("k", shard).unwrap();
        let (all, more) = everything.finish();
        assert_eq!(all.len(), 6);
        assert!(!more);
        assert!(Selection::new(None, 1).offer_shard("k", b"[]").is_err());
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
