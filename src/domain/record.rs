//! A task as the store keeps it: alive or deleted, at a revision, with the changes whose events
//! are not yet known to be published.
//!
//! A deleted task is not removed but replaced by a [`Tombstone`] (which the store expires after
//! a while). The key then never disappears under a concurrent writer: every write is guarded by
//! the ETag of the record it read, and a tombstone's ETag is not a live task's, so no write that
//! raced a delete can bring the task back. (Some state stores accept an ETag-guarded write to a
//! missing key as a create; a tombstone leaves them nothing to create.)

use chrono::{DateTime, Utc};

use super::{
    Alarm, Change, Nonce, Priority, Task, TaskEvent, TaskEventType, TaskId, TaskStatus,
    Unpublished, Verdict,
};

/// What remains of a deleted task: enough to keep it out of lists and to check claims about its
/// changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub(crate) id: TaskId,
    pub(crate) status: TaskStatus,
    pub(crate) priority: Priority,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) deleted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Live(Task),
    Deleted(Tombstone),
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub state: TaskState,
    /// Grows with every change, whoever made it, and never repeats (see `foreign` below).
    pub revision: u64,
    /// Committed changes whose events are not yet known to be published.
    pub unpublished: Unpublished,
    /// Written last by another implementation (the Python original), which keeps no revision:
    /// the task may be missing from the lists, and its revision is derived from its last update.
    pub foreign: bool,
}

/// A change about to be written: the record after it, and the event it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub record: TaskRecord,
    pub event: TaskEvent,
    pub(crate) nonce: Nonce,
    /// Whether the change alters the alarms the scheduler must hold for the task (a due date
    /// set, moved or cleared; a completion, reopening or deletion of a task with one).
    pub(crate) reschedules: bool,
}

impl TaskRecord {
    /// A task another implementation stored last, without a revision. Its revision is the time
    /// of that write in microseconds: every write of the original sets `updated_at` to its
    /// current time, so a task the original rewrote between two changes of ours gets a revision
    /// above every one handed out before (a change of ours takes far longer than a
    /// microsecond), and an ETag read before the rewrite no longer matches after it.
    pub(crate) fn foreign(task: Task) -> Self {
        let revision = u64::try_from(task.updated_at.timestamp_micros())
            .unwrap_or(0)
            .max(1);
        Self {
            state: TaskState::Live(task),
            revision,
            unpublished: Unpublished::default(),
            foreign: true,
        }
    }

    /// The first record of a new task, and its `task.created` event.
    pub fn create(task: Task, nonce: Nonce) -> Planned {
        let nothing = Self {
            state: TaskState::Live(task.clone()),
            revision: 0,
            unpublished: Unpublished::default(),
            foreign: false,
        };
        let mut planned = nothing.advance(TaskState::Live(task), TaskEventType::Created, nonce);
        // Nothing was scheduled for a task that did not exist.
        planned.reschedules = !planned.record.pending_alarms().is_empty();
        planned
    }

    pub fn id(&self) -> &TaskId {
        match &self.state {
            TaskState::Live(task) => &task.id,
            TaskState::Deleted(tombstone) => &tombstone.id,
        }
    }

    pub fn live(&self) -> Option<&Task> {
        match &self.state {
            TaskState::Live(task) => Some(task),
            TaskState::Deleted(_) => None,
        }
    }

    pub fn is_deleted(&self) -> bool {
        matches!(self.state, TaskState::Deleted(_))
    }

    /// The alarms the scheduler must hold for this task: none once deleted.
    pub(crate) fn pending_alarms(&self) -> Vec<(Alarm, DateTime<Utc>)> {
        self.live()
            .map(|task| task.deadline.pending(task.status))
            .unwrap_or_default()
    }

    /// Status and priority: which lists the task belongs in.
    pub fn status(&self) -> TaskStatus {
        match &self.state {
            TaskState::Live(task) => task.status,
            TaskState::Deleted(tombstone) => tombstone.status,
        }
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        match &self.state {
            TaskState::Live(task) => task.created_at,
            TaskState::Deleted(tombstone) => tombstone.created_at,
        }
    }

    /// The live task changed into `task` by `event_type`. `None` for a deleted task.
    pub fn update(&self, task: Task, event_type: TaskEventType, nonce: Nonce) -> Option<Planned> {
        self.live()?;
        Some(self.advance(TaskState::Live(task), event_type, nonce))
    }

    /// The tombstone of the live task. `None` for a task already deleted.
    pub fn delete(&self, now: DateTime<Utc>, nonce: Nonce) -> Option<Planned> {
        let task = self.live()?;
        let tombstone = Tombstone {
            id: task.id.clone(),
            status: task.status,
            priority: task.priority,
            created_at: task.created_at,
            deleted_at: now,
        };
        let mut planned =
            self.advance(TaskState::Deleted(tombstone), TaskEventType::Deleted, nonce);
        planned.event.timestamp = now;
        Some(planned)
    }

    /// The ETag callers see: the revision.
    pub(crate) fn etag(&self) -> String {
        self.revision.to_string()
    }

