//! notification-service's use case: keep each notification once, and tell what was kept.

use std::collections::HashMap;

use futures::future::join_all;

use super::store::{NotificationStore, ReceivedNotification, Recorded};
use crate::{
    domain::{
        KeyedNotification, NOTIFY_BATCH_MAX, Notification, NotificationBatch,
        NotificationParseError, Receipt, time,
    },
    service::{
        ports::{KeyValueStore, StoreError},
        store::ReadError,
    },
};

/// Why a notification could not be taken or read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InboxError {
    #[error("invalid notification")]
    Invalid(#[from] NotificationParseError),
    #[error("the task_id is required")]
    NoTaskId,
    #[error("the idempotency key is empty")]
    NoKey,
    #[error("the body is not a batch of notifications")]
    MalformedBatch(#[source] serde_json::Error),
    #[error("a batch carries at most {NOTIFY_BATCH_MAX} notifications; this one has {0}")]
    BatchTooLarge(usize),
    #[error("the state store did not answer")]
    Unavailable(#[source] StoreError),
    #[error("a stored notification document cannot be read")]
    Corrupt(#[source] ReadError),
}

impl From<ReadError> for InboxError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Store(error @ StoreError::Unavailable { .. }) => {
                InboxError::Unavailable(error)
            }
            other => InboxError::Corrupt(other),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Inbox<S> {
    store: NotificationStore<S>,
}

impl<S: KeyValueStore> Inbox<S> {
    pub(super) fn new(store: S, retention: std::time::Duration) -> Self {
        Self {
            store: NotificationStore::new(store, retention),
        }
    }

    /// Keeps the notification in `body` under `key` (a new key when the sender gave none),
    /// once however often it arrives.
    pub(super) async fn receive(
        &self,
        body: &[u8],
        key: Option<&str>,
        sender: &str,
    ) -> Result<(Notification, String, Recorded), InboxError> {
        let notification = Notification::from_json(body)?;
        let id = key
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let recorded = self.keep(&notification, &id, sender).await?;
        Ok((notification, id, recorded))
    }

    /// Keeps each notification of the batch in `body` under its key, once however often it
    /// arrives; a receipt for each, in order. One invalid or unkept notification does not hold
    /// back the others; a body that is not a batch is refused whole.
    pub(super) async fn receive_batch(
        &self,
        body: &[u8],
        sender: &str,
    ) -> Result<Vec<(KeyedNotification, Receipt)>, InboxError> {
        let batch: NotificationBatch =
            serde_json::from_slice(body).map_err(InboxError::MalformedBatch)?;
        let count = batch.notifications.len();
        if count > NOTIFY_BATCH_MAX {
            return Err(InboxError::BatchTooLarge(count));
        }
        // A task's notifications share one document: kept one after another, so they do not
        // race each other's ETags; different tasks' at once.
        let mut by_task: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, item) in batch.notifications.iter().enumerate() {
            by_task
                .entry(item.notification.task_id.as_str())
                .or_default()
                .push(index);
        }
        let notifications = &batch.notifications;
        let groups = by_task.into_values().map(|group| async move {
            let mut receipts = Vec::with_capacity(group.len());
            for index in group {
                let item = &notifications[index];
                receipts.push((index, self.keep_checked(item, sender).await));
            }
            receipts
        });
        let mut receipts: Vec<(usize, Receipt)> = join_all(groups).await.concat();
        receipts.sort_by_key(|(index, _)| *index);
        Ok(batch
            .notifications
            .into_iter()
            .zip(receipts)
            .map(|(item, (_, receipt))| (item, receipt))
            .collect())
    }

    async fn keep_checked(&self, item: &KeyedNotification, sender: &str) -> Receipt {
        let checked = item
            .notification
            .clone()
            .checked()
            .map_err(InboxError::from);
        let kept = match checked {
            Ok(notification) => self.keep(&notification, &item.key, sender).await,
            Err(error) => Err(error),
        };
        let reason = |error: &InboxError| crate::service::chain(error);
        match kept {
            Ok(Recorded::New) => Receipt::Kept,
            Ok(Recorded::Duplicate) => Receipt::Duplicate,
            Err(error @ (InboxError::Invalid(_) | InboxError::NoKey)) => Receipt::Refused {
                reason: reason(&error),
            },
            Err(error) => Receipt::Unavailable {
                reason: reason(&error),
            },
        }
    }

    async fn keep(
        &self,
        notification: &Notification,
        key: &str,
        sender: &str,
    ) -> Result<Recorded, InboxError> {
        if key.is_empty() {
            return Err(InboxError::NoKey);
        }
        let received = ReceivedNotification {
            id: key.to_string(),
            kind: notification.kind.clone(),
            task_id: notification.task_id.clone(),
            message: notification.message.clone(),
            sender_app_id: sender.to_string(),
            received_at: time::format(time::now()),
        };
        Ok(self.store.record(received).await?)
    }

    /// What was received for `task_id`, oldest first.
    pub(super) async fn for_task(
        &self,
        task_id: &str,
    ) -> Result<Vec<ReceivedNotification>, InboxError> {
        if task_id.is_empty() {
            return Err(InboxError::NoTaskId);
        }
        Ok(self.store.for_task(task_id).await?)
    }
}

impl From<InboxError> for tonic::Status {
    fn from(error: InboxError) -> Self {
        let message = crate::service::chain(&error);
        match error {
            InboxError::Invalid(_)
            | InboxError::NoTaskId
            | InboxError::NoKey
            | InboxError::MalformedBatch(_)
            | InboxError::BatchTooLarge(_) => tonic::Status::invalid_argument(message),
            InboxError::Unavailable(_) => tonic::Status::unavailable(message),
            InboxError::Corrupt(error) => crate::api::status::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fakes::MemoryStore;

    fn item(key: &str, task_id: &str) -> serde_json::Value {
        serde_json::json!({"key": key, "notification": Notification::task_completed(task_id)})
    }

    #[tokio::test]
    async fn a_batch_keeps_each_notification_once_and_answers_for_each_in_order() {
        let inbox = Inbox::new(MemoryStore::new(), std::time::Duration::from_secs(3600));
        inbox
            .receive(
                &Notification::task_completed("t1").to_json(),
                Some("t1.2"),
                "task-api",
            )
            .await
            .unwrap();
        let mut invalid = item("t3.2", "t3");
        invalid["notification"]["message"] = serde_json::json!("");
        let body = serde_json::json!({"notifications": [
            item("t1.2", "t1"), item("t1.4", "t1"), item("t2.2", "t2"), invalid,
            item("t2.2", "t2"), item("", "t4"), item("t1.6", "t1"),
        ]});
        let received = inbox
            .receive_batch(&serde_json::to_vec(&body).unwrap(), "task-api")
            .await
            .unwrap();
        let receipts: Vec<&Receipt> = received.iter().map(|(_, receipt)| receipt).collect();
        assert!(matches!(
            receipts.as_slice(),
            [
                Receipt::Duplicate,
                Receipt::Kept,
                Receipt::Kept,
                Receipt::Refused { .. },
                Receipt::Duplicate,
                Receipt::Refused { .. },
                Receipt::Kept,
            ]
        ));
        assert_eq!(received[3].0.key, "t3.2", "in the order sent");
        let kept = |task: &'static str| {
            let inbox = inbox.clone();
            async move {
                let kept = inbox.for_task(task).await.unwrap();
                kept.into_iter().map(|n| n.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(kept("t1").await, ["t1.2", "t1.4", "t1.6"]);
        assert_eq!(kept("t2").await, ["t2.2"]);
        assert!(kept("t3").await.is_empty());
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_batch_or_too_large_is_refused_whole() {
        let inbox = Inbox::new(MemoryStore::new(), std::time::Duration::from_secs(3600));
        let refused = inbox.receive_batch(b"[]", "x").await.unwrap_err();
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::InvalidArgument
        );
        let many: Vec<_> = (0..=NOTIFY_BATCH_MAX)
            .map(|n| item(&format!("t.{n}"), "t"))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "notifications": many })).unwrap();
        let refused = inbox.receive_batch(&body, "x").await.unwrap_err();
        assert!(matches!(refused, InboxError::BatchTooLarge(n) if n == NOTIFY_BATCH_MAX + 1));
        assert!(inbox.for_task("t").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_batch_the_store_cannot_keep_is_answered_unavailable_item_by_item() {
        let faults = crate::service::fakes::Faults::default();
        let store = MemoryStore::with_faults(faults.clone());
        faults.take_down("store");
        let inbox = Inbox::new(store, std::time::Duration::from_secs(3600));
        let body = serde_json::json!({"notifications": [item("t1.2", "t1"), item("t2.2", "t2")]});
        let received = inbox
            .receive_batch(&serde_json::to_vec(&body).unwrap(), "task-api")
            .await
            .unwrap();
        assert!(
            received
                .iter()
                .all(|(_, receipt)| matches!(receipt, Receipt::Unavailable { .. })),
            "{received:?}"
        );
        faults.bring_up("store");
        assert!(inbox.for_task("t1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_notification_is_kept_once_per_key_and_bad_ones_are_refused() {
        let inbox = Inbox::new(MemoryStore::new(), std::time::Duration::from_secs(3600));
        let body = Notification::task_completed("t1").to_json();
        let (_, _, first) = inbox
            .receive(&body, Some("t1.2"), "task-api")
            .await
            .unwrap();
        let (_, _, again) = inbox
            .receive(&body, Some("t1.2"), "task-api")
            .await
            .unwrap();
        assert_eq!((first, again), (Recorded::New, Recorded::Duplicate));
        assert_eq!(inbox.for_task("t1").await.unwrap().len(), 1);
        let refused = inbox.receive(b"{}", Some("k"), "x").await.unwrap_err();
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::InvalidArgument
        );
        assert!(matches!(
            inbox.for_task("").await,
            Err(InboxError::NoTaskId)
        ));
    }
}
