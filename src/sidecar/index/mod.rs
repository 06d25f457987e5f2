//! The list index: which tasks exist, in creation order, by status and priority.
//!
//! Dapr's key-value API has no scan and plain Redis no query, so task-api keeps its own index,
//! built from ETag-guarded single-key writes only, so it works on every state store.
//!
//! - **Fifteen lists**, one per (status, priority). A task is in exactly one, so a filter by
//!   status reads five lists, by priority three, by both one, and none fifteen; each list holds
//!   only matching tasks, so a page costs the same however rare the filtered status is.
//! - **Each list is a chain of leaves** (see [`chain`]) of at most 128 entries
//!   `(creation time, id, revision)`, sorted, each linked to the next. A page reads the leaf its
//!   token names (or the first) and moves right as far as the page needs: a few reads, whatever
//!   the number of tasks.
//! - **Writes are batched per list** within a process: while one leaf write is in flight, later
//!   inserts and removals queue and go out together in the next (group commit), so many
//!   concurrent creates cost a few writes of the tail leaf rather than racing for it.
//! - **Order of writes**: a task enters its new list before its record changes and leaves its
//!   old list after. A crash in between leaves an extra entry, never a missing one; readers
//!   check every entry against the task record and skip (and clean up) entries that no longer
//!   match. No task is ever missing from a list after a crash.
//!
//! The leaf format, the fifteen key prefixes and the order are part of the stored format.

mod chain;
mod leaf;
mod page;
mod store;

use std::{collections::HashMap, fmt, sync::Arc};

use tokio::sync::{mpsc, oneshot};

pub use leaf::{Entry, LeafId, Position};
pub use page::ListReader;
pub use store::{Condition, LeafStore};

use self::{chain::Chain, leaf::Op};
use super::{SidecarError, StateStore};
use crate::domain::{Priority, TaskStatus};

/// The most operations one leaf write carries.
const MAX_BATCH: usize = 512;

/// One list: the tasks of one status and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListId {
    pub status: TaskStatus,
    pub priority: Priority,
}

impl ListId {
    /// Every list, in the order page tokens name them.
    pub fn all() -> Vec<ListId> {
        TaskStatus::ALL
            .into_iter()
            .flat_map(|status| {
                Priority::ALL
                    .into_iter()
                    .map(move |priority| ListId { status, priority })
            })
            .collect()
    }

    /// The lists a filter reads, in token order.
    pub fn matching(status: Option<TaskStatus>, priority: Option<Priority>) -> Vec<ListId> {
        Self::all()
            .into_iter()
            .filter(|list| status.is_none_or(|s| s == list.status))
            .filter(|list| priority.is_none_or(|p| p == list.priority))
            .collect()
    }

    fn key_prefix(self) -> String {
        format!("tasks-{}-p{}", self.status, self.priority.value())
    }
}

struct Request {
    op: Op,
    done: Option<oneshot::Sender<Result<(), SidecarError>>>,
}

struct Inner<S> {
    chains: HashMap<ListId, Arc<Chain<S>>>,
    writers: HashMap<ListId, mpsc::UnboundedSender<Request>>,
}

/// The fifteen lists over one state store. Cheap to clone; the batching writers stop when the
/// last clone is dropped.
pub struct TaskIndex<S = StateStore> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for TaskIndex<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for TaskIndex<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskIndex")
            .field("lists", &self.inner.chains.len())
            .finish()
    }
}

impl<S: LeafStore> TaskIndex<S> {
    /// Must be called within a tokio runtime: it starts one batching writer per list.
    pub fn new(store: S) -> Self {
        let mut chains = HashMap::new();
        let mut writers = HashMap::new();
        for list in ListId::all() {
            let chain = Arc::new(Chain::new(store.clone(), list.key_prefix()));
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(list, chain.clone(), rx));
            chains.insert(list, chain);
            writers.insert(list, tx);
        }
        Self {
            inner: Arc::new(Inner { chains, writers }),
        }
    }

    async fn submit(&self, list: ListId, op: Op) -> Result<(), SidecarError> {
        let (done, result) = oneshot::channel();
        self.send(list, op, Some(done))?;
        result
            .await
            .unwrap_or_else(|_| Err(SidecarError::Unavailable("the index writer stopped".into())))
    }

    fn send(
        &self,
        list: ListId,
        op: Op,
        done: Option<oneshot::Sender<Result<(), SidecarError>>>,
    ) -> Result<(), SidecarError> {
        self.inner.writers[&list]
            .send(Request { op, done })
            .map_err(|_| SidecarError::Unavailable("the index writer stopped".into()))
    }

    /// Adds a task to `list` (or raises its entry's revision), once it is written.
    pub async fn insert(
        &self,
        list: ListId,
        position: Position,
        revision: u64,
    ) -> Result<(), SidecarError> {
        self.submit(list, Op::Insert(Entry { position, revision }))
            .await
    }

    /// Removes a task's entry from `list` unless a change newer than `up_to_revision` put it
    /// there; waits until written.
    pub async fn remove(
        &self,
        list: ListId,
        position: Position,
        up_to_revision: u64,
    ) -> Result<(), SidecarError> {
        self.submit(
            list,
            Op::Remove {
                position,
                up_to_revision,
            },
        )
        .await
    }

    /// Like [`TaskIndex::remove`], without waiting: for entries that are only extra (a reader
    /// skips them anyway), so a failure costs nothing but a later cleanup.
    pub fn remove_soon(&self, list: ListId, position: Position, up_to_revision: u64) {
        let op = Op::Remove {
            position,
            up_to_revision,
        };
        if let Err(error) = self.send(list, op, None) {
            tracing::debug!(%error, "index cleanup not queued");
        }
    }

    /// Reads `lists` merged in order, after `after`, each starting at its hint leaf if given.
    pub async fn reader(
        &self,
        lists: &[ListId],
        after: Option<Position>,
        hints: Vec<Option<LeafId>>,
    ) -> Result<ListReader<'_, S>, SidecarError> {
        let chains = lists
            .iter()
            .map(|list| (*list, self.inner.chains[list].as_ref()))
            .collect();
        ListReader::open(chains, after, hints).await
    }
}

