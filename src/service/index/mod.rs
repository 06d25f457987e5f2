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
//!   concurrent creates cost a few writes of the tail leaf rather than racing for it. Writes a
//!   request waits for go before cleanup (removals nobody waits for, spread over the chain),
//!   which waits a few milliseconds for company and follows a few at a time, so a create never
//!   waits behind a long cleanup.
//! - **Order of writes**: a task enters its new list before its record changes and leaves its
//!   old list after. A crash in between leaves an extra entry, never a missing one; readers
//!   check every entry against the task record and skip (and clean up) entries that no longer
//!   match. No task is ever missing from a list after a crash.
//!
//! The leaf format, the fifteen key prefixes and the order are part of the stored format.

mod chain;
mod leaf;
mod page;

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::Instrument;

pub(crate) use leaf::{Entry, LeafId, Position};
pub(crate) use page::ListReader;

use self::{chain::Chain, leaf::Op};
use super::{
    ports::{KeyValueStore, StoreError},
    store::CorruptDocument,
};
use crate::{
    domain::{Priority, TaskStatus},
    telemetry::{self, spans},
};

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] CorruptDocument),
    /// Leaves that do not fit together (a bug, or a document changed by hand).
    #[error("the list index is inconsistent at {key:?}: {problem}")]
    Inconsistent { key: String, problem: &'static str },
    #[error("the list writer stopped")]
    WriterStopped,
}

/// The most operations one leaf write carries.
const MAX_BATCH: usize = 512;

/// One list: the tasks of one status and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ListId {
    pub(crate) status: TaskStatus,
    pub(crate) priority: Priority,
}

