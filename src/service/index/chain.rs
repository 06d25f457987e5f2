//! One list as a chain of leaves, kept consistent with nothing but ETag-guarded single-key
//! writes (a B-link list: every leaf knows its right neighbour, so a reader or writer that lands
//! on the wrong leaf moves right until the position is in range).
//!
//! - **Split** (a leaf over [`CAPACITY`]): the new right leaf is written first, then the old leaf
//!   is cut down and linked to it. A crash in between leaves an unlinked leaf nobody reads.
//! - **Merge** (a leaf and its right neighbour together under [`MERGE_AT`]): the right leaf is
//!   frozen (`merged_into`), then the left leaf takes its entries and link, then the frozen leaf
//!   is deleted. Whoever meets a frozen leaf before the last step finishes the merge; readers
//!   read a frozen leaf's entries as long as its left neighbour still links to it.
//!
//! At no point is an entry reachable by nobody, so a crash between any two writes leaves every
//! entry listed. The directory (first position of every leaf) only speeds up finding a leaf: it
//! may be stale, and is corrected as leaves are found missing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    IndexError,
    leaf::{HEAD, Leaf, LeafId, MERGE_AT, Op, Position},
};
use crate::{
    domain::{TaskId, Versioned},
    service::{
        backoff,
        ports::{Condition, KeyValueStore, StoreError, Write},
    },
};

/// Steps (leaf reads) one search may take before the chain is declared unusable.
const MAX_STEPS: usize = 256;
/// Lost write races one batch may have before it gives up.
const MAX_CONFLICTS: u32 = 40;
/// A directory reload is not repeated more often than this.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(1);
/// Moving right this often in one search means the directory misses recent splits.
const STALE_AFTER_HOPS: usize = 8;
/// Leaves kept read ahead per list (a few kilobytes each).
const READ_AHEAD: usize = 4;
/// How long a leaf's size as last seen is trusted to rule out a merge without reading it.
const SIZE_FRESH: Duration = Duration::from_secs(5);
/// Leaf sizes remembered per list; beyond this, only the fresh ones are kept.
const MAX_SIZES: usize = 1024;

/// A leaf as read, with the ETag to write it back under (`None`: not stored yet).
#[derive(Debug, Clone)]
pub(crate) struct StoredLeaf {
    pub(crate) id: LeafId,
    pub(crate) leaf: Leaf,
    pub(crate) etag: Option<String>,
}

#[derive(Default)]
struct Directory {
    leaves: BTreeMap<Position, LeafId>,
    loaded_at: Option<Instant>,
}

#[derive(Serialize, Deserialize, Default)]
struct DirectoryDocument {
    leaves: Vec<(i64, String, LeafId)>,
}

pub(crate) struct Chain<S> {
    store: S,
    prefix: String,
    directory: Mutex<Directory>,
    /// Leaves this process wrote last, kept with their new ETag so that the next write to the
    /// same leaf (the tail, for creates) needs no read before it. Dapr's save does not answer
    /// with the new ETag: where the store does not tell it either, the leaf is read again after
    /// the write. Only a guess: a leaf changed since fails its ETag check and is read afresh.
    read_ahead: Mutex<Vec<StoredLeaf>>,
    /// How many entries each leaf held when this process last read or wrote it. A sparse leaf
    /// next to one known to be too full to merge with is left alone without reading both
    /// again: draining a list from its oldest end would otherwise read two leaves per removal.
    /// A size older than [`SIZE_FRESH`] is read again, so a merge missed because another
    /// process emptied the neighbour is only put off.
    sizes: Mutex<HashMap<LeafId, (usize, tokio::time::Instant)>>,
}

impl<S: KeyValueStore> Chain<S> {
    pub(crate) fn new(store: S, prefix: String) -> Self {
        Self {
            store,
            prefix,
            directory: Mutex::default(),
            read_ahead: Mutex::default(),
            sizes: Mutex::default(),
        }
    }

