//! Task use cases: create, get, update, change status, delete.
//!
//! Every change goes through [`Tasks::commit`], in this order:
//!
//! 1. the task enters the list its new status and priority put it in (if that changes);
//! 2. its event is staged on the outbox topic;
//! 3. the record is written, guarded by the ETag it was read at (a new task: only if absent);
//! 4. the task leaves its old list.
//!
//! A crash or failure between any two steps loses nothing and invents nothing: an extra list
//! entry is skipped by readers, a staged event whose write did not land is never published (the
//! relay checks the record), and a write that landed always has its staged event.
//!
//! On the in-memory broker, which keeps nothing across a restart anyway and delivers one message
//! of a topic at a time, step 2 is replaced by publishing the event right after step 3.
//!
//! A change that moves the task's alarms (due date, reminder) is followed by bringing its jobs
//! in step with the record ([`super::Alarms`]): by the relay once the change is confirmed, or,
//! on the in-memory broker, right after the publish.
//!
//! The ETag callers see is the task's revision: it changes with every change, and a write
//! answers with it without reading the task back (the store's own ETag, which guards every
//! write, only comes with a read).

use chrono::{DateTime, Utc};

use super::{Alarms, Error};
use crate::{
    domain::{
        Alarm, NewTask, Nonce, Planned, RequestId, Task, TaskChanges, TaskEventType, TaskId,
        TaskRecord, TaskStatus, Versioned, Violations, time,
    },
    sidecar::{
        SidecarError, backoff,
        index::{ListId, Position, TaskIndex},
        jobs::AlarmJob,
        outbox::{Outbox, StagedEvent},
        requests::CreateRequests,
        state::MAX_ATTEMPTS,
        tasks::TaskStore,
    },
};

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
pub(super) fn list_of(record: &TaskRecord) -> Option<ListId> {
    record.live().map(|task| ListId {
        status: task.status,
        priority: task.priority,
    })
}

/// A record as callers see it: the live task, and its revision as the ETag.
fn visible(record: &TaskRecord) -> Option<Versioned<Task>> {
    record.live().map(|task| Versioned {
        value: task.clone(),
        etag: record.revision.to_string(),
    })
}

/// A task's place in every list.
pub(super) fn position_of(record: &TaskRecord) -> Position {
    Position {
        micros: record.created_at().timestamp_micros(),
        id: record.id().clone(),
    }
}

/// The task use cases, over the state store, the list index and the outbox.
#[derive(Debug, Clone)]
pub struct Tasks {
    pub(super) store: TaskStore,
    pub(super) index: TaskIndex,
    outbox: Outbox,
    requests: CreateRequests,
    alarms: Alarms,
}

impl Tasks {
    pub fn new(
        store: TaskStore,
        index: TaskIndex,
        outbox: Outbox,
        requests: CreateRequests,
        alarms: Alarms,
    ) -> Self {
        Self {
            store,
            index,
            outbox,
            requests,
            alarms,
        }
    }