impl ListId {
    /// Every list, in the order page tokens name them.
    pub(crate) fn all() -> Vec<ListId> {
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
    pub(crate) fn matching(status: Option<TaskStatus>, priority: Option<Priority>) -> Vec<ListId> {
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
    done: Option<oneshot::Sender<Result<(), Arc<IndexError>>>>,
    /// The trace context of the writer that asked, which the batch's writes are linked to.
    origin: Option<String>,
}

struct Inner<S> {
    chains: HashMap<ListId, Arc<Chain<S>>>,
    writers: HashMap<ListId, mpsc::UnboundedSender<Request>>,
}

/// The fifteen lists over one state store. Cheap to clone; the batching writers stop when the
/// last clone is dropped.
pub(crate) struct TaskIndex<S> {
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

impl<S: KeyValueStore> TaskIndex<S> {
    /// Must be called within a tokio runtime: it starts one batching writer per list.
    pub(crate) fn new(store: S) -> Self {
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

    async fn submit(&self, list: ListId, op: Op) -> Result<(), Arc<IndexError>> {
        let (done, result) = oneshot::channel();
        self.send(list, op, Some(done))?;
        result
            .await
            .unwrap_or_else(|_| Err(Arc::new(IndexError::WriterStopped)))
    }

    fn send(
        &self,
        list: ListId,
        op: Op,
        done: Option<oneshot::Sender<Result<(), Arc<IndexError>>>>,
    ) -> Result<(), Arc<IndexError>> {
        self.inner.writers[&list]
            .send(Request {
                op,
                done,
                origin: spans::current_traceparent().or_else(telemetry::request_traceparent),
            })
            .map_err(|_| Arc::new(IndexError::WriterStopped))
    }

    /// Adds a task to `list` (or raises its entry's revision), once it is written.
    pub(crate) async fn insert(
        &self,
        list: ListId,
        position: Position,
        revision: u64,
    ) -> Result<(), Arc<IndexError>> {
        self.submit(list, Op::Insert(Entry { position, revision }))
            .await
    }

    /// Removes a task's entry from `list` unless a change newer than `up_to_revision` put it
    /// there, without waiting: for entries that are only extra (a reader
    /// skips them anyway), so a failure costs nothing but a later cleanup.
    pub(crate) fn remove_soon(&self, list: ListId, position: Position, up_to_revision: u64) {
        let op = Op::Remove {
            position,
            up_to_revision,
        };
        if let Err(error) = self.send(list, op, None) {
            tracing::debug!(%error, "index cleanup not queued");
        }
    }

    /// Reads `lists` merged in order, after `after`, each starting at its hint leaf if given.
    pub(crate) async fn reader(
        &self,
        lists: &[ListId],
        after: Option<Position>,
        hints: Vec<Option<LeafId>>,
    ) -> Result<ListReader<'_, S>, IndexError> {
        let chains = lists
            .iter()
            .map(|list| (*list, self.inner.chains[list].as_ref()))
            .collect();
        ListReader::open(chains, after, hints).await
    }
}

/// How many removals nobody waits for (cleanup) one writer turn carries. Removals land all over
/// the chain, a leaf read and write each, while inserts gather in the tail leaf: a large cleanup
/// written in one go would hold every create of the list behind it for seconds.
const CLEANUP_PER_TURN: usize = 16;
/// How long a removal waits for company before it is written. Nothing waits on a removal, and
/// changes a few milliseconds apart (one caller at a time) mostly leave the same leaf, so they
/// share its write (and, where the leaf is not kept from the last write, its read).
const CLEANUP_LINGER: Duration = Duration::from_millis(20);

/// One list's writer: takes every queued operation and writes them in as few leaf writes as
/// possible, answering each. Operations a request waits for go first, in one batch, at once;
/// cleanup waits up to [`CLEANUP_LINGER`] for company, then follows at most
/// [`CLEANUP_PER_TURN`] at a time, the rest kept for the turns after.
async fn write_batches<S: KeyValueStore>(
    list: ListId,
    chain: Arc<Chain<S>>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let mut cleanup = Cleanup::default();
    while let Some(batch) = next_turn(&mut requests, &cleanup).await {
        let (awaited, soon): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(|r| r.done.is_some());
        cleanup.queue(soon);
        write_batch(list, &chain, awaited).await;
        if cleanup.due() {
            write_batch(list, &chain, cleanup.take(CLEANUP_PER_TURN)).await;
        }
    }
    // Closed: what cleanup is left is written before the writer ends.
    while !cleanup.queued.is_empty() {
        write_batch(list, &chain, cleanup.take(MAX_BATCH)).await;
    }
}

/// Removals queued and not yet written.
#[derive(Default)]
struct Cleanup {
    queued: VecDeque<Request>,
    /// When the oldest of them was queued.
    since: Option<Instant>,
}

impl Cleanup {
    fn queue(&mut self, removals: Vec<Request>) {
        if !removals.is_empty() && self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.queued.extend(removals);
    }

    /// When they are to be written: once the oldest has waited long enough, or a turn's worth
    /// is queued.
    fn due_at(&self) -> Option<Instant> {
        let since = self.since?;
        Some(if self.queued.len() >= CLEANUP_PER_TURN {
            since
        } else {
            since + CLEANUP_LINGER
        })
    }

    fn due(&self) -> bool {
        self.due_at().is_some_and(|at| at <= Instant::now())
    }

    /// Up to `most` of the oldest; what stays behind is as overdue as they were.
    fn take(&mut self, most: usize) -> Vec<Request> {
        let taken = self.queued.drain(..self.queued.len().min(most)).collect();
        if self.queued.is_empty() {
            self.since = None;
        }
        taken
    }
}

/// The requests of the next turn: waits for one, or, while cleanup is queued, until it is due;
/// then takes what else is already queued. `None` once the queue is closed and empty.
async fn next_turn(
    requests: &mut mpsc::UnboundedReceiver<Request>,
    cleanup: &Cleanup,
) -> Option<Vec<Request>> {
    let Some(due_at) = cleanup.due_at() else {
        return crate::service::batch::next(requests, MAX_BATCH).await;
    };
    tokio::select! {
        biased;
        // `None` (closed): the cleanup left is written on the way out.
        batch = crate::service::batch::next(requests, MAX_BATCH) => batch,
        () = tokio::time::sleep_until(due_at) => Some(Vec::new()),
    }
}

/// Writes one batch of operations and answers those waiting for it.
async fn write_batch<S: KeyValueStore>(list: ListId, chain: &Chain<S>, batch: Vec<Request>) {
    if batch.is_empty() {
        return;
    }
    let span = spans::batch("index batch", batch.iter().map(|r| r.origin.as_deref()));
    let result = chain
        .apply(batch.iter().map(|r| r.op.clone()).collect())
        .instrument(span)
        .await
        .map_err(Arc::new);
    let written = result.clone().unwrap_or_default();
    let result = result.map(drop);
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
    chain.read_ahead(written).await;
}

#[cfg(test)]
mod tests {
    use super::{leaf::tests::pos, *};
    use crate::service::fakes::MemoryStore;

    fn list(status: TaskStatus, priority: u8) -> ListId {
        ListId {
            status,
            priority: Priority::parse(i64::from(priority)).unwrap(),
        }
    }

    /// Inserts tasks `t0` .. `t{count-1}`, one after another, at positions 0 .. count-1.
    async fn fill(index: &TaskIndex<MemoryStore>, list: ListId, count: i64) {
        for n in 0..count {
            index
                .insert(list, pos(n, &format!("t{n}")), 1)
                .await
                .unwrap();
        }
    }

    /// The positions (their times) `list` holds, read through to its end.
    async fn listed(index: &TaskIndex<MemoryStore>, list: ListId) -> Vec<i64> {
        let mut reader = index.reader(&[list], None, vec![None]).await.unwrap();
        let mut listed = Vec::new();
        while let Some((_, entry)) = reader.next().await.unwrap() {
            listed.push(entry.position.micros);
        }
        listed
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

    #[tokio::test(start_paused = true)]
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
        assert_eq!(listed(&index, pending).await, (0..500).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn an_insert_does_not_wait_behind_a_long_cleanup() {
        let store = MemoryStore::new();
        let index = TaskIndex::new(store.clone());
        let pending = list(TaskStatus::Pending, 1);
        fill(&index, pending, 4000).await;
        // Cleanup all over the chain, a removal in every leaf, queued before the insert.
        for n in (0..4000).step_by(10) {
            index.remove_soon(pending, pos(n, &format!("t{n}")), 1);
        }
        let before = store.faults().side_effects();
        index.insert(pending, pos(10_000, "late"), 1).await.unwrap();
        let writes = store.faults().side_effects() - before;
        assert!(
            writes <= 2,
            "the insert waited for {writes} writes of cleanup"
        );
        // The cleanup still happens, in later turns.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(listed(&index, pending).await.len(), 4000 - 400 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn removals_close_together_share_a_write_and_no_insert_waits_for_them() {
        let store = MemoryStore::new();
        let index = TaskIndex::new(store.clone());
        let pending = list(TaskStatus::Pending, 1);
        fill(&index, pending, 10).await;
        let before = store.faults().side_effects();
        // Four changes 3 ms apart leave the list, as one caller's would.
        for n in 0..4 {
            index.remove_soon(pending, pos(n, &format!("t{n}")), 1);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let asked = Instant::now();
        index.insert(pending, pos(100, "new"), 1).await.unwrap();
        assert_eq!(
            asked.elapsed(),
            Duration::ZERO,
            "the insert waited on a timer"
        );
        assert_eq!(
            store.faults().side_effects() - before,
            1,
            "the insert alone"
        );
        tokio::time::sleep(CLEANUP_LINGER).await;
        assert_eq!(
            store.faults().side_effects() - before,
            2,
            "the four removals in one write"
        );
        assert_eq!(listed(&index, pending).await, [4, 5, 6, 7, 8, 9, 100]);
    }

    #[tokio::test(start_paused = true)]
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
