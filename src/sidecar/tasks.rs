//! Task records in the state store: keys, the stored JSON and ETags.
//!
//! A live task lives under `task-<id>` as the document the Python original stores, field for
//! field, followed by two additions the original ignores when it reads:
//!
//! ```json
//! {"id":"5b0c…","title":"Learn Dapr","description":null,"status":"completed","priority":2,
//!  "created_at":"2025-01-15T10:30:00.000000Z","updated_at":"2025-01-15T10:31:00.000000Z",
//!  "due_at":null,"remind_at":null,
//!  "revision":2,"changes":[[1,"8f2a1c0d","task.created"],[2,"03b9e771","task.completed"]]}
//! ```
//!
//! A task with a due date has `due_at` (and `remind_at`) as RFC 3339 times, and `announced`
//! lists what was already announced of them (`["reminder"]`, `["due"]`). The original writes back
//! only its own fields, so a task it updates loses its due date, reminder and revisions (task-api
//! then reads it as a task the original stored).
//!
//! A deleted task's key holds a tombstone until the store expires it (`ttlInSeconds`):
//!
//! ```json
//! {"id":"5b0c…","status":"completed","priority":2,"created_at":"…","deleted_at":"…",
//!  "revision":3,"changes":[…]}
//! ```
//!
//! Reading is lenient: whatever the original could store reads (a title of only spaces, a
//! description of any length); only what callers send is held to the stricter rules.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    SidecarError, StateStore,
    state::{Versioned, Write},
};
use crate::domain::{
    Alarm, Change, Deadline, Description, History, Nonce, Priority, Task, TaskEventType, TaskId,
    TaskRecord, TaskState, TaskStatus, Title, Tombstone, time,
};

/// The state key of a task.
pub fn task_key(id: &TaskId) -> String {
    format!("task-{id}")
}

/// A live task: the original's fields in the original's order, then ours.
#[derive(Serialize)]
struct LiveDocument<'a> {
    id: &'a str,
    title: &'a str,
    description: Option<&'a str>,
    status: &'a str,
    priority: i64,
    created_at: String,
    updated_at: String,
    due_at: Option<String>,
    remind_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    announced: Vec<&'static str>,
    revision: u64,
    changes: Vec<(u64, String, &'static str)>,
}

#[derive(Serialize)]
struct TombstoneDocument<'a> {
    id: &'a str,
    status: &'a str,
    priority: i64,
    created_at: String,
    deleted_at: String,
    revision: u64,
    changes: Vec<(u64, String, &'static str)>,
}

/// Any stored task document, read leniently.
#[derive(Deserialize)]
struct StoredDocument {
    id: String,
    title: Option<String>,
    description: Option<String>,
    status: String,
    priority: i64,
    created_at: String,
    updated_at: Option<String>,
    deleted_at: Option<String>,
    #[serde(default)]
    due_at: Option<String>,
    #[serde(default)]
    remind_at: Option<String>,
    #[serde(default)]
    announced: Vec<String>,
    #[serde(default)]
    revision: u64,
    #[serde(default)]
    changes: Vec<(u64, String, String)>,
}

fn changes(history: &History) -> Vec<(u64, String, &'static str)> {
    history
        .changes()
        .iter()
        .map(|c| (c.revision, c.nonce.to_string(), c.event_type.as_str()))
        .collect()
}

/// Serializes a record as the stored document.
pub fn encode(record: &TaskRecord) -> Vec<u8> {
    let written = match &record.state {
        TaskState::Live(task) => serde_json::to_vec(&LiveDocument {
            id: task.id.as_str(),
            title: task.title.as_str(),
            description: task.description.as_ref().map(Description::as_str),
            status: task.status.as_str(),
            priority: i64::from(task.priority.value()),
            created_at: time::format(task.created_at),
            updated_at: time::format(task.updated_at),
            due_at: task.deadline.due_at.map(time::format),
            remind_at: task.deadline.remind_at.map(time::format),
            announced: Alarm::ALL
                .into_iter()
                .filter(|alarm| match alarm {
                    Alarm::Due => task.deadline.due_announced,
                    Alarm::Reminder => task.deadline.reminder_announced,
                })
                .map(Alarm::as_str)
                .collect(),
            revision: record.revision,
            changes: changes(&record.history),
        }),
        TaskState::Deleted(tombstone) => serde_json::to_vec(&TombstoneDocument {
            id: tombstone.id.as_str(),
            status: tombstone.status.as_str(),
            priority: i64::from(tombstone.priority.value()),
            created_at: time::format(tombstone.created_at),
            deleted_at: time::format(tombstone.deleted_at),
            revision: record.revision,
            changes: changes(&record.history),
        }),
    };
    // Strings and integers only: serialising cannot fail.
    written.expect("a task record serialises to JSON")
}

