//! notification-service's record of what it received, one document per task:
//! `notifications-task-<id>`.
//!
//! Recording is one ETag-guarded update of the task's document that first looks for the
//! idempotency key, so a notification delivered twice, even concurrently, is kept once. A task
//! this process has not seen a document of is tried first as the document's first write, which
//! needs no read: a task's first notification is most often its only one (its completion).
//! Only if the document exists after all is it read and updated as above.
//!
//! Bounded: a document keeps a task's newest [`KEPT_PER_TASK`] notifications, and the store
//! forgets a document a retention period (`NOTIFICATION_RETENTION_SECONDS`, 30 days by default)
//! after its last notification. Within both, a repeated key is
//! recognised; task-api publishes a change's event under one id and notifies it under one key,
//! so in practice only a replay older than that could be notified twice.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::service::{
    backoff,
    ports::{Condition, KeyValueStore, StoreError, Write},
    store::{MAX_ATTEMPTS, ReadError, decode, encode, key_fragment, read_document},
};

/// Notifications kept per task; the oldest go first.
pub(crate) const KEPT_PER_TASK: usize = 1000;
/// Documents remembered as existing (a few megabytes at most).
const REMEMBERED: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ReceivedNotification {
    /// The sender's idempotency key.
    pub(crate) id: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) task_id: String,
    pub(crate) message: String,
    pub(crate) sender_app_id: String,
    pub(crate) received_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    notifications: Vec<ReceivedNotification>,
}

/// Whether a notification was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    New,
    Duplicate,
}

#[derive(Debug, Clone)]
pub(super) struct NotificationStore<S> {
    store: S,
    kept_per_task: usize,
    retention: Duration,
    existing: Existing,
}

/// Keys of the documents this process wrote or found lately: their next notification is
/// merged into what is there (a first write would be refused, a call for nothing).
#[derive(Debug, Clone, Default)]
struct Existing(Arc<Mutex<Remembered>>);

#[derive(Debug, Default)]
struct Remembered {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Existing {
    fn contains(&self, key: &str) -> bool {
        let remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        remembered.keys.contains(key)
    }

    fn note(&self, key: &str) {
        let mut remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !remembered.keys.insert(key.to_string()) {
            return;
        }
        remembered.order.push_back(key.to_string());
        while remembered.order.len() > REMEMBERED {
            if let Some(oldest) = remembered.order.pop_front() {
                remembered.keys.remove(&oldest);
            }
        }
    }
}

impl<S: KeyValueStore> NotificationStore<S> {
    pub(super) fn new(store: S, retention: Duration) -> Self {
        Self {
            store,
            retention,
            kept_per_task: KEPT_PER_TASK,
            existing: Existing::default(),
        }
    }

    fn key(task_id: &str) -> String {
        format!("notifications-task-{}", key_fragment(task_id))
    }

