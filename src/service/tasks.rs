//! Task use cases: create, get, update, change status, delete, announce an alarm.
//!
//! Every change goes through [`Tasks::commit`], in this order:
//!
//! 1. the task enters the list its new status and priority put it in (if that changes), and
//!    its event is staged on the outbox topic, both at once;
//! 2. the record is written, guarded by the ETag it was read at (a new task: only if absent),
//!    with the change among its unpublished changes;
//! 3. the task leaves its old list (in the background).
//!
//! A crash or failure between any two steps loses nothing and invents nothing: an extra list
//! entry is skipped by readers, a staged event whose write did not land is never published (the
//! relay checks the record), and a write that landed always has its staged event. The tests at
//! the end of this file crash each kind of change after each of its side effects and check
//! exactly that.
//!
//! The record's read and its write are each made together with those of the changes in flight
//! at the same time ([`grouped`](super::store::grouped)); a change on its own waits for nothing.
//!
//! The ETag callers see is the task's revision: it changes with every change, and a write
//! answers with it without reading the task back (the store's own ETag, which guards every
//! write, only comes with a read).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use super::{
    Error, backoff,
    in_flight::{InFlight, Local},
    index::{ListId, Position, TaskIndex},
    outbox::{Outbox, StagedEvent},
    ports::{AlarmJob, Ports, StoreError},
    publisher::{Outgoing, Publisher},
    store::{
        MAX_ATTEMPTS,
        published::{LedgerAsRead, Ledgers},
        records::TaskRecords,
        requests::CreateRequests,
    },
};
use crate::{
    domain::{
        Alarm, NewTask, Nonce, Planned, RequestId, Task, TaskChanges, TaskEvent, TaskEventType,
        TaskId, TaskRecord, TaskStatus, Versioned, Violations, time,
    },
    telemetry::{self, metrics::METRICS, spans},
};

/// A record's unpublished changes are checked against its ledger once they are this many.
const TRIM_AT: usize = 8;
/// A task with this many changes whose events are not published takes no more changes until
/// the relay catches up (its record would otherwise grow without bound).
pub(crate) const MAX_UNPUBLISHED: usize = 1024;

/// What a read-modify-write does with the task it read.
enum Plan {
    Unchanged,
    Replace(Task, TaskEventType),
    /// Announce an alarm: a change whose event is stamped with the time it fired.
    Announce(Task, Alarm),
    Delete,
    /// The request does not fit the task as it is now.
    Refuse(Violations),
}

/// Why one attempt to write did not land.
enum Attempt {
    /// Someone else wrote first.
    LostRace,
    Failed(Error),
}

/// The list a record belongs in, `None` for a deleted task.
pub(crate) fn list_of(record: &TaskRecord) -> Option<ListId> {
    record.live().map(|task| ListId {
        status: task.status,
        priority: task.priority,
    })
}

/// A record as callers see it: the live task, and its revision as the ETag.
fn visible(record: &TaskRecord) -> Option<Versioned<Task>> {
    record.live().map(|task| Versioned {
        value: task.clone(),
        etag: record.etag(),
    })
}

/// A task's place in every list.
pub(crate) fn position_of(record: &TaskRecord) -> Position {
    Position {
        micros: record.created_at().timestamp_micros(),
        id: record.id().clone(),
    }
}

/// The task use cases, over the state store, the list index and the outbox.
pub(crate) struct Tasks<P: Ports> {
    pub(super) records: TaskRecords<P::Store>,
    ledgers: Ledgers<P::Store>,
    pub(super) index: TaskIndex<P::Store>,
    requests: CreateRequests<P::Store>,
    outbox: Outbox<P::Broker>,
    in_flight: InFlight,
    publisher: Publisher<P>,
    max_unpublished: usize,
}

impl<P: Ports> Clone for Tasks<P> {
    fn clone(&self) -> Self {
        Self {
            records: self.records.clone(),
            ledgers: self.ledgers.clone(),
            index: self.index.clone(),
            requests: self.requests.clone(),
            outbox: self.outbox.clone(),
            in_flight: self.in_flight.clone(),
            publisher: self.publisher.clone(),
            max_unpublished: self.max_unpublished,
        }
    }
}