    /// Creates a pending task. With a `request_id`, a repeated call returns the task the first
    /// one created and changes nothing.
    pub async fn create(
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
        let etag = planned.record.revision.to_string();
        match self.commit(None, planned).await {
            Ok(()) => Ok(Versioned { value: task, etag }),
            // Only a retry with the same request id can have written this id first.
            Err(Attempt::LostRace) => match self.read(&id).await? {
                Some(existing) => visible(&existing.value).ok_or(Error::NotFound(id)),
                None => Err(Error::unavailable(
                    "the task was neither written nor found; retry",
                    Some(id),
                )),
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
                let id = TaskId::parse(&reservation.task_id).map_err(|v| {
                    Error::Internal(SidecarError::Corrupt {
                        key: format!("create-request-{}", request_id.as_str()),
                        reason: v.description,
                    })
                })?;
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
        Err(Error::unavailable(
            "the request id could not be claimed; retry",
            None,
        ))
    }

    /// The record of `id`, indexing it first if another implementation stored it (so tasks the
    /// original stored become listable once task-api reads them).
    async fn read(&self, id: &TaskId) -> Result<Option<Versioned<TaskRecord>>, Error> {
        let stored = self.store.get(id).await?;
        if let Some(stored) = &stored {
            self.adopt(&stored.value).await?;
        }
        Ok(stored)
    }

    /// Lists a task written without revisions by another implementation.
    pub(super) async fn adopt(&self, record: &TaskRecord) -> Result<(), Error> {
        if record.revision == 0
            && let Some(list) = list_of(record)
        {
            self.index.insert(list, position_of(record), 0).await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: &TaskId) -> Result<Versioned<Task>, Error> {
        self.read(id)
            .await?
            .and_then(|stored| visible(&stored.value))
            .ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Tasks another implementation stored become listable: each id is read (and indexed).
    /// Returns how many were live tasks.
    pub async fn adopt_ids(&self, ids: &[TaskId]) -> Result<usize, Error> {
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

    pub async fn update(
        &self,
        id: &TaskId,
        changes: &TaskChanges,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, |current, now| {
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
    pub async fn announce(&self, job: &AlarmJob) -> Result<bool, Error> {
        let mut announced = false;
        let result = self
            .apply(&job.task_id, None, |current, _| {
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
    pub async fn change_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        expected_etag: Option<&str>,
    ) -> Result<Versioned<Task>, Error> {
        self.apply(id, expected_etag, |current, now| {
            let mut task = current.clone();
            if task.set_status(status, now) {
                Plan::Replace(task, TaskEventType::StatusChanged(status))
            } else {
                Plan::Unchanged
            }
        })
        .await
    }

    pub async fn delete(&self, id: &TaskId, expected_etag: Option<&str>) -> Result<(), Error> {
        self.apply(id, expected_etag, |_, _| Plan::Delete)
            .await
            .map(|_| ())
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
        mut plan: F,
    ) -> Result<Versioned<Task>, Error>
    where
        F: FnMut(&Task, DateTime<Utc>) -> Plan,
    {
        if let Some(expected) = expected_etag
            && expected.parse::<u64>().is_err()
        {
            return Err(Error::Invalid(Violations::single(
                "etag",
                "is not an ETag this service issued (ETags are task revisions: 1, 2, 3, ...)",
            )));
        }
        for attempt in 1..=MAX_ATTEMPTS {
            let Some(current) = self.read(id).await? else {
                return Err(Error::NotFound(id.clone()));
            };
            let Some(task) = current.value.live().cloned() else {
                return Err(Error::NotFound(id.clone()));
            };
            let revision = current.value.revision.to_string();
            if let Some(expected) = expected_etag
                && expected != revision
            {
                return Err(stale(&task, &revision));
            }
            let now = time::now();
            let nonce = Nonce::random();
            let planned = match plan(&task, now) {
                Plan::Unchanged => {
                    return Ok(Versioned {
                        value: task,
                        etag: revision,
                    });
                }
                Plan::Replace(changed, event_type) => {
                    current.value.update(changed, event_type, nonce)
                }
                Plan::Announce(changed, alarm) => current
                    .value
                    .update(changed, TaskEventType::Announced(alarm), nonce)
                    .map(|mut planned| {
                        planned.event.timestamp = now;
                        planned
                    }),
                Plan::Delete => current.value.delete(now, nonce),
                Plan::Refuse(violations) => return Err(Error::Invalid(violations)),
            };
            let Some(planned) = planned else {
                return Err(Error::NotFound(id.clone()));
            };
            // A deletion answers with the task as it was.
            let written = Versioned {
                value: planned.record.live().cloned().unwrap_or(task),
                etag: planned.record.revision.to_string(),
            };
            match self.commit(Some(&current), planned).await {
                Ok(()) => return Ok(written),
                Err(Attempt::LostRace) if expected_etag.is_some() => {
                    return match self.read(id).await?.and_then(|now| visible(&now.value)) {
                        Some(now) => Err(stale(&now.value, &now.etag)),
                        None => Err(Error::NotFound(id.clone())),
                    };
                }
                Err(Attempt::LostRace) => backoff(attempt).await,
                Err(Attempt::Failed(error)) => return Err(error),
            }
        }
        Err(Error::Contended {
            id: id.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Writes a planned change with its event and list entries (see the module docs).
    async fn commit(
        &self,
        current: Option<&Versioned<TaskRecord>>,
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
        // A record stored without revisions may not be listed yet: treat it as in no list.
        let before = current
            .filter(|c| c.value.revision > 0)
            .and_then(|c| list_of(&c.value));
        let after = list_of(&record);
        let failed = |error: SidecarError, written: bool| {
            Attempt::Failed(Error::from_write(error, &id, written))
        };

        let relayed = self.outbox.durable().await.map_err(|e| failed(e, false))?;
        // Steps 1 and 2 depend on nothing but each other's completion before step 3.
        let enter = async {
            match after {
                Some(list) if after != before => {
                    self.index
                        .insert(list, position.clone(), record.revision)
                        .await
                }
                _ => Ok(()),
            }
        };
        let stage = async {
            if !relayed {
                return Ok(());
            }
            let staged = StagedEvent {
                event: event.clone(),
                nonce,
                staged_at: time::now(),
                reschedules,
            };
            self.outbox.stage(&staged).await
        };
        tokio::try_join!(enter, stage).map_err(|e| failed(e, false))?;
        match self
            .store
            .put(&record, current.map(|c| c.etag.as_str()))
            .await
        {
            Ok(()) => {}
            Err(SidecarError::EtagMismatch(_)) => return Err(Attempt::LostRace),
            Err(error) => return Err(failed(error, true)),
        }
        if !relayed && let Err(error) = self.outbox.publish(&event).await {
            return Err(Attempt::Failed(Error::unavailable(
                format!("task {id} was saved, but its event could not be published: {error}"),
                Some(id),
            )));
        }
        if !relayed
            && reschedules
            && let Err(error) = self.alarms.sync(&id).await
        {
            return Err(Attempt::Failed(Error::unavailable(
                format!("task {id} was saved, but its due date could not be scheduled: {error}"),
                Some(id),
            )));
        }
        if let Some(list) = before
            && before != after
        {
            self.index
                .remove_soon(list, position, record.revision.saturating_sub(1));
        }
        Ok(())
    }
}

enum Claim {
    New(TaskId),
    /// Claimed before, for this task, created at this time (when the reservation says).
    Repeated(TaskId, Option<DateTime<Utc>>),
}

fn stale(current: &Task, etag: &str) -> Error {
    Error::StaleEtag {
        id: current.id.clone(),
        current_etag: etag.to_string(),
        current_status: current.status,
    }
}
