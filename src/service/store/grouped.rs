//! Group commit of the calls changes make to their records: the reads and the writes of
//! changes in flight at once go to the store together.
//!
//! Every change reads its record (with its ledger) and writes it back, two sidecar calls that
//! no other batching shares. A plain app makes the same two, but task-api's sidecar has more to
//! do for each change (the event's staging, publish and ledger), so under load these calls'
//! own cost (a gRPC call into daprd and out to the store) is what is left to save. Here, while
//! a few reads (or writes) are out, the next ones wait and then go in one call: a change that
//! finds fewer out waits for nothing, and its call goes out at once, as the single call it
//! always was.
//!
//! A batch runs in a task of its own, so a caller that gives up (a cancelled gRPC call) stops
//! waiting without stopping the calls of the others; it runs in the span of its first caller.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;
use tracing::{Instrument, Span};

use super::records::from_json;
use crate::{
    domain::{Nonce, Verdict, Versioned},
    service::{
        ports::{Condition, KeyValueStore, StoreError, Write},
        shared_causes,
    },
};

/// The most calls one batch makes as one.
const MAX_BATCH: usize = 64;
/// Batches out at once. A few, not one: a call that finds one out goes at once, so a handful of
/// changes in flight wait for nothing; past that, they wait and go together.
const MAX_OUT: usize = 4;

/// Calls of one kind made together: [`Grouped::call`] waits its turn, and the calls that waited
/// together are made as one.
pub(crate) trait Batch: Send + Sync + 'static {
    type Job: Send + 'static;
    type Outcome: Send + 'static;

    /// One outcome per job, in order.
    fn run(&self, jobs: Vec<Self::Job>) -> impl Future<Output = Vec<Self::Outcome>> + Send;
}

struct Waiter<B: Batch> {
    job: B::Job,
    done: oneshot::Sender<B::Outcome>,
    span: Span,
}

struct Queue<B: Batch> {
    /// Batches being made now.
    out: usize,
    waiting: VecDeque<Waiter<B>>,
}

/// Calls of one kind, made in batches, at most [`MAX_OUT`] at a time. Cheap to clone.
pub(crate) struct Grouped<B: Batch> {
    batch: Arc<B>,
    queue: Arc<Mutex<Queue<B>>>,
}

impl<B: Batch> Clone for Grouped<B> {
    fn clone(&self) -> Self {
        Self {
            batch: self.batch.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// The batch's task ended without answering (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the batched store call did not answer")]
pub(crate) struct Unanswered;

impl<B: Batch> Grouped<B> {
    pub(crate) fn new(batch: B) -> Self {
        Self {
            batch: Arc::new(batch),
            queue: Arc::new(Mutex::new(Queue {
                out: 0,
                waiting: VecDeque::new(),
            })),
        }
    }

    /// Makes `job`'s call, with whatever else waits when its turn comes. Must be called within
    /// a tokio runtime.
    pub(crate) async fn call(&self, job: B::Job) -> Result<B::Outcome, Unanswered> {
        let (done, outcome) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.waiting.push_back(Waiter {
                job,
                done,
                span: Span::current(),
            });
            if queue.out < MAX_OUT {
                queue.out += 1;
                Some(take(&mut queue))
            } else {
                None
            }
        };
        if let Some(first) = first {
            tokio::spawn(drive(self.batch.clone(), self.queue.clone(), first));
        }
        outcome.await.map_err(|_| Unanswered)
    }
}

/// Up to [`MAX_BATCH`] of the waiting, first come first.
fn take<B: Batch>(queue: &mut Queue<B>) -> Vec<Waiter<B>> {
    let n = queue.waiting.len().min(MAX_BATCH);
    queue.waiting.drain(..n).collect()
}

/// Should a batch panic, its callers are answered (with [`Unanswered`]), and so are those
/// waiting if no other batch is out to take them; the next call starts a batch again.
struct Unwinding<'a, B: Batch>(&'a Mutex<Queue<B>>);

impl<B: Batch> Drop for Unwinding<'_, B> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
            queue.out -= 1;
            if queue.out == 0 {
                queue.waiting.clear();
            }
        }
    }
}