/// How long deleted tasks and request ids are remembered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) tombstones: Duration,
    pub(crate) request_ids: Duration,
}

impl<P: Ports> Tasks<P> {
    /// Must be called within a tokio runtime (the list index and the outbox start their
    /// batching tasks).
    pub(crate) fn new(
        store: P::Store,
        outbox: Outbox<P::Broker>,
        in_flight: InFlight,
        retention: Retention,
        publisher: Publisher<P>,
    ) -> Self {
        Self {
            records: TaskRecords::new(store.clone(), retention.tombstones),
            ledgers: Ledgers::new(store.clone()),
            index: TaskIndex::new(store.clone()),
            requests: CreateRequests::new(store, retention.request_ids),
            outbox,
            in_flight,
            publisher,
            max_unpublished: MAX_UNPUBLISHED,
        }
    }

    /// A lower cap on unpublished changes per task (tests reach it quickly).
    #[cfg(test)]
    pub(crate) fn with_max_unpublished(mut self, max: usize) -> Self {
        self.max_unpublished = max;
        self
    }

    pub(crate) fn records(&self) -> &TaskRecords<P::Store> {
        &self.records
    }

    /// Creates a pending task. With a `request_id`, a repeated call returns the task the first
    /// one created and changes nothing.
    pub(crate) async fn create(
        &self,
        new: NewTask,
        request_id: Option<&RequestId>,
    ) -> Result<Versioned<Task>, Error> {
        let now = time::now();
        let (id, created_at) = match request_id {
            None => (TaskId::generate(), now),
            Some(request_id) => match self.claim(&new, request_id, now).await? {
                Claim::New(id) => (id, now),
                Claim::Repeated(id, created_at) => {
                    if let Some(existing) = self.read(&id).await? {
                        return visible(&existing.value).ok_or(Error::NotFound(id));
                    }
                    // Claimed by a call that did not get to write the task: finish its work,
                    // at the position that call entered in the list.
                    (id, created_at.unwrap_or(now))
                }
            },
        };
        let task = Task::create(id.clone(), new, created_at);
        let planned = TaskRecord::create(task.clone(), Nonce::random());
        let etag = planned.record.etag();
        // A new task has no ledger yet: its first event's is written as new.
        let ledger = Some(LedgerAsRead(None));
        match self.commit(None, ledger, planned).await {
            Ok(()) => Ok(Versioned { value: task, etag }),
            // Only a retry with the same request id can have written this id first.
            Err(Attempt::LostRace) => match self.read(&id).await? {
                Some(existing) => visible(&existing.value).ok_or(Error::NotFound(id)),
                None => Err(Error::Contended { id, attempts: 1 }),
            },
            Err(Attempt::Failed(error)) => Err(error),
        }
    }

