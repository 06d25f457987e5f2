//! Reading lists in order: one stream per list, merged, from a position on.
//!
//! Each stream starts at a leaf (from the page token, or the directory, or the head) and moves
//! right leaf by leaf only as entries are taken, so a page costs a few leaf reads per list
//! whatever the size of the list.

use super::{
    IndexError, ListId,
    chain::{Chain, StoredLeaf},
    leaf::{Entry, LeafId, Position},
};
use crate::service::ports::KeyValueStore;

/// Leaf reads one stream may make while looking for its next entry (empty leaves are skipped).
const MAX_LEAVES_PER_STEP: usize = 512;

struct Stream {
    list: ListId,
    leaf: Option<StoredLeaf>,
    /// Index of the next entry in `leaf`.
    at: usize,
    /// Leaves visited, with their lower bounds, for the page token.
    visited: Vec<(LeafId, Option<Position>)>,
    exhausted: bool,
}

/// What a walk along a list does next.
enum Step {
    /// Stop at this leaf.
    Settle(StoredLeaf),
    /// Go on to this leaf.
    Enter(LeafId),
}

/// Entries of several lists after a position, in list order.
pub(crate) struct ListReader<'a, S> {
    chains: Vec<&'a Chain<S>>,
    streams: Vec<Stream>,
    after: Option<Position>,
    /// Store calls made so far.
    reads: usize,
}

