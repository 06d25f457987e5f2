//! The event published to `task-events` on every change: the original's JSON, field for field,
//! plus the task's revision after the change.
//!
//! ```json
//! {"event_type":"task.completed","task_id":"…","title":"…","status":"completed",
//!  "timestamp":"2025-01-15T10:30:00.000000Z","revision":3,"signature":"v1.…"}
//! ```
//!
//! `revision` and `signature` are additions: consumers written for the original ignore them,
//! and events the original publishes (without them) are still read. The signature is task-api's
//! proof that it published the event (see [`super::EventKey`]).

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Alarm, Task, TaskStatus, time};

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEventType {
    Created,
    Updated,
    Deleted,
    /// The status changed to this one (`task.pending`, `task.in_progress`, `task.completed`).
    StatusChanged(TaskStatus),
    /// The task's due date or reminder time came (`task.due`, `task.reminder`).
    Announced(Alarm),
}

impl TaskEventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TaskEventType::Created => "task.created",
            TaskEventType::Updated => "task.updated",
            TaskEventType::Deleted => "task.deleted",
            TaskEventType::StatusChanged(TaskStatus::Pending) => "task.pending",
            TaskEventType::StatusChanged(TaskStatus::InProgress) => "task.in_progress",
            TaskEventType::StatusChanged(TaskStatus::Completed) => "task.completed",
            TaskEventType::Announced(Alarm::Due) => "task.due",
            TaskEventType::Announced(Alarm::Reminder) => "task.reminder",
        }
    }
}

impl fmt::Display for TaskEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskEventType {
    type Err = EventParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let known = [
            TaskEventType::Created,
            TaskEventType::Updated,
            TaskEventType::Deleted,
        ]
        .into_iter()
        .chain(TaskStatus::ALL.map(TaskEventType::StatusChanged))
        .chain(Alarm::ALL.map(TaskEventType::Announced));
        known
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| EventParseError::UnknownType(s.to_string()))
    }
}

/// A task event, as published and as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub event_type: TaskEventType,
    pub task_id: String,
    pub title: String,
    pub status: TaskStatus,
    pub timestamp: DateTime<Utc>,
    /// The task's revision after the change; `None` in events of the original implementation.
    pub revision: Option<u64>,
    /// task-api's signature over the event ([`super::EventKey::sign`]); `None` until signed,
    /// and in events of the original implementation.
    pub signature: Option<String>,
}

/// Why a received payload is not a task event.
#[derive(Debug, thiserror::Error)]
pub enum EventParseError {
    #[error("not a task event: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("not a task event: task_id is empty")]
    NoTaskId,
    #[error("unknown event_type {}", super::text::echo(.0))]
    UnknownType(String),
    #[error("unknown status {}", super::text::echo(&.0.0))]
    UnknownStatus(#[source] super::UnknownStatus),
}

#[derive(Deserialize)]
struct Wire<'a> {
    event_type: std::borrow::Cow<'a, str>,
    task_id: std::borrow::Cow<'a, str>,
    title: std::borrow::Cow<'a, str>,
    status: std::borrow::Cow<'a, str>,
    #[serde(deserialize_with = "time::serde_format::deserialize")]
    timestamp: DateTime<Utc>,
    #[serde(default)]
    revision: Option<u64>,
    #[serde(default)]
    signature: Option<std::borrow::Cow<'a, str>>,
}

impl TaskEvent {
    /// The event for `task` after `event_type` happened to it, making it `revision`.
    pub(crate) fn of(event_type: TaskEventType, task: &Task, revision: u64) -> Self {
        Self {
            event_type,
            task_id: task.id.to_string(),
            title: task.title.as_str().to_string(),
            status: task.status,
            timestamp: task.updated_at,
            revision: Some(revision),
            signature: None,
        }
    }

    /// The JSON payload. (Key order carries no meaning: daprd re-encodes JSON it wraps.)
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::json!({
            "event_type": self.event_type.as_str(),
            "task_id": self.task_id,
            "title": self.title,
            "status": self.status.as_str(),
            "timestamp": time::format(self.timestamp),
        });
        if let Some(object) = json.as_object_mut() {
            if let Some(revision) = self.revision {
                object.insert("revision".into(), revision.into());
            }
            if let Some(signature) = &self.signature {
                object.insert("signature".into(), signature.clone().into());
            }
        }
        json.to_string().into_bytes()
    }

    /// Parses a received payload. Field order, spacing and number formats do not matter (daprd
    /// re-encodes JSON it wraps in a CloudEvent).
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, EventParseError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(EventParseError::Malformed)?;
        let status = wire
            .status
            .parse::<TaskStatus>()
            .map_err(EventParseError::UnknownStatus)?;
        if wire.task_id.is_empty() {
            return Err(EventParseError::NoTaskId);
        }
        Ok(Self {
            event_type: wire.event_type.parse()?,
            task_id: wire.task_id.into_owned(),
            title: wire.title.into_owned(),
            status,
            timestamp: wire.timestamp,
            revision: wire.revision,
            signature: wire.signature.map(std::borrow::Cow::into_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_originals_shape() {
        let event = TaskEvent {
            event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
            task_id: "abc".into(),
            title: "Learn Dapr".into(),
            status: TaskStatus::Completed,
            timestamp: time::parse("2025-01-15T10:30:00").unwrap(),
            revision: Some(3),
            signature: Some("v1.abc".into()),
        };
        let json: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_type": "task.completed",
                "task_id": "abc",
                "title": "Learn Dapr",
                "status": "completed",
                "timestamp": "2025-01-15T10:30:00.000000Z",
                "revision": 3,
                "signature": "v1.abc"
            })
        );
        assert_eq!(TaskEvent::from_json(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn reads_the_original_python_events() {
        let python = br#"{"event_type":"task.created","task_id":"t1","title":"x","status":"pending","timestamp":"2025-01-15T10:30:00.123456"}"#;
        let event = TaskEvent::from_json(python).unwrap();
        assert_eq!(event.event_type, TaskEventType::Created);
        assert_eq!(event.revision, None);
    }

    #[test]
    fn rejects_what_is_not_a_task_event() {
        assert!(matches!(
            TaskEvent::from_json(b"not json"),
            Err(EventParseError::Malformed(_))
        ));
        let unknown = br#"{"event_type":"task.exploded","task_id":"t","title":"x","status":"pending","timestamp":"2025-01-15T10:30:00"}"#;
        assert!(matches!(
            TaskEvent::from_json(unknown),
            Err(EventParseError::UnknownType(_))
        ));
        let missing = br#"{"event_type":"task.created"}"#;
        assert!(TaskEvent::from_json(missing).is_err());
    }
}