    pub(super) async fn record(
        &self,
        notification: ReceivedNotification,
    ) -> Result<Recorded, ReadError> {
        let key = Self::key(&notification.task_id);
        if !self.existing.contains(&key) {
            let first = Document {
                notifications: vec![notification.clone()],
            };
            let write = Write::new(key.clone(), encode(&first), Condition::IfAbsent)
                .expiring(Some(self.retention));
            match self.store.put(write).await {
                Ok(_) => {
                    self.existing.note(&key);
                    return Ok(Recorded::New);
                }
                // There is a document: this one may be in it already.
                Err(StoreError::Conflict { .. }) => self.existing.note(&key),
                Err(error) => return Err(error.into()),
            }
        }
        let mut attempt = 0;
        loop {
            let stored = self.store.get(&key).await?;
            let (mut document, etag) = match &stored {
                Some(stored) => (
                    decode::<Document>(&key, &stored.value)?,
                    Some(stored.etag.as_str()),
                ),
                None => (Document::default(), None),
            };
            if document
                .notifications
                .iter()
                .any(|n| n.id == notification.id)
            {
                return Ok(Recorded::Duplicate);
            }
            document.notifications.push(notification.clone());
            let excess = document
                .notifications
                .len()
                .saturating_sub(self.kept_per_task);
            document.notifications.drain(..excess);
            let write = Write::new(key.clone(), encode(&document), Condition::replacing(etag))
                .expiring(Some(self.retention));
            match self.store.put(write).await {
                Ok(_) => return Ok(Recorded::New),
                Err(StoreError::Conflict { .. }) if attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub(super) async fn for_task(
        &self,
        task_id: &str,
    ) -> Result<Vec<ReceivedNotification>, ReadError> {
        Ok(
            read_document::<S, Document>(&self.store, &Self::key(task_id))
                .await?
                .notifications,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fakes::MemoryStore;

    fn notification(id: &str) -> ReceivedNotification {
        ReceivedNotification {
            id: id.into(),
            kind: "task_completed".into(),
            task_id: "t1".into(),
            message: "Task t1 has been completed".into(),
            sender_app_id: "task-api".into(),
            received_at: "2025-01-15T10:30:00.000000Z".into(),
        }
    }

    #[tokio::test]
    async fn a_key_is_kept_once_and_a_task_keeps_its_newest() {
        let mut store = NotificationStore::new(MemoryStore::new(), Duration::from_secs(3600));
        store.kept_per_task = 20;
        assert_eq!(
            store.record(notification("t1.2")).await.unwrap(),
            Recorded::New
        );
        assert_eq!(
            store.record(notification("t1.2")).await.unwrap(),
            Recorded::Duplicate
        );
        for n in 0..25 {
            store.record(notification(&format!("k{n}"))).await.unwrap();
        }
        let kept = store.for_task("t1").await.unwrap();
        assert_eq!(kept.len(), 20);
        assert_eq!(kept.last().unwrap().id, "k24");
    }

    /// The keys task t1's document keeps, oldest first.
    async fn kept_ids(store: &NotificationStore<MemoryStore>) -> Vec<String> {
        let kept = store.for_task("t1").await.unwrap();
        kept.into_iter().map(|n| n.id).collect()
    }

    #[tokio::test]
    async fn a_tasks_first_notification_is_written_without_a_read() {
        let memory = MemoryStore::new();
        let store = NotificationStore::new(memory.clone(), Duration::from_secs(3600));
        let reads = || memory.reads_of(&["notifications-task-"]);
        assert_eq!(
            store.record(notification("first")).await.unwrap(),
            Recorded::New
        );
        assert_eq!(reads(), 0);
        // The document is known to exist now: the next is merged into it after a read.
        assert_eq!(
            store.record(notification("second")).await.unwrap(),
            Recorded::New
        );
        assert_eq!(reads(), 1);
        assert_eq!(memory.refused("notifications-task-"), 0);
        assert_eq!(kept_ids(&store).await, ["first", "second"]);
    }

    #[tokio::test]
    async fn a_document_another_process_wrote_is_found_by_a_refused_first_write() {
        let memory = MemoryStore::new();
        let elsewhere = NotificationStore::new(memory.clone(), Duration::from_secs(3600));
        elsewhere.record(notification("there")).await.unwrap();
        // A process that has not seen the document (another replica, or after a restart).
        let here = NotificationStore::new(memory.clone(), Duration::from_secs(3600));
        assert_eq!(
            here.record(notification("there")).await.unwrap(),
            Recorded::Duplicate
        );
        let fresh = NotificationStore::new(memory.clone(), Duration::from_secs(3600));
        assert_eq!(
            fresh.record(notification("new")).await.unwrap(),
            Recorded::New
        );
        assert_eq!(kept_ids(&here).await, ["there", "new"]);
        // Each refused once, then merged; nothing overwritten.
        assert_eq!(memory.refused("notifications-task-"), 2);
    }
}