/// One list's writer: takes every queued operation, writes them in as few leaf writes as
/// possible, answers each.
async fn write_batches<S: LeafStore>(
    list: ListId,
    chain: Arc<Chain<S>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let result = chain
            .apply(batch.iter().map(|r| r.op.clone()).collect())
            .await;
        if let Err(error) = &result
            && batch.iter().all(|r| r.done.is_none())
        {
            tracing::warn!(list = %list.key_prefix(), %error, "index cleanup failed; readers skip the extra entries");
        }
        for request in batch {
            if let Some(done) = request.done {
                let _ = done.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{leaf::tests::pos, store::memory::MemoryStore, *};

    fn list(status: TaskStatus, priority: u8) -> ListId {
        ListId {
            status,
            priority: Priority::parse(i64::from(priority)).unwrap(),
        }
    }

    #[test]
    fn filters_pick_the_lists() {
        assert_eq!(ListId::all().len(), 15);
        assert_eq!(ListId::matching(Some(TaskStatus::Completed), None).len(), 5);
        assert_eq!(
            ListId::matching(None, Some(Priority::parse(3).unwrap())).len(),
            3
        );
        assert_eq!(
            ListId::matching(Some(TaskStatus::Pending), Some(Priority::parse(1).unwrap())),
            [list(TaskStatus::Pending, 1)]
        );
        assert_eq!(
            list(TaskStatus::InProgress, 4).key_prefix(),
            "tasks-in_progress-p4"
        );
    }

    #[tokio::test]
    async fn concurrent_inserts_are_batched_and_all_listed() {
        let index = TaskIndex::new(MemoryStore::new());
        let pending = list(TaskStatus::Pending, 1);
        let inserts: Vec<_> = (0..500)
            .map(|n| {
                let index = index.clone();
                tokio::spawn(async move {
                    index
                        .insert(pending, pos(n, &format!("t{n}")), 1)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for insert in inserts {
            insert.await.unwrap();
        }
        let mut reader = index.reader(&[pending], None, vec![None]).await.unwrap();
        let mut seen = Vec::new();
        while let Some((_, entry)) = reader.next().await.unwrap() {
            seen.push(entry.position.micros);
        }
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_reader_merges_lists_and_resumes_from_its_hints() {
        let index = TaskIndex::new(MemoryStore::new());
        let lists = ListId::matching(Some(TaskStatus::Pending), None);
        for n in 0..1000i64 {
            let target = lists[(n % 5) as usize];
            index
                .insert(target, pos(n, &format!("t{n}")), 1)
                .await
                .unwrap();
        }
        let mut all = Vec::new();
        let mut cursor: Option<(Position, Vec<Option<LeafId>>)> = None;
        loop {
            let (after, hints) = match &cursor {
                Some((p, h)) => (Some(p.clone()), h.clone()),
                None => (None, vec![None; lists.len()]),
            };
            let mut reader = index.reader(&lists, after, hints).await.unwrap();
            let mut page = Vec::new();
            while page.len() < 37 {
                match reader.next().await.unwrap() {
                    Some((list, entry)) => {
                        assert_eq!(list, lists[(entry.position.micros % 5) as usize]);
                        page.push(entry.position);
                    }
                    None => break,
                }
            }
            let Some(last) = page.last().cloned() else {
                break;
            };
            cursor = Some((last.clone(), reader.resume_hints(&last)));
            all.extend(page.into_iter().map(|p| p.micros));
        }
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
