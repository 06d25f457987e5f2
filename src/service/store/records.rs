//! Task records: keys, the stored JSON and ETags.
//!
//! A live task lives under `task-<id>` as the document the Python original stores, field for
//! field, followed by what task-api adds (which the original ignores when it reads):
//!
//! ```json
//! {"id":"5b0c…","title":"Learn Dapr","description":null,"status":"completed","priority":2,
//!  "created_at":"2025-01-15T10:30:00.000000Z","updated_at":"2025-01-15T10:31:00.000000Z",
//!  "due_at":null,"remind_at":null,
//!  "revision":2,"unpublished":[[2,"03b9e771","task.completed"]]}
//! ```
//!
//! `unpublished` holds the changes whose events are not yet recorded as published in the task's
//! ledger (see `domain::change` and `store::published`). A task with a due date has `due_at` (and `remind_at`) as RFC 3339
//! times, and `announced` lists what was already announced of them. The original writes back
//! only its own fields, so a task it updates loses those additions; task-api then reads it as
//! a *foreign* record ([`TaskRecord::foreign`]).
//!
//! A deleted task's key holds a tombstone until the store expires it:
//!
//! ```json
//! {"id":"5b0c…","status":"completed","priority":2,"created_at":"…","deleted_at":"…",
//!  "revision":3,"unpublished":[…]}
//! ```
//!
//! Reading is lenient: whatever the original could store reads (a title of only spaces, a
//! description of any length); only what callers send is held to the stricter rules. Documents
//! of earlier task-api builds, which kept their recent changes under `changes`, read those as
//! unpublished: an event that build staged is then still published once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    CorruptDocument, ReadError, decode, encode,
    grouped::{Grouped, Reads, RecordWrite, RecordWrites},
    published::{LedgerAsRead, ledger_key},
};
use crate::{
    domain::{
        Alarm, Change, Deadline, Description, FieldViolation, Nonce, Priority, Task, TaskEventType,
        TaskId, TaskRecord, TaskState, TaskStatus, Title, Tombstone, Unpublished, Versioned, time,
    },
    service::ports::{Condition, KeyValueStore, StoreError, Write},
};

/// The state key of a task.
pub(crate) fn task_key(id: &TaskId) -> String {
    format!("task-{id}")
}

/// A task document as it is stored: the original's fields first, in its order.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub(crate) struct Document(pub TaskRecord);

#[derive(Serialize, Deserialize)]
struct Wire {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "is_tombstone_field")]
    description: Field<String>,
    status: String,
    priority: i64,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_tombstone_field")]
    due_at: Field<String>,
    #[serde(default, skip_serializing_if = "is_tombstone_field")]
    remind_at: Field<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    announced: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(default)]
    unpublished: Vec<(u64, String, String)>,
    /// What earlier builds wrote instead of `unpublished`; read, never written.
    #[serde(default, skip_serializing)]
    changes: Vec<(u64, String, String)>,
}

/// A nullable field a live task always writes (as `null` when unset) and a tombstone leaves out.
#[derive(Serialize, Deserialize, Default)]
#[serde(untagged)]
enum Field<T> {
    Value(Option<T>),
    #[default]
    #[serde(skip)]
    Absent,
}

impl<T> Field<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Field::Value(value) => value,
            Field::Absent => None,
        }
    }
}

fn is_tombstone_field<T>(field: &Field<T>) -> bool {
    matches!(field, Field::Absent)
}

fn invalid(field: &'static str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, description)
}

fn parse_time(
    field: &'static str,
    text: &str,
) -> Result<chrono::DateTime<chrono::Utc>, FieldViolation> {
    time::parse(text).ok_or_else(|| invalid(field, format!("{text:?} is not a date-time")))
}

fn parse_changes(changes: Vec<(u64, String, String)>) -> Result<Unpublished, FieldViolation> {
    let mut parsed = Vec::with_capacity(changes.len());
    for (revision, nonce, event_type) in changes {
        parsed.push(Change {
            revision,
            nonce: Nonce::parse(&nonce)
                .ok_or_else(|| invalid("unpublished", format!("bad nonce {nonce:?}")))?,
            event_type: event_type
                .parse::<TaskEventType>()
                .map_err(|e| invalid("unpublished", e.to_string()))?,
        });
    }
    Ok(Unpublished::new(parsed))
}

impl TryFrom<Wire> for Document {
    type Error = FieldViolation;