impl<'a, S: KeyValueStore> ListReader<'a, S> {
    /// Opens the lists at `after` (exclusive), starting each at its hint leaf when given.
    pub(crate) async fn open(
        lists: Vec<(ListId, &'a Chain<S>)>,
        after: Option<Position>,
        hints: Vec<Option<LeafId>>,
    ) -> Result<Self, IndexError> {
        let mut streams = Vec::with_capacity(lists.len());
        let mut chains = Vec::with_capacity(lists.len());
        let mut starts = Vec::with_capacity(lists.len());
        for (index, (list, chain)) in lists.into_iter().enumerate() {
            let start = match hints.get(index).cloned().flatten() {
                Some(hint) => hint,
                None => chain.hint(after.as_ref()).await,
            };
            starts.push(start);
            chains.push(chain);
            streams.push(Stream {
                list,
                leaf: None,
                at: 0,
                visited: Vec::new(),
                exhausted: false,
            });
        }
        // The first leaf of every list in one bulk read.
        let keys: Vec<String> = chains
            .iter()
            .zip(&starts)
            .map(|(chain, start)| chain.key(start))
            .collect();
        let first = match chains.first() {
            Some(chain) => chain.store().get_many(&keys).await?,
            None => Vec::new(),
        };
        let mut reader = Self {
            chains,
            streams,
            after,
            reads: 1,
        };
        for (index, (start, stored)) in starts.into_iter().zip(first).enumerate() {
            let leaf = reader.chains[index].interpret(&start, stored)?;
            reader.enter_read(index, start, None, Some(leaf)).await?;
        }
        Ok(reader)
    }

    /// Store calls the reader made so far.
    pub(crate) fn reads(&self) -> usize {
        self.reads
    }

    /// Positions stream `index` at leaf `id`, reached from `previous` (its left neighbour as
    /// read, if it was reached by following a link).
    async fn enter(
        &mut self,
        index: usize,
        id: LeafId,
        previous: Option<StoredLeaf>,
    ) -> Result<(), IndexError> {
        self.enter_read(index, id, previous, None).await
    }

    /// Like [`ListReader::enter`], with the first leaf already read when `read` is given.
    async fn enter_read(
        &mut self,
        index: usize,
        id: LeafId,
        previous: Option<StoredLeaf>,
        mut read: Option<Option<StoredLeaf>>,
    ) -> Result<(), IndexError> {
        let chain = self.chains[index];
        let mut next = Some(id);
        let mut previous = previous;
        for _ in 0..MAX_LEAVES_PER_STEP {
            let Some(id) = next.take() else {
                self.streams[index].exhausted = true;
                self.streams[index].leaf = None;
                return Ok(());
            };
            let current = match read.take() {
                Some(already) => already,
                None => {
                    self.reads += 1;
                    chain.read(&id).await?
                }
            };
            let Some(current) = current else {
                match self.after_vanished(index, &id, previous.take()).await? {
                    Step::Settle(fresh) => return self.settle(index, fresh),
                    Step::Enter(leaf) => {
                        next = Some(leaf);
                        continue;
                    }
                }
            };
            if let Some(absorber) = &current.leaf.merged_into {
                let linked_from_previous = previous
                    .as_ref()
                    .is_some_and(|p| p.leaf.next.as_deref() == Some(current.id.as_str()));
                if !linked_from_previous {
                    // Reached directly: its entries may already be in the absorber.
                    next = Some(absorber.clone());
                    previous = None;
                    continue;
                }
                // Still linked: its entries are not in the neighbour we read. Read it as is.
            }
            return self.settle(index, current);
        }
        Err(IndexError::Inconsistent {
            key: chain.key("…"),
            problem: "too many empty leaves in a row",
        })
    }

    /// Where stream `index` goes when leaf `id` is gone: to `previous` (its left neighbour as
    /// read before), read again, or to the leaf the directory names now.
    async fn after_vanished(
        &mut self,
        index: usize,
        id: &str,
        previous: Option<StoredLeaf>,
    ) -> Result<Step, IndexError> {
        let chain = self.chains[index];
        match previous {
            // Absorbed into its left neighbour after we read that: read it again.
            Some(left) => {
                self.reads += 1;
                Ok(match chain.read(&left.id).await? {
                    Some(fresh) => Step::Settle(fresh),
                    None => Step::Enter(chain.hint(self.after.as_ref()).await),
                })
            }
            // A stale hint: find the leaf again.
            None => {
                chain.refresh_directory().await;
                let found = chain.hint(self.after.as_ref()).await;
                Ok(Step::Enter(if found == id {
                    super::leaf::HEAD.to_string()
                } else {
                    found
                }))
            }
        }
    }

    /// Makes `leaf` the stream's current leaf, skipping entries at or before `after`.
    fn settle(&mut self, index: usize, leaf: StoredLeaf) -> Result<(), IndexError> {
        let after = self.after.clone();
        let stream = &mut self.streams[index];
        stream.at = match &after {
            Some(after) => leaf.leaf.entries.partition_point(|e| e.position <= *after),
            None => 0,
        };
        stream.visited.push((leaf.id.clone(), leaf.leaf.lo.clone()));
        stream.leaf = Some(leaf);
        Ok(())
    }

    /// Makes sure stream `index` has an entry ready (moving right as needed); false when the
    /// list has no more.
    async fn fill(&mut self, index: usize) -> Result<bool, IndexError> {
        for _ in 0..MAX_LEAVES_PER_STEP {
            let stream = &self.streams[index];
            if stream.exhausted {
                return Ok(false);
            }
            let Some(leaf) = &stream.leaf else {
                return Ok(false);
            };
            if stream.at < leaf.leaf.entries.len() {
                return Ok(true);
            }
            let next = leaf.leaf.next.clone();
            let previous = leaf.clone();
            match next {
                Some(next) => self.enter(index, next, Some(previous)).await?,
                None => {
                    self.streams[index].exhausted = true;
                    return Ok(false);
                }
            }
        }
        Err(IndexError::Inconsistent {
            key: self.chains[index].key("…"),
            problem: "too many empty leaves in a row",
        })
    }

    /// The next entry over all lists, and the list it is in.
    pub(crate) async fn next(&mut self) -> Result<Option<(ListId, Entry)>, IndexError> {
        let mut best: Option<usize> = None;
        for index in 0..self.streams.len() {
            if !self.fill(index).await? {
                continue;
            }
            let candidate = self.peek(index);
            let better = match best {
                None => true,
                Some(current) => candidate.position < self.peek(current).position,
            };
            if better {
                best = Some(index);
            }
        }
        let Some(index) = best else {
            return Ok(None);
        };
        let entry = self.peek(index).clone();
        self.streams[index].at += 1;
        // Later entries of every stream are after this one.
        self.after = Some(entry.position.clone());
        Ok(Some((self.streams[index].list, entry)))
    }

    fn peek(&self, index: usize) -> &Entry {
        let stream = &self.streams[index];
        let leaf = stream.leaf.as_ref().expect("filled");
        &leaf.leaf.entries[stream.at]
    }

    /// For each list, the leaf to resume from after `position`: the last leaf visited whose
    /// range starts at or before it.
    pub(crate) fn resume_hints(&self, position: &Position) -> Vec<Option<LeafId>> {
        self.streams
            .iter()
            .map(|stream| {
                stream
                    .visited
                    .iter()
                    .rev()
                    .find(|(_, lo)| lo.as_ref().is_none_or(|lo| lo <= position))
                    .map(|(id, _)| id.clone())
            })
            .collect()
    }
}