/// Parses a stored document; the error names the field that is wrong.
pub fn decode(bytes: &[u8]) -> Result<TaskRecord, String> {
    let stored: StoredDocument = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let time = |field: &str, text: &str| {
        time::parse(text).ok_or_else(|| format!("{field} {text:?} is not a date-time"))
    };
    let field = |name: &str, v: crate::domain::FieldViolation| format!("{name} {}", v.description);
    let id = TaskId::parse(&stored.id).map_err(|v| field("id", v))?;
    let status = stored
        .status
        .parse::<TaskStatus>()
        .map_err(|e| format!("status: {e}"))?;
    let priority = Priority::parse(stored.priority).map_err(|v| field("priority", v))?;
    let created_at = time("created_at", &stored.created_at)?;
    let mut history = Vec::with_capacity(stored.changes.len());
    for (revision, nonce, event_type) in &stored.changes {
        history.push(Change {
            revision: *revision,
            nonce: Nonce::parse(nonce).ok_or_else(|| format!("changes: bad nonce {nonce:?}"))?,
            event_type: event_type
                .parse::<TaskEventType>()
                .map_err(|e| format!("changes: {e}"))?,
        });
    }
    let state = match stored.deleted_at {
        Some(deleted_at) => TaskState::Deleted(Tombstone {
            id,
            status,
            priority,
            created_at,
            deleted_at: time("deleted_at", &deleted_at)?,
        }),
        None => {
            let title = stored.title.ok_or("title is missing")?;
            let updated_at = stored.updated_at.ok_or("updated_at is missing")?;
            let optional_time = |field: &str, text: &Option<String>| {
                text.as_deref().map(|text| time(field, text)).transpose()
            };
            let mut deadline = Deadline {
                due_at: optional_time("due_at", &stored.due_at)?,
                remind_at: optional_time("remind_at", &stored.remind_at)?,
                ..Deadline::default()
            };
            for alarm in &stored.announced {
                let alarm = Alarm::parse(alarm)
                    .ok_or_else(|| format!("announced: unknown alarm {alarm:?}"))?;
                deadline.announce(alarm);
            }
            TaskState::Live(Task {
                id,
                title: Title::stored(&title).map_err(|v| field("title", v))?,
                description: stored.description.as_deref().and_then(Description::stored),
                status,
                priority,
                created_at,
                updated_at: time("updated_at", &updated_at)?,
                deadline,
            })
        }
    };
    Ok(TaskRecord {
        state,
        revision: stored.revision,
        history: History::new(history),
    })
}

/// Task records in one state store.
#[derive(Debug, Clone)]
pub struct TaskStore {
    state: StateStore,
    /// How long a deleted task's tombstone is kept.
    tombstone_ttl: Duration,
}

impl TaskStore {
    pub fn new(state: StateStore, tombstone_ttl: Duration) -> Self {
        Self {
            state,
            tombstone_ttl,
        }
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    fn decode_at(key: &str, bytes: &[u8]) -> Result<TaskRecord, SidecarError> {
        decode(bytes).map_err(|reason| SidecarError::Corrupt {
            key: key.to_string(),
            reason,
        })
    }

    pub async fn get(&self, id: &TaskId) -> Result<Option<Versioned<TaskRecord>>, SidecarError> {
        let key = task_key(id);
        match self.state.get(&key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(Versioned {
                value: Self::decode_at(&key, &stored.value)?,
                etag: stored.etag,
            })),
        }
    }