    fn try_from(wire: Wire) -> Result<Self, Self::Error> {
        let id = TaskId::parse(&wire.id).map_err(|v| invalid("id", v.description))?;
        let status = wire
            .status
            .parse::<TaskStatus>()
            .map_err(|e| invalid("status", e.to_string()))?;
        let priority =
            Priority::parse(wire.priority).map_err(|v| invalid("priority", v.description))?;
        let created_at = parse_time("created_at", &wire.created_at)?;
        let changes = if wire.unpublished.is_empty() {
            wire.changes
        } else {
            wire.unpublished
        };
        let unpublished = parse_changes(changes)?;
        let state = match wire.deleted_at {
            Some(deleted_at) => TaskState::Deleted(Tombstone {
                id,
                status,
                priority,
                created_at,
                deleted_at: parse_time("deleted_at", &deleted_at)?,
            }),
            None => TaskState::Live(live_task(WireTask {
                id,
                status,
                priority,
                created_at,
                title: wire.title,
                description: wire.description.into_option(),
                updated_at: wire.updated_at,
                due_at: wire.due_at.into_option(),
                remind_at: wire.remind_at.into_option(),
                announced: wire.announced,
            })?),
        };
        Ok(Document(match (wire.revision, state) {
            (Some(revision), state) => TaskRecord {
                state,
                revision,
                unpublished,
                foreign: false,
            },
            (None, TaskState::Live(task)) => TaskRecord::foreign(task),
            (None, TaskState::Deleted(_)) => {
                return Err(invalid("revision", "is missing from a tombstone"));
            }
        }))
    }
}

/// The fields of a live task as they came off the wire.
struct WireTask {
    id: TaskId,
    status: TaskStatus,
    priority: Priority,
    created_at: chrono::DateTime<chrono::Utc>,
    title: Option<String>,
    description: Option<String>,
    updated_at: Option<String>,
    due_at: Option<String>,
    remind_at: Option<String>,
    announced: Vec<String>,
}

fn live_task(wire: WireTask) -> Result<Task, FieldViolation> {
    let title = wire.title.ok_or_else(|| invalid("title", "is missing"))?;
    let updated_at = wire
        .updated_at
        .ok_or_else(|| invalid("updated_at", "is missing"))?;
    let optional_time = |field: &'static str, text: Option<String>| {
        text.map(|text| parse_time(field, &text)).transpose()
    };
    let mut deadline = Deadline {
        due_at: optional_time("due_at", wire.due_at)?,
        remind_at: optional_time("remind_at", wire.remind_at)?,
        ..Deadline::default()
    };
    for alarm in &wire.announced {
        let alarm = Alarm::parse(alarm)
            .ok_or_else(|| invalid("announced", format!("unknown alarm {alarm:?}")))?;
        deadline.announce(alarm);
    }
    Ok(Task {
        id: wire.id,
        title: Title::stored(&title).map_err(|v| invalid("title", v.description))?,
        description: wire.description.as_deref().and_then(Description::stored),
        status: wire.status,
        priority: wire.priority,
        created_at: wire.created_at,
        updated_at: parse_time("updated_at", &updated_at)?,
        deadline,
    })
}

impl From<Document> for Wire {
    fn from(Document(record): Document) -> Self {
        let unpublished = record
            .unpublished
            .changes()
            .iter()
            .map(|c| {
                (
                    c.revision,
                    c.nonce.to_string(),
                    c.event_type.as_str().to_string(),
                )
            })
            .collect();
        let revision = Some(record.revision);
        match record.state {
            TaskState::Live(task) => Wire {
                id: task.id.to_string(),
                title: Some(task.title.as_str().to_string()),
                description: Field::Value(task.description.map(|d| d.as_str().to_string())),
                status: task.status.as_str().to_string(),
                priority: i64::from(task.priority.value()),
                created_at: time::format(task.created_at),
                updated_at: Some(time::format(task.updated_at)),
                deleted_at: None,
                due_at: Field::Value(task.deadline.due_at.map(time::format)),
                remind_at: Field::Value(task.deadline.remind_at.map(time::format)),
                announced: Alarm::ALL
                    .into_iter()
                    .filter(|alarm| match alarm {
                        Alarm::Due => task.deadline.due_announced,
                        Alarm::Reminder => task.deadline.reminder_announced,
                    })
                    .map(|alarm| alarm.as_str().to_string())
                    .collect(),
                revision,
                unpublished,
                changes: Vec::new(),
            },
            TaskState::Deleted(tombstone) => Wire {
                id: tombstone.id.to_string(),
                title: None,
                description: Field::Absent,
                status: tombstone.status.as_str().to_string(),
                priority: i64::from(tombstone.priority.value()),
                created_at: time::format(tombstone.created_at),
                updated_at: None,
                deleted_at: Some(time::format(tombstone.deleted_at)),
                due_at: Field::Absent,
                remind_at: Field::Absent,
                announced: Vec::new(),
                revision,
                unpublished,
                changes: Vec::new(),
            },
        }
    }
}