/// Makes batches until nobody waits.
async fn drive<B: Batch>(batch: Arc<B>, queue: Arc<Mutex<Queue<B>>>, mut waiters: Vec<Waiter<B>>) {
    let _unwinding = Unwinding(&queue);
    loop {
        let span = waiters
            .first()
            .map_or_else(Span::none, |first| first.span.clone());
        let (jobs, answers): (Vec<B::Job>, Vec<oneshot::Sender<B::Outcome>>) =
            waiters.into_iter().map(|w| (w.job, w.done)).unzip();
        let outcomes = batch.run(jobs).instrument(span).await;
        for (answer, outcome) in answers.into_iter().zip(outcomes) {
            // A caller that gave up no longer listens.
            let _ = answer.send(outcome);
        }
        let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.waiting.is_empty() {
            queue.out -= 1;
            return;
        }
        waiters = take(&mut queue);
    }
}

/// One error for each of `n` callers, of the same kind (a conflict stays a conflict).
fn share(error: StoreError, n: usize) -> Vec<StoreError> {
    match error {
        StoreError::Conflict { key } => (0..n)
            .map(|_| StoreError::Conflict { key: key.clone() })
            .collect(),
        StoreError::InvalidEtag { source } => shared_causes(source, n)
            .map(|source| StoreError::InvalidEtag { source })
            .collect(),
        StoreError::Unavailable { source } => shared_causes(source, n)
            .map(|source| StoreError::Unavailable { source })
            .collect(),
        StoreError::Failed { source } => shared_causes(source, n)
            .map(|source| StoreError::Failed { source })
            .collect(),
    }
}

/// Reads of several keys each, made as one read of them all.
pub(crate) struct Reads<S>(pub(crate) S);

pub(crate) type ReadOutcome = Result<Vec<Option<Versioned<Vec<u8>>>>, StoreError>;

impl<S: KeyValueStore> Batch for Reads<S> {
    type Job = Vec<String>;
    type Outcome = ReadOutcome;

    async fn run(&self, jobs: Vec<Vec<String>>) -> Vec<ReadOutcome> {
        if let [keys] = jobs.as_slice() {
            return vec![self.0.get_many(keys).await];
        }
        let keys: Vec<String> = jobs.iter().flatten().cloned().collect();
        match self.0.get_many(&keys).await {
            Ok(values) => {
                let mut values = values.into_iter();
                jobs.iter()
                    .map(|job| Ok(values.by_ref().take(job.len()).collect()))
                    .collect()
            }
            Err(error) => share(error, jobs.len()).into_iter().map(Err).collect(),
        }
    }
}

/// A task record's write, with what tells whether it landed: the change it carries.
#[derive(Clone)]
pub(crate) struct RecordWrite {
    pub(crate) write: Write,
    pub(crate) revision: u64,
    pub(crate) nonce: Nonce,
}

/// Writes of task records, made as one write of them all.
///
/// One call of several writes can fail for one of them (a lost race) while the others land, or
/// (on a store that writes them in one transaction) land none. Either way the records are read
/// back: a write whose change is in its record landed; one whose key still holds what it was
/// to replace did not, and is made again alone; any other lost a race.
pub(crate) struct RecordWrites<S>(pub(crate) S);

impl<S: KeyValueStore> RecordWrites<S> {
    /// Tells from the record as read back what became of `job`: `None` if it did not land
    /// and nothing else did either.
    fn landed(
        job: &RecordWrite,
        stored: Option<&Versioned<Vec<u8>>>,
    ) -> Option<Result<(), StoreError>> {
        let replaced = match (&job.write.condition, stored) {
            (Condition::IfAbsent, None) => true,
            (Condition::IfMatch(etag), Some(stored)) => *etag == stored.etag,
            _ => false,
        };
        if replaced {
            return None;
        }
        let record = stored.and_then(|stored| from_json(&job.write.key, &stored.value).ok());
        Some(match record.map(|r| r.verdict(job.revision, job.nonce)) {
            Some(Verdict::Committed) => Ok(()),
            _ => Err(StoreError::Conflict {
                key: job.write.key.clone(),
            }),
        })
    }

    /// `job` alone, after its batch failed with its key as it was: a lost race is checked
    /// once more against the record (the batch's write may have landed late).
    async fn alone(&self, job: RecordWrite) -> Result<(), StoreError> {
        let key = job.write.key.clone();
        match self.0.put(job.write.clone()).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                let stored = self.0.get(&key).await?;
                match Self::landed(&job, stored.as_ref()) {
                    Some(Ok(())) => Ok(()),
                    _ => Err(StoreError::Conflict { key }),
                }
            }
            Err(error) => Err(error),
        }
    }
}

impl<S: KeyValueStore> Batch for RecordWrites<S> {
    type Job = RecordWrite;
    type Outcome = Result<(), StoreError>;