    fn advance(&self, state: TaskState, event_type: TaskEventType, nonce: Nonce) -> Planned {
        let revision = self.revision + 1;
        let mut unpublished = self.unpublished.clone();
        unpublished.record(Change {
            revision,
            nonce,
            event_type,
        });
        let event = match (&state, self.live()) {
            (TaskState::Live(task), _) => TaskEvent::of(event_type, task, revision),
            (TaskState::Deleted(_), Some(before)) => TaskEvent::of(event_type, before, revision),
            (TaskState::Deleted(tombstone), None) => TaskEvent {
                event_type,
                task_id: tombstone.id.to_string(),
                title: String::new(),
                status: tombstone.status,
                timestamp: tombstone.deleted_at,
                revision: Some(revision),
                signature: None,
            },
        };
        let record = Self {
            state,
            revision,
            unpublished,
            foreign: false,
        };
        // An announcement only retires the alarm whose job is delivering it.
        let reschedules = !matches!(event_type, TaskEventType::Announced(_))
            && record.pending_alarms() != self.pending_alarms();
        Planned {
            record,
            event,
            nonce,
            reschedules,
        }
    }

    /// What this record says of the staged change `(revision, nonce)`.
    pub(crate) fn verdict(&self, revision: u64, nonce: Nonce) -> Verdict {
        self.unpublished.verdict(self.revision, revision, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewTask, time};

    fn task() -> Task {
        Task::create(
            TaskId::generate(),
            NewTask::parse("Learn Dapr", None, Some(2)).unwrap(),
            time::parse("2025-01-15T10:30:00").unwrap(),
        )
    }

    #[test]
    fn a_new_task_is_revision_one_and_remembers_its_creation() {
        let planned = TaskRecord::create(task(), Nonce::random());
        assert_eq!(planned.record.revision, 1);
        assert_eq!(planned.event.event_type, TaskEventType::Created);
        assert_eq!(planned.event.revision, Some(1));
        assert_eq!(planned.record.verdict(1, planned.nonce), Verdict::Committed);
    }

    #[test]
    fn a_rewrite_by_the_original_moves_the_revision_past_every_earlier_one() {
        let created = TaskRecord::create(task(), Nonce::random()).record;
        let mut rewritten = created.live().unwrap().clone();
        rewritten.updated_at = time::now();
        let foreign = TaskRecord::foreign(rewritten);
        assert!(foreign.foreign);
        assert!(foreign.revision > created.revision);
        let next = foreign
            .update(
                foreign.live().unwrap().clone(),
                TaskEventType::Updated,
                Nonce::random(),
            )
            .unwrap();
        assert_eq!(next.record.revision, foreign.revision + 1);
        assert!(!next.record.foreign);
        assert_eq!(next.event.revision, Some(foreign.revision + 1));
    }

    #[test]
    fn only_changes_that_move_alarms_reschedule() {
        let now = time::now();
        let mut due = task();
        due.deadline =
            crate::domain::Deadline::parse_new(Some(now + chrono::Duration::hours(1)), None, now)
                .unwrap();
        assert!(!TaskRecord::create(task(), Nonce::random()).reschedules);
        let created = TaskRecord::create(due.clone(), Nonce::random());
        assert!(created.reschedules, "a new due date is scheduled");
        let record = created.record;
        let mut renamed = due.clone();
        renamed.title = crate::domain::Title::parse("renamed").unwrap();
        let planned = record
            .update(renamed, TaskEventType::Updated, Nonce::random())
            .unwrap();
        assert!(!planned.reschedules, "a rename leaves the jobs alone");
        let mut done = due.clone();
        done.set_status(TaskStatus::Completed, now);
        let completion = TaskEventType::StatusChanged(TaskStatus::Completed);
        let planned = record.update(done, completion, Nonce::random()).unwrap();
        assert!(planned.reschedules, "a completion cancels");
        assert!(record.delete(now, Nonce::random()).unwrap().reschedules);
        let mut announced = due;
        announced.deadline.announce(Alarm::Due);
        let planned = record
            .update(
                announced,
                TaskEventType::Announced(Alarm::Due),
                Nonce::random(),
            )
            .unwrap();
        assert!(!planned.reschedules, "the firing job retires itself");
    }

    #[test]
    fn a_deleted_task_keeps_its_list_facts_and_refuses_changes() {
        let created = TaskRecord::create(task(), Nonce::random()).record;
        let now = time::now();
        let deleted = created.delete(now, Nonce::random()).unwrap();
        assert_eq!(deleted.event.event_type, TaskEventType::Deleted);
        assert_eq!(deleted.event.timestamp, now);
        assert_eq!(deleted.event.title, "Learn Dapr");
        let record = deleted.record;
        assert!(record.is_deleted());
        let TaskState::Deleted(tombstone) = &record.state else {
            panic!("a tombstone: {record:?}")
        };
        assert_eq!(tombstone.priority.value(), 2);
        assert_eq!(record.revision, 2);
        assert!(record.delete(now, Nonce::random()).is_none());
        assert!(
            record
                .update(task(), TaskEventType::Updated, Nonce::random())
                .is_none()
        );
    }
}