/// The stored document of `record`.
pub(crate) fn to_json(record: &TaskRecord) -> Vec<u8> {
    encode(&Document(record.clone()))
}

/// Reads a stored task document.
pub(crate) fn from_json(key: &str, bytes: &[u8]) -> Result<TaskRecord, CorruptDocument> {
    decode::<Document>(key, bytes).map(|Document(record)| record)
}

/// Task records in one state store.
/// A record as stored under `key`, with its ETag.
fn record_of(
    key: &str,
    stored: Versioned<Vec<u8>>,
) -> Result<Versioned<TaskRecord>, CorruptDocument> {
    Ok(Versioned {
        value: from_json(key, &stored.value)?,
        etag: stored.etag,
    })
}

/// Task records over a store. A change's read of its record and its write go through
/// [`grouped`](super::grouped): those of changes in flight at once are made together.
pub(crate) struct TaskRecords<S: KeyValueStore> {
    store: S,
    /// How long a deleted task's tombstone is kept.
    tombstone_ttl: Duration,
    reads: Grouped<Reads<S>>,
    writes: Grouped<RecordWrites<S>>,
}

impl<S: KeyValueStore> Clone for TaskRecords<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tombstone_ttl: self.tombstone_ttl,
            reads: self.reads.clone(),
            writes: self.writes.clone(),
        }
    }
}

impl<S: KeyValueStore> TaskRecords<S> {
    pub(crate) fn new(store: S, tombstone_ttl: Duration) -> Self {
        Self {
            reads: Grouped::new(Reads(store.clone())),
            writes: Grouped::new(RecordWrites(store.clone())),
            store,
            tombstone_ttl,
        }
    }

    pub(crate) async fn get(
        &self,
        id: &TaskId,
    ) -> Result<Option<Versioned<TaskRecord>>, ReadError> {
        let key = task_key(id);
        let stored = self.store.get(&key).await?;
        Ok(stored.map(|s| record_of(&key, s)).transpose()?)
    }

    /// A record and its task's ledger in one call, for a change: its publisher then writes the
    /// ledger without reading it first. The ledger is `None` when it cannot be read (the
    /// publisher reads it again).
    pub(crate) async fn get_with_ledger(
        &self,
        id: &TaskId,
    ) -> Result<(Option<Versioned<TaskRecord>>, Option<LedgerAsRead>), ReadError> {
        let keys = [task_key(id), ledger_key(id)];
        let mut stored = self
            .reads
            .call(keys.to_vec())
            .await
            .map_err(|unanswered| StoreError::Unavailable {
                source: Box::new(unanswered),
            })??
            .into_iter();
        let record = stored
            .next()
            .flatten()
            .map(|s| record_of(&keys[0], s))
            .transpose()?;
        let ledger = match stored.next().flatten() {
            None => Some(LedgerAsRead(None)),
            Some(stored) => decode(&keys[1], &stored.value).ok().map(|value| {
                LedgerAsRead(Some(Versioned {
                    value,
                    etag: stored.etag,
                }))
            }),
        };
        Ok((record, ledger))
    }

