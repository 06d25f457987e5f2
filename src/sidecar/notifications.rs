//! notification-service's record of what it received, one document per task.
//!
//! Recording is a single ETag-guarded update of the task's document that first looks for the
//! idempotency key, so a notification delivered twice, even concurrently, is kept once.

use serde::{Deserialize, Serialize};

use super::{SidecarError, StateStore, state::key_fragment};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedNotification {
    /// The sender's idempotency key.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub task_id: String,
    pub message: String,
    pub sender_app_id: String,
    pub received_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    notifications: Vec<ReceivedNotification>,
}

/// Whether a notification was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct NotificationStore {
    state: StateStore,
}

impl NotificationStore {
    pub fn new(state: StateStore) -> Self {
        Self { state }
    }

    fn key(task_id: &str) -> String {
        format!("notifications-task-{}", key_fragment(task_id))
    }

    pub async fn record(
        &self,
        notification: ReceivedNotification,
    ) -> Result<Recorded, SidecarError> {
        self.state
            .update_document(&Self::key(&notification.task_id), |doc: &mut Document| {
                if doc.notifications.iter().any(|n| n.id == notification.id) {
                    return (false, Recorded::Duplicate);
                }
                doc.notifications.push(notification.clone());
                (true, Recorded::New)
            })
            .await
    }

    pub async fn for_task(&self, task_id: &str) -> Result<Vec<ReceivedNotification>, SidecarError> {
        Ok(self
            .state
            .read_document::<Document>(&Self::key(task_id))
            .await?
            .notifications)
    }
}