    async fn claim(
        &self,
        new: &NewTask,
        request_id: &RequestId,
        now: DateTime<Utc>,
    ) -> Result<Claim, Error> {
        let fingerprint = new.fingerprint();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(reservation) = self.requests.find(request_id.as_str()).await? {
                if reservation.fingerprint != fingerprint {
                    return Err(Error::RequestIdReused {
                        request_id: request_id.clone(),
                        task_id: reservation.task_id,
                    });
                }
                let id = TaskId::parse(&reservation.task_id)
                    .map_err(|violation| Error::Internal(Box::new(violation)))?;
                let created_at = reservation.created_at.as_deref().and_then(time::parse);
                return Ok(Claim::Repeated(id, created_at));
            }
            let id = TaskId::generate();
            if self
                .requests
                .claim(request_id.as_str(), &id, &fingerprint, now)
                .await?
            {
                return Ok(Claim::New(id));
            }
        }
        Err(Error::RequestIdContended {
            request_id: request_id.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The record of `id`, indexing it first if another implementation stored it (so tasks the
    /// original stored become listable once task-api reads them).
    async fn read(&self, id: &TaskId) -> Result<Option<Versioned<TaskRecord>>, Error> {
        let stored = self.records.get(id).await?;
        if let Some(stored) = &stored {
            self.adopt(&stored.value).await?;
        }
        Ok(stored)
    }

    /// Lists a task another implementation wrote last.
    pub(super) async fn adopt(&self, record: &TaskRecord) -> Result<(), Error> {
        if record.foreign
            && let Some(list) = list_of(record)
        {
            self.index
                .insert(list, position_of(record), record.revision)
                .await
                .map_err(|e| Error::from_index(&e, record.id()))?;
        }
        Ok(())
    }

    pub(crate) async fn get(&self, id: &TaskId) -> Result<Versioned<Task>, Error> {
        self.read(id)
            .await?
            .and_then(|stored| visible(&stored.value))
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Tasks another implementation stored become listable: each id is read (and indexed).
    /// Returns how many were live tasks.
    pub(crate) async fn adopt_ids(&self, ids: &[TaskId]) -> Result<usize, Error> {
        let mut live = 0;
        for id in ids {
            if let Some(stored) = self.read(id).await?
                && stored.value.live().is_some()
            {
                live += 1;
            }
        }
        Ok(live)
    }

    pub(crate) async fn update(
        &self,
        id: &TaskId,
        changes: &TaskChanges,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, "update", |current, now| {
            let mut task = current.clone();
            match task.apply(changes, now) {
                Ok(true) => Plan::Replace(task, TaskEventType::Updated),
                Ok(false) => Plan::Unchanged,
                Err(violations) => Plan::Refuse(violations),
            }
        })
        .await
    }

    /// Announces a fired alarm job, once: only if the task still has that alarm pending for
    /// that time (not completed, not moved, not announced yet). Returns whether it announced.
    pub(crate) async fn announce(&self, job: &AlarmJob) -> Result<bool, Error> {
        let mut announced = false;
        let result = self
            .apply(&job.task_id, None, "announce", |current, _| {
                announced = current.deadline.fires(current.status, job.alarm, job.at);
                if !announced {
                    return Plan::Unchanged;
                }
                let mut task = current.clone();
                task.deadline.announce(job.alarm);
                Plan::Announce(task, job.alarm)
            })
            .await;
        match result {
            Ok(_) => Ok(announced),
            // Deleted since: nothing to announce.
            Err(Error::NotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Setting the status a task already has changes nothing and publishes nothing.
    pub(crate) async fn change_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, "change_status", |current, now| {
            let mut task = current.clone();
            if task.set_status(status, now) {
                Plan::Replace(task, TaskEventType::StatusChanged(status))
            } else {
                Plan::Unchanged
            }
        })
        .await
    }

    pub(crate) async fn delete(
        &self,
        id: &TaskId,
        expected_etag: Option<&str>,
    ) -> Result<(), Error> {
        self.apply(id, expected_etag, "delete", |_, _| Plan::Delete)
            .await
            .map(|_| ())
    }

    /// The stored record of live task `id` (with its ledger, read in the same call), if the
    /// caller's ETag (when given) is still its revision.
    async fn read_live(&self, id: &TaskId, expected_etag: Option<&str>) -> Result<Live, Error> {
        let (stored, ledger) = self.records.get_with_ledger(id).await?;
        let Some(stored) = stored else {
            return Err(Error::NotFound(id.clone()));
        };
        self.adopt(&stored.value).await?;
        let Some(task) = stored.value.live().cloned() else {
            return Err(Error::NotFound(id.clone()));
        };
        let revision = stored.value.etag();
        if let Some(expected) = expected_etag
            && expected != revision
        {
            return Err(stale(&task, &revision));
        }
        Ok(Live {
            stored,
            task,
            revision,
            ledger,
        })
    }

    /// Optimistic read-modify-write: `plan` decides from the current task what to write, and
    /// the write is guarded by the ETag read. With the caller's ETag, a conflict is the caller's
    /// to resolve (ABORTED). Without one, the plan is made again on a fresh read, a bounded
    /// number of times, so concurrent writers never overwrite each other's changes.
    ///
    /// Returns the task as saved (or, for a delete, as it was).
    async fn apply<F>(
        &self,
        id: &TaskId,
        expected_etag: Option<&str>,
        operation: &'static str,
        mut plan: F,
    ) -> Result<Versioned<Task>, Error>
    where
        F: FnMut(&Task, DateTime<Utc>) -> Plan,
    {
        check_etag_form(expected_etag)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let Live {
                stored: mut current,
                task,
                revision,
                ledger,
            } = self.read_live(id, expected_etag).await?;
            let now = time::now();
            let nonce = Nonce::random();
            let changed = match plan(&task, now) {
                Plan::Unchanged => {
                    return Ok(Versioned {
                        value: task,
                        etag: revision,
                    });
                }
                Plan::Refuse(violations) => return Err(Error::Invalid(violations)),
                changed => changed,
            };
            self.forget_published(&mut current.value, ledger.as_ref())
                .await?;
            let Some(planned) = planned(&current.value, changed, now, nonce) else {
                return Err(Error::NotFound(id.clone()));
            };
            // A deletion answers with the task as it was.
            let written = Versioned {
                value: planned.record.live().cloned().unwrap_or(task),
                etag: planned.record.etag(),
            };
            match self.commit(Some(&current), ledger, planned).await {
                Ok(()) => return Ok(written),
                Err(Attempt::LostRace) => {
                    METRICS.etag_conflicts.with_label_values(&[operation]).inc();
                    if expected_etag.is_some() {
                        return Err(self.stale_now(id).await);
                    }
                    backoff(attempt).await;
                }
                Err(Attempt::Failed(error)) => return Err(error),
            }
        }
        Err(Error::Contended {
            id: id.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The caller's ETag lost a race: the task as it is now is the caller's to look at.
    async fn stale_now(&self, id: &TaskId) -> Error {
        match self.read(id).await {
            Ok(now) => match now.and_then(|now| visible(&now.value)) {
                Some(now) => stale(&now.value, &now.etag),
                None => Error::NotFound(id.clone()),
            },
            Err(error) => error,
        }
    }

    /// Drops from `record` the changes whose events the relay has recorded as published, once
    /// there are enough of them to be worth a read; refuses a task whose events are far behind.
    async fn forget_published(
        &self,
        record: &mut TaskRecord,
        read: Option<&LedgerAsRead>,
    ) -> Result<(), Error> {
        if record.unpublished.len() < TRIM_AT {
            return Ok(());
        }
        let ledger = match read {
            Some(LedgerAsRead(ledger)) => ledger.clone(),
            None => self
                .ledgers
                .get_many(std::slice::from_ref(record.id()))
                .await?
                .pop()
                .transpose()?
                .flatten(),
        };
        if let Some(ledger) = ledger {
            record
                .unpublished
                .forget_published(ledger.value.revisions());
        }
        if record.unpublished.len() >= self.max_unpublished {
            return Err(Error::Backlogged {
                task_id: record.id().clone(),
                unpublished: record.unpublished.len(),
            });
        }
        Ok(())
    }

    /// Writes a planned change with its event and list entries (see the module docs).
    async fn commit(
        &self,
        current: Option<&Versioned<TaskRecord>>,
        ledger: Option<LedgerAsRead>,
        planned: Planned,
    ) -> Result<(), Attempt> {
        let Planned {
            record,
            event,
            nonce,
            reschedules,
        } = planned;
        let id = record.id().clone();
        let position = position_of(&record);
        // A record another implementation wrote may not be listed yet: treat it as in none.
        let before = current
            .filter(|c| !c.value.foreign)
            .and_then(|c| list_of(&c.value));
        let after = list_of(&record);
        let write = self.in_flight.begin(&id, record.revision, nonce);

        let enter = async {
            match after {
                Some(list) if after != before => self.enter(list, &position, &record).await,
                _ => Ok(()),
            }
        };
        let staging = spans::stage(event.event_type.as_str());
        let stage = self
            .stage_event(&id, event, nonce, reschedules)
            .instrument(staging);
        let ((), staged) = tokio::try_join!(enter, stage)?;
        match self
            .records
            .put(&record, nonce, current.map(|c| c.etag.as_str()))
            .await
        {
            Ok(()) => {
                // Its writer publishes it at once; the staged copy is there if that fails.
                // Offered before the write is known as committed: a relay that learns of the
                // commit then finds the publish under way, where it would otherwise take the
                // change for one its writer left alone and put its staged copy off for seconds.
                self.publisher.offer(Outgoing {
                    id: id.clone(),
                    staged,
                    record: record.clone(),
                    ledger,
                });
                write.finish(Local::Committed);
            }
            Err(StoreError::Conflict { .. }) => {
                write.finish(Local::Lost);
                return Err(Attempt::LostRace);
            }
            Err(error) => return Err(Attempt::Failed(Error::from_store(error, Some(&id), true))),
        }
        if let Some(list) = before
            && before != after
        {
            self.index
                .remove_soon(list, position, record.revision.saturating_sub(1));
        }
        Ok(())
    }

    /// Enters the task in `list` at its revision.
    async fn enter(
        &self,
        list: ListId,
        position: &Position,
        record: &TaskRecord,
    ) -> Result<(), Attempt> {
        self.index
            .insert(list, position.clone(), record.revision)
            .await
            .map_err(|e| Attempt::Failed(Error::from_index(&e, record.id())))
    }

    /// Stages a change's event, carrying the trace context of the span it is staged in.
    async fn stage_event(
        &self,
        id: &TaskId,
        event: TaskEvent,
        nonce: Nonce,
        reschedules: bool,
    ) -> Result<StagedEvent, Attempt> {
        let staged = StagedEvent {
            event,
            nonce,
            staged_at: time::now(),
            reschedules,
            attempt: 0,
            not_before: None,
            grace_until: None,
            // The relay's publish continues it (or, unsampled, passes it on).
            traceparent: spans::current_traceparent().or_else(telemetry::request_traceparent),
        };
        self.outbox
            .stage(staged.clone())
            .await
            .map_err(|e| Attempt::Failed(Error::from_broker(e, Some(id))))?;
        Ok(staged)
    }
}

/// A live task as read for a change.
struct Live {
    stored: Versioned<TaskRecord>,
    task: Task,
    /// The task's revision: the ETag callers know it by.
    revision: String,
    ledger: Option<LedgerAsRead>,
}

enum Claim {
    New(TaskId),
    /// Claimed before, for this task, created at this time (when the reservation says).
    Repeated(TaskId, Option<DateTime<Utc>>),
}

/// Refuses an ETag this service cannot have issued, before anything is read.
fn check_etag_form(expected_etag: Option<&str>) -> Result<(), Error> {
    match expected_etag {
        Some(expected) if expected.parse::<u64>().is_err() => {
            Err(Error::Invalid(Violations::single(
                "etag",
                "is not an ETag this service issued (ETags are task revisions: 1, 2, 3, ...)",
            )))
        }
        _ => Ok(()),
    }
}

/// The write a changing plan makes of `record` (`None`: the task is gone).
fn planned(
    record: &TaskRecord,
    changed: Plan,
    now: DateTime<Utc>,
    nonce: Nonce,
) -> Option<Planned> {
    match changed {
        Plan::Replace(task, event_type) => record.update(task, event_type, nonce),
        Plan::Announce(task, alarm) => record
            .update(task, TaskEventType::Announced(alarm), nonce)
            .map(|mut planned| {
                planned.event.timestamp = now;
                planned
            }),
        Plan::Delete => record.delete(now, nonce),
        Plan::Unchanged | Plan::Refuse(_) => unreachable!("answered by apply"),
    }
}

fn stale(current: &Task, etag: &str) -> Error {
    Error::StaleEtag {
        id: current.id.clone(),
        current_etag: etag.to_string(),
        current_status: current.status,
    }
}