    /// Many records in one call, in the order asked; `None` where there is none. A record that
    /// cannot be read is reported per id, not for the whole call.
    pub(crate) async fn get_many(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<Result<Option<Versioned<TaskRecord>>, CorruptDocument>>, StoreError> {
        let keys: Vec<String> = ids.iter().map(task_key).collect();
        super::get_many(&self.store, &keys, from_json).await
    }

    /// Writes `record`, which makes the change `nonce`, if its key holds nothing (`etag`
    /// `None`: a new task) or still holds the ETag `etag`; [`StoreError::Conflict`] otherwise.
    /// A tombstone is written to expire.
    pub(crate) async fn put(
        &self,
        record: &TaskRecord,
        nonce: Nonce,
        etag: Option<&str>,
    ) -> Result<(), StoreError> {
        let ttl = record.is_deleted().then_some(self.tombstone_ttl);
        let write = Write::new(
            task_key(record.id()),
            to_json(record),
            Condition::replacing(etag),
        )
        .expiring(ttl);
        let job = RecordWrite {
            write,
            revision: record.revision,
            nonce,
        };
        // Its outcome is unknown if the batch answered nothing.
        self.writes
            .call(job)
            .await
            .map_err(|unanswered| StoreError::Unavailable {
                source: Box::new(unanswered),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<TaskRecord, CorruptDocument> {
        from_json("task-x", bytes)
    }

    fn live(bytes: &[u8]) -> Task {
        read(bytes).unwrap().live().unwrap().clone()
    }

    #[test]
    fn reads_the_python_originals_document_as_foreign() {
        let python = br#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"pending","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00.250000"}"#;
        let record = read(python).unwrap();
        assert!(record.foreign, "the original keeps no revision");
        assert_eq!(
            record.revision, 1_736_937_000_250_000,
            "its last update, in µs"
        );
        let task = live(python);
        assert_eq!(task.id.as_str(), "abc-123");
        assert_eq!(task.priority.value(), 2);
        assert_eq!(task.description, None);
        assert_eq!(time::format(task.updated_at), "2025-01-15T10:30:00.250000Z");
    }

    #[test]
    fn reads_what_the_original_accepted_but_callers_may_not_send() {
        let long = "d".repeat(5000);
        let doc = format!(
            r#"{{"id":"x","title":"   ","description":"{long}","status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}}"#
        );
        let task = live(doc.as_bytes());
        assert_eq!(task.title.as_str(), "   ");
        assert_eq!(task.description.unwrap().as_str().len(), 5000);
    }

    #[test]
    fn writes_the_originals_fields_first_in_its_order() {
        let python = br#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"in_progress","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#;
        let task = live(python);
        let created = TaskRecord::create(task, Nonce::parse("0badc0de").unwrap()).record;
        let written = String::from_utf8(to_json(&created)).unwrap();
        assert_eq!(
            written,
            r#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"in_progress","priority":2,"created_at":"2025-01-15T10:30:00.000000Z","updated_at":"2025-01-15T10:30:00.000000Z","due_at":null,"remind_at":null,"revision":1,"unpublished":[[1,"0badc0de","task.created"]]}"#
        );
    }

    #[test]
    fn due_dates_and_announcements_round_trip() {
        let doc = br#"{"id":"t","title":"x","description":null,"status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00","due_at":"2025-01-16T09:00:00Z","remind_at":"2025-01-16T08:00:00Z","announced":["reminder"],"revision":3,"unpublished":[]}"#;
        let record = read(doc).unwrap();
        let task = record.live().unwrap();
        assert_eq!(
            task.deadline.due_at.map(time::format).as_deref(),
            Some("2025-01-16T09:00:00.000000Z")
        );
        assert!(task.deadline.reminder_announced && !task.deadline.due_announced);
        assert_eq!(read(&to_json(&record)).unwrap(), record);
        let error = read(br#"{"id":"t","title":"x","status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00","due_at":"soon"}"#).unwrap_err();
        assert!(
            error.source.to_string().starts_with("due_at"),
            "{}",
            error.source
        );
    }

    #[test]
    fn records_and_tombstones_round_trip() {
        let task = live(br#"{"id":"t","title":"x","description":"d","status":"pending","priority":3,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#);
        let created = TaskRecord::create(task, Nonce::random()).record;
        assert_eq!(read(&to_json(&created)).unwrap(), created);
        let deleted = created.delete(time::now(), Nonce::random()).unwrap().record;
        let bytes = to_json(&deleted);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("title") && !text.contains("due_at"),
            "{text}"
        );
        assert_eq!(read(&bytes).unwrap(), deleted);
    }

    #[test]
    fn earlier_builds_recent_changes_read_as_unpublished() {
        let doc = br#"{"id":"t","title":"x","description":null,"status":"completed","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:31:00","revision":2,"changes":[[1,"8f2a1c0d","task.created"],[2,"03b9e771","task.completed"]]}"#;
        let record = read(doc).unwrap();
        assert!(!record.foreign);
        assert_eq!(record.unpublished.len(), 2);
        assert_eq!(
            record.verdict(2, Nonce::parse("03b9e771").unwrap()),
            crate::domain::Verdict::Committed
        );
        let rewritten = String::from_utf8(to_json(&record)).unwrap();
        assert!(!rewritten.contains("\"changes\""), "{rewritten}");
    }

    #[test]
    fn an_invalid_document_names_the_field() {
        let error = read(br#"{"id":"x","title":"","description":null,"status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#).unwrap_err();
        assert!(
            error.source.to_string().starts_with("title"),
            "{}",
            error.source
        );
        let error = read(br#"{"id":"x","title":"t","description":null,"status":"done","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#).unwrap_err();
        assert!(
            error.source.to_string().starts_with("status"),
            "{}",
            error.source
        );
        assert!(read(b"[]").is_err());
    }
}