    /// Notes that leaf `id` holds `entries` now.
    fn note_size(&self, id: &str, entries: usize) {
        let now = tokio::time::Instant::now();
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        if sizes.len() >= MAX_SIZES && !sizes.contains_key(id) {
            sizes.retain(|_, (_, seen)| now.duration_since(*seen) < SIZE_FRESH);
        }
        sizes.insert(id.to_string(), (entries, now));
    }

    /// Whether leaf `id`, as seen recently, cannot take `more` entries in a merge.
    fn known_too_full(&self, id: &str, more: usize) -> bool {
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes
            .get(id)
            .is_some_and(|(entries, seen)| seen.elapsed() < SIZE_FRESH && entries + more > MERGE_AT)
    }

    /// The leaf `id` as read ahead, taken out so that it is used at most once.
    fn take_read_ahead(&self, id: &str) -> Option<StoredLeaf> {
        let mut cached = self.read_ahead.lock().unwrap_or_else(|e| e.into_inner());
        let at = cached.iter().position(|leaf| leaf.id == id)?;
        Some(cached.swap_remove(at))
    }

    /// Reads the leaves just written (one call) and keeps them for the next write. Called after
    /// the writers are answered, so it costs no request any time; a failure only means the
    /// next write reads first.
    pub(crate) async fn read_ahead(&self, ids: Vec<LeafId>) {
        if ids.is_empty() {
            return;
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let Ok(values) = self.store.get_many(&keys).await else {
            return;
        };
        let fresh: Vec<StoredLeaf> = ids
            .iter()
            .zip(values)
            .filter_map(|(id, value)| self.interpret(id, value).ok().flatten())
            .filter(|leaf| leaf.etag.is_some() && leaf.leaf.merged_into.is_none())
            .collect();
        self.keep_ahead(fresh);
    }

    pub(crate) fn key(&self, leaf: &str) -> String {
        format!("{}-{leaf}", self.prefix)
    }

    fn directory_key(&self) -> String {
        format!("{}-directory", self.prefix)
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<Leaf, IndexError> {
        Ok(Leaf::decode(&self.key(id), bytes)?)
    }

    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    /// What was read under leaf `id`'s key, as a leaf (an empty list has no head document).
    pub(crate) fn interpret(
        &self,
        id: &str,
        stored: Option<Versioned<Vec<u8>>>,
    ) -> Result<Option<StoredLeaf>, IndexError> {
        match stored {
            Some(stored) => {
                let leaf = self.decode(id, &stored.value)?;
                self.note_size(id, leaf.entries.len());
                Ok(Some(StoredLeaf {
                    id: id.to_string(),
                    leaf,
                    etag: Some(stored.etag),
                }))
            }
            None if id == HEAD => Ok(Some(StoredLeaf {
                id: HEAD.to_string(),
                leaf: Leaf::default(),
                etag: None,
            })),
            None => Ok(None),
        }
    }

    /// Writes leaf `id`. Where the store tells the new ETag, the leaf is kept as written for the
    /// next write to it, which then needs no read first; elsewhere any copy kept is stale now.
    async fn put_leaf(
        &self,
        id: &str,
        leaf: &Leaf,
        condition: Condition,
    ) -> Result<(), IndexError> {
        let write = Write::new(self.key(id), leaf.encode(), condition);
        let etag = self.store.put(write).await?;
        self.take_read_ahead(id);
        if let Some(etag) = etag
            && leaf.merged_into.is_none()
        {
            self.keep_ahead(vec![StoredLeaf {
                id: id.to_string(),
                leaf: leaf.clone(),
                etag: Some(etag),
            }]);
        }
        Ok(())
    }

    /// Whether leaf `id` is kept as last written, so needs no read ahead.
    fn kept_ahead(&self, id: &str) -> bool {
        let cached = self.read_ahead.lock().unwrap_or_else(|e| e.into_inner());
        cached.iter().any(|leaf| leaf.id == id)
    }

    /// Keeps `fresh` for the next writes, in place of older copies of the same leaves.
    fn keep_ahead(&self, fresh: Vec<StoredLeaf>) {
        let mut cached = self.read_ahead.lock().unwrap_or_else(|e| e.into_inner());
        cached.retain(|old| fresh.iter().all(|new| new.id != old.id));
        cached.extend(fresh);
        let excess = cached.len().saturating_sub(READ_AHEAD);
        cached.drain(..excess);
    }

    pub(crate) async fn read(&self, id: &str) -> Result<Option<StoredLeaf>, IndexError> {
        let stored = self.store.get(&self.key(id)).await?;
        self.interpret(id, stored)
    }

    /// The leaf most likely to hold `position` (the head for none), from the directory.
    pub(crate) async fn hint(&self, position: Option<&Position>) -> LeafId {
        let Some(position) = position else {
            return HEAD.to_string();
        };
        self.ensure_directory().await;
        let directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        directory
            .leaves
            .range(..=position)
            .next_back()
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| HEAD.to_string())
    }

    async fn ensure_directory(&self) {
        let loaded = self
            .directory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .loaded_at
            .is_some();
        if !loaded {
            self.refresh_directory().await;
        }
    }

    /// Reloads the directory from the store (at most once per [`DIRECTORY_REFRESH`]). A failed
    /// read keeps what is cached: the directory is only a hint.
    pub(crate) async fn refresh_directory(&self) {
        let recent = self
            .directory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .loaded_at
            .is_some_and(|at| at.elapsed() < DIRECTORY_REFRESH);
        if recent {
            return;
        }
        let document = match self.store.get(&self.directory_key()).await {
            Ok(Some(stored)) => serde_json::from_slice::<DirectoryDocument>(&stored.value)
                .unwrap_or_else(|error| {
                    tracing::warn!(key = %self.directory_key(), %error, "unreadable list directory; rebuilding it from the leaves as they are found");
                    DirectoryDocument::default()
                }),
            Ok(None) => DirectoryDocument::default(),
            Err(error) => {
                tracing::debug!(%error, "list directory not reloaded");
                return;
            }
        };
        let mut directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        directory.leaves = document
            .leaves
            .into_iter()
            .filter_map(|(micros, id, leaf)| {
                Some((
                    Position {
                        micros,
                        id: TaskId::parse(&id).ok()?,
                    },
                    leaf,
                ))
            })
            .collect();
        directory.loaded_at = Some(Instant::now());
    }

    fn forget(&self, id: &str) {
        let mut directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        directory.leaves.retain(|_, leaf| leaf != id);
    }

    /// Records leaves created and removed by this process, in the cache at once and in the
    /// stored directory as far as possible (a failure only leaves the hint stale).
    async fn note_in_directory(&self, added: Option<(Position, LeafId)>, removed: Option<LeafId>) {
        {
            let mut directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((lo, id)) = &added {
                directory.leaves.insert(lo.clone(), id.clone());
            }
            if let Some(id) = &removed {
                directory.leaves.retain(|_, leaf| leaf != id);
            }
        }
        let key = self.directory_key();
        for attempt in 1..=MAX_CONFLICTS {
            let stored = match self.store.get(&key).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::debug!(%error, "list directory not updated");
                    return;
                }
            };
            let mut document = stored
                .as_ref()
                .and_then(|s| serde_json::from_slice::<DirectoryDocument>(&s.value).ok())
                .unwrap_or_default();
            if let Some((lo, id)) = &added {
                document.leaves.retain(|(_, _, leaf)| leaf != id);
                document
                    .leaves
                    .push((lo.micros, lo.id.to_string(), id.clone()));
                document
                    .leaves
                    .sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            }
            if let Some(id) = &removed {
                document.leaves.retain(|(_, _, leaf)| leaf != id);
            }
            let bytes = serde_json::to_vec(&document).expect("a directory serialises to JSON");
            let condition = Condition::replacing(stored.as_ref().map(|s| s.etag.as_str()));
            match self
                .store
                .put(Write::new(key.clone(), bytes, condition))
                .await
            {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => backoff(attempt).await,
                Err(error) => {
                    tracing::debug!(%error, "list directory not updated");
                    return;
                }
            }
        }
    }

    /// The live leaf whose range holds `position`, finishing any merge met on the way, and
    /// whether it is a leaf read ahead (so possibly out of date) rather than read now.
    pub(crate) async fn locate(
        &self,
        position: &Position,
    ) -> Result<(StoredLeaf, bool), IndexError> {
        let mut next = self.hint(Some(position)).await;
        if let Some(ahead) = self.take_read_ahead(&next)
            && ahead.leaf.covers(position)
        {
            return Ok((ahead, true));
        }
        let mut previous: Option<StoredLeaf> = None;
        let mut hops = 0;
        for _ in 0..MAX_STEPS {
            let Some(current) = self.read(&next).await? else {
                // Deleted after a merge: its range now belongs to a leaf further left.
                self.note_in_directory(None, Some(next.clone())).await;
                self.refresh_directory().await;
                self.forget(&next);
                previous = None;
                next = self.hint(Some(position)).await;
                continue;
            };
            if let Some(absorber) = current.leaf.merged_into.clone() {
                match previous.take() {
                    Some(left) if left.leaf.next.as_deref() == Some(current.id.as_str()) => {
                        self.finish_merge(left, &current).await?;
                        next = absorber;
                    }
                    // Reached without its left neighbour: go left, then right again to it.
                    _ => next = absorber,
                }
                continue;
            }
            if current.leaf.is_before(position) {
                hops += 1;
                if hops == STALE_AFTER_HOPS {
                    self.refresh_directory().await;
                }
                next =
                    current.leaf.next.clone().ok_or_else(|| {
                        self.broken(&current.id, "has an upper bound but no next")
                    })?;
                previous = Some(current);
                continue;
            }
            return Ok((current, false));
        }
        Err(self.broken(&next, "no leaf covers a position after many steps"))
    }

    fn broken(&self, id: &str, problem: &'static str) -> IndexError {
        IndexError::Inconsistent {
            key: self.key(id),
            problem,
        }
    }

    /// Moves the frozen `right` leaf's entries into `left` if `left` still links to it, then
    /// deletes it. If `left` no longer links to it, either someone else absorbed it or `left`
    /// split and its new right half now leads to it; that leaf absorbs it when met.
    async fn finish_merge(&self, left: StoredLeaf, right: &StoredLeaf) -> Result<(), IndexError> {
        let mut left = left;
        for attempt in 1..=MAX_CONFLICTS {
            if left.leaf.next.as_deref() != Some(right.id.as_str()) {
                return Ok(());
            }
            let mut merged = left.leaf.clone();
            merged.absorb(&right.leaf);
            match self
                .put_leaf(
                    &left.id,
                    &merged,
                    Condition::replacing(left.etag.as_deref()),
                )
                .await
            {
                Ok(()) => {
                    self.note_size(&left.id, merged.entries.len());
                    if let Err(error) = self.store.delete(&self.key(&right.id)).await {
                        tracing::debug!(%error, leaf = %right.id, "merged leaf not deleted");
                    }
                    self.note_in_directory(None, Some(right.id.clone())).await;
                    return Ok(());
                }
                Err(IndexError::Store(StoreError::Conflict { .. })) => {
                    backoff(attempt).await;
                    match self.read(&left.id).await? {
                        Some(fresh) => left = fresh,
                        None => return Ok(()),
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Err(IndexError::Store(StoreError::Conflict {
            key: self.key(&left.id),
        }))
    }

    /// Applies `ops` (any positions, any order) with as few leaf writes as possible: all ops
    /// that fall in one leaf are written together. Returns the leaves written whose new ETag is
    /// not known, to read ahead.
    pub(crate) async fn apply(&self, mut ops: Vec<Op>) -> Result<Vec<LeafId>, IndexError> {
        let mut conflicts = 0;
        let mut written_ids = Vec::new();
        while let Some(first) = ops.first() {
            let (target, read_ahead) = self.locate(first.position()).await?;
            let (mine, rest): (Vec<Op>, Vec<Op>) = ops
                .into_iter()
                .partition(|op| target.leaf.covers(op.position()));
            let mut leaf = target.leaf.clone();
            let changed = mine
                .iter()
                .fold(false, |changed, op| leaf.apply(op) | changed);
            if !changed {
                ops = rest;
                continue;
            }
            match self.write(&target, leaf).await {
                Ok(written) => {
                    ops = rest;
                    if let Some(written) = written {
                        // A merge rewrites it (and drops the copy kept); what is still not
                        // kept is read ahead.
                        let id = written.id.clone();
                        self.merge_if_sparse(written).await;
                        if !self.kept_ahead(&id) {
                            written_ids.push(id);
                        }
                    }
                }
                // Written by someone else since it was read ahead: read it now, no race lost.
                Err(IndexError::Store(StoreError::Conflict { .. })) if read_ahead => {
                    ops = mine.into_iter().chain(rest).collect();
                }
                Err(IndexError::Store(StoreError::Conflict { .. }))
                    if conflicts < MAX_CONFLICTS =>
                {
                    conflicts += 1;
                    backoff(conflicts).await;
                    ops = mine.into_iter().chain(rest).collect();
                }
                Err(error) => return Err(error),
            }
        }
        Ok(written_ids)
    }

    /// Writes `leaf` over `target`, splitting it first if it is over-full. Returns the leaf as
    /// written when it was not split (a candidate for merging).
    async fn write(
        &self,
        target: &StoredLeaf,
        mut leaf: Leaf,
    ) -> Result<Option<StoredLeaf>, IndexError> {
        let right = leaf.split(new_leaf_id);
        // New leaves first, right to left: each is complete before anything links to it.
        for (index, (id, new)) in right.iter().enumerate().rev() {
            if let Err(error) = self.put_leaf(id, new, Condition::IfAbsent).await {
                self.discard(&right[index + 1..]).await;
                return Err(error);
            }
        }
        let written = self
            .put_leaf(
                &target.id,
                &leaf,
                Condition::replacing(target.etag.as_deref()),
            )
            .await;
        if let Err(error) = written {
            // Never linked: nobody can reach them.
            self.discard(&right).await;
            return Err(error);
        }
        self.note_size(&target.id, leaf.entries.len());
        for (id, new) in &right {
            self.note_size(id, new.entries.len());
        }
        if right.is_empty() {
            return Ok(Some(StoredLeaf {
                id: target.id.clone(),
                leaf,
                etag: None,
            }));
        }
        for (id, new) in &right {
            let lo = new.lo.clone().expect("a split-off leaf has a lower bound");
            self.note_in_directory(Some((lo, id.clone())), None).await;
        }
        Ok(None)
    }

    async fn discard(&self, leaves: &[(LeafId, Leaf)]) {
        for (id, _) in leaves {
            let _ = self.store.delete(&self.key(id)).await;
        }
    }

    /// Merges a leaf that has become sparse with a neighbour, if both fit in one: it absorbs
    /// its right neighbour, or else its left neighbour absorbs it.
    async fn merge_if_sparse(&self, written: StoredLeaf) {
        if written.leaf.entries.len() >= MERGE_AT / 2 {
            return;
        }
        let entries = written.leaf.entries.len();
        if let Some(right) = &written.leaf.next
            && !self.known_too_full(right, entries)
            && self.try_absorb(&written.id, right).await
        {
            return;
        }
        if let Some(lo) = &written.leaf.lo
            && let Some(left) = self.predecessor(lo)
            && !self.known_too_full(&left, entries)
        {
            self.try_absorb(&left, &written.id).await;
        }
    }

    /// The directory's leaf before the one starting at `lo`.
    fn predecessor(&self, lo: &Position) -> Option<LeafId> {
        let directory = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            directory
                .leaves
                .range(..lo)
                .next_back()
                .map(|(_, id)| id.clone())
                .unwrap_or_else(|| HEAD.to_string()),
        )
    }

    /// Freezes `right_id` and moves it into `left_id`, if `left_id` links to it and both fit in
    /// one leaf. Whether it merged.
    async fn try_absorb(&self, left_id: &str, right_id: &str) -> bool {
        let result: Result<bool, IndexError> = async {
            let (Some(left), Some(right)) = (self.read(left_id).await?, self.read(right_id).await?)
            else {
                return Ok(false);
            };
            if left.leaf.next.as_deref() != Some(right_id)
                || left.leaf.merged_into.is_some()
                || right.leaf.merged_into.is_some()
                || left.leaf.entries.len() + right.leaf.entries.len() > MERGE_AT
            {
                return Ok(false);
            }
            let mut frozen = right.leaf.clone();
            frozen.merged_into = Some(left.id.clone());
            self.put_leaf(
                right_id,
                &frozen,
                Condition::replacing(right.etag.as_deref()),
            )
            .await?;
            let frozen = StoredLeaf {
                id: right_id.to_string(),
                leaf: frozen,
                etag: None,
            };
            self.finish_merge(left, &frozen).await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(merged) => merged,
            Err(IndexError::Store(StoreError::Conflict { .. })) => false,
            // Whoever meets the frozen leaf next finishes the merge.
            Err(error) => {
                tracing::debug!(%error, leaf = %right_id, "merge not finished");
                false
            }
        }
    }
}

/// A random leaf id: 12 lowercase letters and digits.
fn new_leaf_id() -> LeafId {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..12)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{
        fakes::MemoryStore,
        index::leaf::{CAPACITY, Entry, tests::pos},
    };

    pub(crate) fn insert(micros: i64, id: &str) -> Op {
        Op::Insert(Entry {
            position: pos(micros, id),
            revision: 1,
        })
    }

    fn remove(micros: i64, id: &str) -> Op {
        Op::Remove {
            position: pos(micros, id),
            up_to_revision: u64::MAX,
        }
    }

    /// Every entry reachable by walking the chain from the head, in order.
    pub(crate) async fn walk(chain: &Chain<MemoryStore>) -> Vec<Position> {
        let mut out = Vec::new();
        let mut next = Some(HEAD.to_string());
        let mut previous: Option<StoredLeaf> = None;
        while let Some(id) = next {
            let leaf = match chain.read(&id).await.unwrap() {
                Some(leaf) => leaf,
                None => {
                    // Absorbed after we read its left neighbour: read that again.
                    let left = previous.take().unwrap();
                    let fresh = chain.read(&left.id).await.unwrap().unwrap();
                    let after = out.last().cloned();
                    out.extend(
                        fresh
                            .leaf
                            .entries
                            .iter()
                            .map(|e| e.position.clone())
                            .filter(|p| after.as_ref().is_none_or(|a| p > a)),
                    );
                    next = fresh.leaf.next.clone();
                    previous = Some(fresh);
                    continue;
                }
            };
            out.extend(leaf.leaf.entries.iter().map(|e| e.position.clone()));
            next = leaf.leaf.next.clone();
            previous = Some(leaf);
        }
        out
    }

    fn id(n: usize) -> String {
        format!("t{n:05}")
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_of_inserts_stay_ordered_across_splits() {
        let chain = Chain::new(MemoryStore::new(), "l".into());
        let mut expected = Vec::new();
        for n in 0..2000usize {
            let micros = ((n * 7919) % 2000) as i64; // every position once, out of order
            chain.apply(vec![insert(micros, &id(n))]).await.unwrap();
            expected.push(pos(micros, &id(n)));
        }
        expected.sort();
        assert_eq!(walk(&chain).await, expected);
        for leaf in chain.store.keys() {
            if leaf == "l-directory" {
                continue;
            }
            if let Some(stored) = chain.read(leaf.trim_start_matches("l-")).await.unwrap() {
                assert!(
                    stored.leaf.entries.len() <= CAPACITY,
                    "{leaf} over capacity"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn removals_merge_sparse_leaves_and_keep_the_rest() {
        let chain = Chain::new(MemoryStore::new(), "l".into());
        let all: Vec<Op> = (0..1000).map(|n| insert(n as i64, &id(n))).collect();
        chain.apply(all).await.unwrap();
        let leaves_before = chain.store.keys().len();
        let gone: Vec<Op> = (0..1000)
            .filter(|n| n % 10 != 0)
            .map(|n| remove(n as i64, &id(n)))
            .collect();
        for batch in gone.chunks(37) {
            chain.apply(batch.to_vec()).await.unwrap();
        }
        let expected: Vec<Position> = (0..1000)
            .filter(|n| n % 10 == 0)
            .map(|n| pos(n as i64, &id(n)))
            .collect();
        assert_eq!(walk(&chain).await, expected);
        assert!(
            chain.store.keys().len() < leaves_before / 2,
            "{} leaves left of {leaves_before}",
            chain.store.keys().len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaf_read_ahead_saves_the_read_and_a_stale_one_costs_only_a_retry() {
        let store = MemoryStore::new();
        let chain = Chain::new(store.clone(), "l".into());
        let written = chain.apply(vec![insert(1, "a")]).await.unwrap();
        chain.read_ahead(written).await;
        let reads = store.reads();
        let written = chain.apply(vec![insert(2, "b")]).await.unwrap();
        assert_eq!(store.reads(), reads, "the write went out without a read");

        chain.read_ahead(written).await;
        let other_process = Chain::new(store.clone(), "l".into());
        other_process.apply(vec![insert(3, "c")]).await.unwrap();
        chain.apply(vec![insert(4, "d")]).await.unwrap();
        assert_eq!(
            walk(&chain).await,
            [pos(1, "a"), pos(2, "b"), pos(3, "c"), pos(4, "d")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn where_the_store_tells_a_writes_etag_appending_and_splitting_read_nothing() {
        let store = MemoryStore::new().telling_etags();
        let chain = Chain::new(store.clone(), "l".into());
        chain.apply(vec![insert(0, "a")]).await.unwrap();
        // A split also records the new leaf in the directory document (a read and a write).
        let leaf_reads = || store.reads() - store.reads_of(&["l-directory"]);
        let reads = leaf_reads();
        // Creates append to the tail, one batch at a time, splitting it as it fills.
        for n in 1..(3 * CAPACITY) as i64 {
            let unknown = chain.apply(vec![insert(n, &id(n as usize))]).await.unwrap();
            assert_eq!(unknown, Vec::<LeafId>::new(), "nothing left to read ahead");
            chain.read_ahead(unknown).await;
        }
        assert_eq!(leaf_reads(), reads, "no leaf read before or after a write");
        assert_eq!(walk(&chain).await.len(), 3 * CAPACITY);

        // Another process's write makes the ETag kept stale: the write it guards is refused
        // once, the leaf read afresh, and the entry lands.
        let other_process = Chain::new(store.clone(), "l".into());
        other_process
            .apply(vec![insert(10_000, "x")])
            .await
            .unwrap();
        let refused = store.refused("l-");
        chain.apply(vec![insert(10_001, "y")]).await.unwrap();
        assert_eq!(store.refused("l-"), refused + 1);
        let walked = walk(&chain).await;
        assert_eq!(walked.len(), 3 * CAPACITY + 2);
        assert_eq!(walked.last(), Some(&pos(10_001, "y")));
    }

    #[tokio::test(start_paused = true)]
    async fn draining_a_sparse_leaf_beside_a_full_one_reads_nothing_to_rule_out_a_merge() {
        let store = MemoryStore::new();
        let chain = Chain::new(store.clone(), "l".into());
        let all: Vec<Op> = (0..200).map(|n| insert(n as i64, &id(n))).collect();
        chain.apply(all).await.unwrap();
        // Drain the head leaf from its oldest end, one removal at a time, as completing the
        // oldest tasks first does; its right neighbour stays too full to take what is left.
        let head = chain.read(HEAD).await.unwrap().unwrap();
        let in_head = head.leaf.entries.len();
        let mut reads_while_sparse = Vec::new();
        for n in 0..in_head - 1 {
            let before = store.reads();
            let written = chain.apply(vec![remove(n as i64, &id(n))]).await.unwrap();
            chain.read_ahead(written).await;
            if in_head - 1 - n < MERGE_AT / 2 {
                // The read ahead is one read; ruling out the merge should be none.
                reads_while_sparse.push(store.reads() - before - 1);
            }
        }
        assert!(!reads_while_sparse.is_empty());
        assert!(
            reads_while_sparse.iter().sum::<usize>() <= 2,
            "reads beyond the read ahead per removal: {reads_while_sparse:?}"
        );
        // Once the sizes are old, the merge is checked again, and a merge that fits happens.
        tokio::time::advance(SIZE_FRESH).await;
        let right_gone: Vec<Op> = (in_head..180).map(|n| remove(n as i64, &id(n))).collect();
        chain.apply(right_gone).await.unwrap();
        let expected: Vec<Position> = std::iter::once(in_head - 1)
            .chain(180..200)
            .map(|n| pos(n as i64, &id(n)))
            .collect();
        assert_eq!(walk(&chain).await, expected);
        assert_eq!(
            store.keys().iter().filter(|k| *k != "l-directory").count(),
            1,
            "the two sparse leaves merged: {:?}",
            store.keys()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_writers_lose_nothing() {
        let store = MemoryStore::new();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                // Separate chains over one store: separate processes racing on the same keys.
                let chain = Chain::new(store.clone(), "l".into());
                tokio::spawn(async move {
                    for n in 0..150usize {
                        let k = w * 1000 + n;
                        chain.apply(vec![insert(k as i64, &id(k))]).await.unwrap();
                        if n % 3 == 0 {
                            chain.apply(vec![remove(k as i64, &id(k))]).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let chain = Chain::new(store, "l".into());
        let mut expected: Vec<Position> = (0..8)
            .flat_map(|w| {
                (0..150usize)
                    .filter(|n| n % 3 != 0)
                    .map(move |n| w * 1000 + n)
            })
            .map(|k| pos(k as i64, &id(k)))
            .collect();
        expected.sort();
        assert_eq!(walk(&chain).await, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_between_any_two_writes_hides_no_entry() {
        // Crash after every possible number of writes during a workload that splits and merges;
        // whatever was committed before the crash must stay reachable, and the next writer
        // (after the "restart") must be able to carry on.
        async fn workload(chain: &Chain<MemoryStore>) -> std::collections::BTreeSet<Position> {
            let mut committed = std::collections::BTreeSet::new();
            for n in 0..300usize {
                let op = insert(n as i64, &id(n));
                if chain.apply(vec![op]).await.is_err() {
                    return committed;
                }
                committed.insert(pos(n as i64, &id(n)));
            }
            for n in (0..300usize).filter(|n| n % 4 != 0) {
                if chain.apply(vec![remove(n as i64, &id(n))]).await.is_err() {
                    return committed;
                }
                committed.remove(&pos(n as i64, &id(n)));
            }
            committed
        }
        for crash_after in (1..60).chain((60..400).step_by(17)) {
            let store = MemoryStore::new();
            store.faults().crash_after(crash_after);
            let chain = Chain::new(store.clone(), "l".into());
            let committed = workload(&chain).await;
            store.faults().heal();
            let restarted = Chain::new(store.clone(), "l".into());
            let listed: std::collections::BTreeSet<Position> =
                walk(&restarted).await.into_iter().collect();
            for position in &committed {
                assert!(
                    listed.contains(position),
                    "crash after {crash_after} writes hid {position:?}"
                );
            }
            // And the chain still works.
            restarted
                .apply(vec![insert(10_000, "after-crash")])
                .await
                .unwrap();
            assert!(walk(&restarted).await.contains(&pos(10_000, "after-crash")));
        }
    }
}
