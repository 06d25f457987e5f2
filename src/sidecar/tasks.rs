//! Tasks in the state store: keys, the stored JSON and ETags.
//!
//! A task lives under `task-<id>` as the same JSON document the Python original stores:
//! `{"id","title","description","status","priority","created_at","updated_at"}` with
//! `description` null when absent. Either implementation reads what the other wrote.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    SidecarError, StateStore,
    index::TaskIndex,
    state::{Versioned, Write},
};
use crate::domain::{Description, Priority, Task, TaskId, TaskStatus, Title, time};

/// The state key of a task.
pub fn task_key(id: &TaskId) -> String {
    format!("task-{id}")
}

/// The stored document, field for field (and in the same order) as the original writes it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredTask {
    id: String,
    title: String,
    description: Option<String>,
    status: String,
    priority: i64,
    created_at: String,
    updated_at: String,
}

impl From<&Task> for StoredTask {
    fn from(task: &Task) -> Self {
        Self {
            id: task.id.to_string(),
            title: task.title.as_str().to_string(),
            description: task.description.as_ref().map(|d| d.as_str().to_string()),
            status: task.status.as_str().to_string(),
            priority: i64::from(task.priority.value()),
            created_at: time::format(task.created_at),
            updated_at: time::format(task.updated_at),
        }
    }
}

impl StoredTask {
    fn into_task(self) -> Result<Task, String> {
        let time = |field: &str, text: &str| {
            time::parse(text).ok_or_else(|| format!("{field} {text:?} is not a date-time"))
        };
        Ok(Task {
            id: TaskId::parse(&self.id).map_err(|v| v.description)?,
            title: Title::parse(&self.title).map_err(|v| v.description)?,
            description: match self.description {
                Some(text) => Description::parse(&text).map_err(|v| v.description)?,
                None => None,
            },
            status: self
                .status
                .parse::<TaskStatus>()
                .map_err(|e| e.to_string())?,
            priority: Priority::parse(self.priority).map_err(|v| v.description)?,
            created_at: time("created_at", &self.created_at)?,
            updated_at: time("updated_at", &self.updated_at)?,
        })
    }
}

/// Serializes a task as the stored document.
pub fn encode_task(task: &Task) -> Vec<u8> {
    serde_json::to_vec(&StoredTask::from(task)).unwrap_or_default()
}

fn decode_task(key: &str, bytes: &[u8]) -> Result<Task, SidecarError> {
    let corrupt = |reason: String| SidecarError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let stored: StoredTask = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    stored.into_task().map_err(corrupt)
}

/// Tasks and their list index in one state store.
#[derive(Debug, Clone)]
pub struct TaskStore {
    state: StateStore,
    index: TaskIndex,
}

impl TaskStore {
    pub fn new(state: StateStore) -> Self {
        Self {
            index: TaskIndex::new(state.clone()),
            state,
        }
    }

    pub fn index(&self) -> &TaskIndex {
        &self.index
    }

    pub async fn get(&self, id: &TaskId) -> Result<Option<Versioned<Task>>, SidecarError> {
        let key = task_key(id);
        match self.state.get(&key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(Versioned {
                value: decode_task(&key, &stored.value)?,
                etag: stored.etag,
            })),
        }
    }

    /// Many tasks in one call, in the order asked; `None` where a task is gone.
    pub async fn get_many(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<Option<Versioned<Task>>>, SidecarError> {
        let keys: Vec<String> = ids.iter().map(task_key).collect();
        let stored = self.state.get_many(&keys).await?;
        keys.iter()
            .zip(stored)
            .map(|(key, stored)| {
                stored
                    .map(|s| {
                        Ok(Versioned {
                            value: decode_task(key, &s.value)?,
                            etag: s.etag,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Stores a new task. The index entry is written first: if the task write then fails, the
    /// entry points at nothing and listing skips it; the reverse order could hide a stored
    /// task from every list.
    pub async fn insert(&self, task: &Task) -> Result<Versioned<Task>, SidecarError> {
        self.index.add(&task.id, task.created_at).await?;
        self.state
            .save(
                &task_key(&task.id),
                encode_task(task),
                Write::Unconditional,
                HashMap::new(),
            )
            .await?;
        self.read_back(task).await
    }

    /// Replaces a task if it is still at `etag`; ABORTED-style [`SidecarError::EtagMismatch`]
    /// otherwise.
    pub async fn replace(&self, task: &Task, etag: &str) -> Result<Versioned<Task>, SidecarError> {
        self.state
            .save(
                &task_key(&task.id),
                encode_task(task),
                Write::IfMatch(etag),
                HashMap::new(),
            )
            .await?;
        self.read_back(task).await
    }

    /// Deletes a task if it is still at `etag`, then its index entry. The task is gone once the
    /// first call succeeds; an index entry left behind points at nothing and listing skips it.
    pub async fn delete(&self, id: &TaskId, etag: &str) -> Result<(), SidecarError> {
        self.state.delete(&task_key(id), Some(etag)).await?;
        if let Err(error) = self.index.remove(id).await {
            tracing::warn!(task_id = %id, %error, "task deleted, but its list index entry was not removed");
        }
        Ok(())
    }

    /// The state store hands out the new ETag only on a read. What is read is the current task
    /// (someone may have written since), which is what a caller should see.
    async fn read_back(&self, written: &Task) -> Result<Versioned<Task>, SidecarError> {
        Ok(self.get(&written.id).await?.unwrap_or_else(|| Versioned {
            value: written.clone(),
            etag: String::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_python_originals_document() {
        let python = br#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"pending","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00.250000"}"#;
        let task = decode_task("task-abc-123", python).unwrap();
        assert_eq!(task.id.as_str(), "abc-123");
        assert_eq!(task.priority.value(), 2);
        assert_eq!(task.description, None);
        assert_eq!(time::format(task.updated_at), "2025-01-15T10:30:00.250000Z");
    }

    #[test]
    fn writes_the_same_fields_in_the_same_order() {
        let python = br#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"in_progress","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#;
        let task = decode_task("k", python).unwrap();
        let written = String::from_utf8(encode_task(&task)).unwrap();
        assert_eq!(
            written,
            r#"{"id":"abc-123","title":"Learn Dapr","description":null,"status":"in_progress","priority":2,"created_at":"2025-01-15T10:30:00.000000Z","updated_at":"2025-01-15T10:30:00.000000Z"}"#
        );
    }

    #[test]
    fn an_invalid_document_is_reported_with_its_key() {
        let error = decode_task("task-x", br#"{"id":"x","title":"","description":null,"status":"pending","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00"}"#).unwrap_err();
        assert!(error.to_string().contains("task-x"), "{error}");
        assert!(decode_task("k", b"[]").is_err());
    }
}