    async fn run(&self, mut jobs: Vec<RecordWrite>) -> Vec<Result<(), StoreError>> {
        if jobs.len() == 1 {
            let job = jobs.remove(0);
            return vec![self.0.put(job.write).await.map(drop)];
        }
        let writes = jobs.iter().map(|job| job.write.clone()).collect();
        let Err(error) = self.0.put_many(writes).await else {
            return jobs.iter().map(|_| Ok(())).collect();
        };
        let keys: Vec<String> = jobs.iter().map(|job| job.write.key.clone()).collect();
        let stored = match self.0.get_many(&keys).await {
            Ok(stored) => stored,
            Err(_) => return share(error, jobs.len()).into_iter().map(Err).collect(),
        };
        let outcomes = jobs
            .into_iter()
            .zip(stored)
            .map(|(job, stored)| async move {
                match Self::landed(&job, stored.as_ref()) {
                    Some(outcome) => outcome,
                    None => self.alone(job).await,
                }
            });
        futures::future::join_all(outcomes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{NewTask, Task, TaskEventType, TaskId, TaskRecord, TaskStatus, time},
        service::{
            fakes::{Faults, MemoryStore},
            store::records::{task_key, to_json},
        },
    };

    /// A record's write, with the change it makes.
    fn write_of(record: &TaskRecord, nonce: Nonce, condition: Condition) -> RecordWrite {
        RecordWrite {
            write: Write::new(task_key(record.id()), to_json(record), condition),
            revision: record.revision,
            nonce,
        }
    }

    /// A new task's record, stored.
    async fn stored_task(store: &MemoryStore) -> (TaskRecord, String) {
        let task = Task::create(
            TaskId::generate(),
            NewTask::parse("Learn Dapr", None, Some(2)).unwrap(),
            time::now(),
        );
        let planned = TaskRecord::create(task, Nonce::random());
        let key = task_key(planned.record.id());
        store
            .put(write_of(&planned.record, planned.nonce, Condition::IfAbsent).write)
            .await
            .unwrap();
        let etag = store.get(&key).await.unwrap().unwrap().etag;
        (planned.record, etag)
    }

    /// Completing the task stored as `record` at `etag`.
    fn completing(record: &TaskRecord, etag: &str) -> RecordWrite {
        let mut task = record.live().unwrap().clone();
        task.set_status(TaskStatus::Completed, time::now());
        let event_type = TaskEventType::StatusChanged(TaskStatus::Completed);
        let planned = record.update(task, event_type, Nonce::random()).unwrap();
        write_of(
            &planned.record,
            planned.nonce,
            Condition::IfMatch(etag.to_string()),
        )
    }

    fn landed(store: &MemoryStore, job: &RecordWrite) -> bool {
        store
            .peek(&job.write.key)
            .is_some_and(|stored| stored == job.write.value)
    }

    fn is_conflict(outcome: &Result<(), StoreError>) -> bool {
        matches!(outcome, Err(StoreError::Conflict { .. }))
    }

    #[tokio::test]
    async fn writes_together_go_in_one_call_and_a_lost_race_loses_only_its_own() {
        let store = MemoryStore::new();
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let (record, etag) = stored_task(&store).await;
            jobs.push(completing(&record, &etag));
        }
        // A second completion of the first task, from the same read: one of the two loses.
        let (first, etag) = (jobs[0].write.key.clone(), jobs[0].write.condition.clone());
        let Condition::IfMatch(etag) = etag else {
            unreachable!()
        };
        let record = from_json(&first, &store.peek(&first).unwrap()).unwrap();
        jobs.push(completing(&record, &etag));
        let calls = store.write_calls_of("task-").len();
        let values: Vec<Vec<u8>> = jobs.iter().map(|j| j.write.value.clone()).collect();

        let outcomes = RecordWrites(store.clone()).run(jobs).await;

        assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
        assert!(is_conflict(&outcomes[3]), "{outcomes:?}");
        assert_eq!(store.peek(&first), Some(values[0].clone()));
        assert_eq!(store.write_calls_of("task-").len() - calls, 1, "one call");
    }

    /// A store that writes a call's writes in one transaction: all of them or, if one's
    /// condition does not hold, none.
    #[derive(Clone)]
    struct AllOrNothing(MemoryStore);

    impl KeyValueStore for AllOrNothing {
        async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
            self.0.get(key).await
        }