    /// Many records in one call, in the order asked; `None` where there is none. A record that
    /// cannot be read is reported per id, not for the whole call.
    pub async fn get_many(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<Result<Option<Versioned<TaskRecord>>, SidecarError>>, SidecarError> {
        let keys: Vec<String> = ids.iter().map(task_key).collect();
        let stored = self.state.get_many(&keys).await?;
        Ok(keys
            .iter()
            .zip(stored)
            .map(|(key, stored)| {
                stored
                    .map(|s| {
                        Ok(Versioned {
                            value: Self::decode_at(key, &s.value)?,
                            etag: s.etag,
                        })
                    })
                    .transpose()
            })
            .collect())
    }

    /// Writes `record` if the key holds nothing (a new task) or still holds the ETag `etag`.
    /// Fails with [`SidecarError::EtagMismatch`] otherwise. A tombstone is written to expire.
    pub async fn put(&self, record: &TaskRecord, etag: Option<&str>) -> Result<(), SidecarError> {
        let mut metadata = HashMap::new();
        if record.is_deleted() {
            metadata.insert(
                "ttlInSeconds".to_string(),
                self.tombstone_ttl.as_secs().max(1).to_string(),
            );
        }
        let write = match etag {
            Some(etag) => Write::IfMatch(etag),
            None => Write::IfAbsent,
        };
        self.state
            .save(&task_key(record.id()), encode(record), write, metadata)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(bytes: &[u8]) -> Task {
        match decode(bytes).unwrap().state {
            TaskState::Live(task) => task,
            TaskState::Deleted(_) => panic!("not live"),
        }
    }

    #[test]
    fn reads_the_python_originals_document() {
        let python = br#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"pending","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00.250000"}"#;
        let record = decode(python).unwrap();
        assert_eq!(record.revision, 0, "the original keeps no revision");
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
        let record = decode(python).unwrap();
        let written = String::from_utf8(encode(&record)).unwrap();
        assert_eq!(
            written,
            r#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"in_progress","priority":2,"created_at":"2025-01-15T10:30:00.000000Z","updated_at":"2025-01-15T10:30:00.000000Z","due_at":null,"remind_at":null,"revision":0,"changes":[]}"#
        );
    }

    #[test]
    fn due_dates_and_announcements_round_trip() {
        let doc = br#"{"id":"t","title":"x","description":null,"status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00","due_at":"2025-01-16T09:00:00Z","remind_at":"2025-01-16T08:00:00Z","announced":["reminder"],"revision":3,"changes":[]}"#;
        let record = decode(doc).unwrap();
        let task = record.live().unwrap();
        assert_eq!(
            task.deadline.due_at.map(time::format).as_deref(),
            Some("2025-01-16T09:00:00.000000Z")
        );
        assert!(task.deadline.reminder_announced && !task.deadline.due_announced);
        assert_eq!(decode(&encode(&record)).unwrap(), record);
        let error = decode(br#"{"id":"t","title":"x","status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00","due_at":"soon"}"#).unwrap_err();
        assert!(error.starts_with("due_at"), "{error}");
    }

    #[test]
    fn records_and_tombstones_round_trip() {
        let task = live(br#"{"id":"t","title":"x","description":"d","status":"pending","priority":3,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#);
        let created = TaskRecord::create(task, Nonce::random()).record;
        assert_eq!(decode(&encode(&created)).unwrap(), created);
        let deleted = created.delete(time::now(), Nonce::random()).unwrap().record;
        let bytes = encode(&deleted);
        assert!(!String::from_utf8_lossy(&bytes).contains("title"));
        assert_eq!(decode(&bytes).unwrap(), deleted);
    }

    #[test]
    fn an_invalid_document_names_the_field() {
        let error = decode(br#"{"id":"x","title":"","description":null,"status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#).unwrap_err();
        assert!(error.starts_with("title"), "{error}");
        let error = decode(br#"{"id":"x","title":"t","description":null,"status":"done","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#).unwrap_err();
        assert!(error.starts_with("status"), "{error}");
        assert!(decode(b"[]").is_err());
    }
}