        async fn get_many(
            &self,
            keys: &[String],
        ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, StoreError> {
            self.0.get_many(keys).await
        }

        async fn put(&self, write: Write) -> Result<Option<String>, StoreError> {
            self.0.put(write).await
        }

        async fn put_many(&self, writes: Vec<Write>) -> Result<(), StoreError> {
            let keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
            let stored = self.0.get_many(&keys).await?;
            let mut seen = std::collections::HashSet::new();
            for (write, stored) in writes.iter().zip(&stored) {
                let holds = match (&write.condition, stored) {
                    (Condition::Any, _) | (Condition::IfAbsent, None) => true,
                    (Condition::IfMatch(etag), Some(stored)) => *etag == stored.etag,
                    _ => false,
                };
                if !holds || !seen.insert(&write.key) {
                    return Err(StoreError::Conflict {
                        key: write.key.clone(),
                    });
                }
            }
            self.0.put_many(writes).await
        }

        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.0.delete(key).await
        }
    }

    #[tokio::test]
    async fn writes_a_transaction_refused_together_are_made_again_alone() {
        let store = MemoryStore::new();
        let (record, etag) = stored_task(&store).await;
        let (other, other_etag) = stored_task(&store).await;
        let jobs = vec![
            completing(&record, &etag),
            completing(&other, &other_etag),
            completing(&record, &etag),
        ];
        let first = jobs[0].write.key.clone();
        let values: Vec<Vec<u8>> = jobs.iter().map(|j| j.write.value.clone()).collect();

        let outcomes = RecordWrites(AllOrNothing(store.clone())).run(jobs).await;

        assert!(outcomes[1].is_ok(), "{outcomes:?}");
        assert_eq!(store.peek(&task_key(other.id())), Some(values[1].clone()));
        // Of the two completions of one task, one landed and the other lost the race.
        let winner = match (&outcomes[0], &outcomes[2]) {
            (Ok(()), lost) if is_conflict(lost) => 0,
            (lost, Ok(())) if is_conflict(lost) => 2,
            _ => panic!("one completion lands, one loses: {outcomes:?}"),
        };
        assert_eq!(store.peek(&first), Some(values[winner].clone()));
    }

    #[tokio::test]
    async fn a_batch_cut_short_answers_what_landed_and_fails_what_did_not() {
        let faults = Faults::default();
        let store = MemoryStore::with_faults(faults.clone());
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let (record, etag) = stored_task(&store).await;
            jobs.push(completing(&record, &etag));
        }
        faults.crash_after(1);

        let outcomes = RecordWrites(store.clone()).run(jobs.clone()).await;

        // The first write landed before the crash; the others did not, nor did their retries.
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        assert!(landed(&store, &jobs[0]));
        for (job, outcome) in jobs.iter().zip(&outcomes).skip(1) {
            assert!(
                matches!(outcome, Err(StoreError::Unavailable { .. })),
                "{outcomes:?}"
            );
            assert!(!landed(&store, job), "{} did not land", job.write.key);
        }
    }

    #[tokio::test]
    async fn calls_made_while_a_few_are_out_wait_for_them_and_go_together() {
        let store = MemoryStore::new();
        for n in 0..MAX_OUT + 6 {
            store.put_raw(&format!("key-{n}"), format!("value {n}").as_bytes());
        }
        let reads = Grouped::new(Reads(store.clone()));
        let calls =
            (0..MAX_OUT + 6).map(|n| reads.call(vec![format!("key-{n}"), "absent".to_string()]));

        let outcomes = futures::future::join_all(calls).await;

        for (n, outcome) in outcomes.into_iter().enumerate() {
            let values = outcome.unwrap().unwrap();
            assert_eq!(values.len(), 2);
            assert_eq!(
                values[0].as_ref().unwrap().value,
                format!("value {n}").into_bytes()
            );
            assert!(values[1].is_none());
        }
        // The first few alone, at once; the six that came while they were out, together.
        assert_eq!(store.reads(), MAX_OUT + 1);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_stops_waiting_and_the_others_are_answered() {
        let store = MemoryStore::new();
        let (record, etag) = stored_task(&store).await;
        let (other, other_etag) = stored_task(&store).await;
        let writes = Grouped::new(RecordWrites(store.clone()));
        let gives_up = completing(&record, &etag);
        let stays = completing(&other, &other_etag);
        let (given_up, stayed) = (gives_up.write.value.clone(), stays.write.value.clone());

        let mut first = Box::pin(writes.call(gives_up));
        assert!(futures::poll!(&mut first).is_pending());
        let second = writes.call(stays);
        drop(first);

        second.await.unwrap().unwrap();
        // The write of the caller that gave up was under way: it is made all the same.
        assert_eq!(store.peek(&task_key(record.id())), Some(given_up));
        assert_eq!(store.peek(&task_key(other.id())), Some(stayed));
    }
}
