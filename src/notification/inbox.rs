//! notification-service's use case: keep each notification once, and tell what was kept.

use super::store::{NotificationStore, ReceivedNotification, Recorded};
use crate::{
    domain::{Notification, NotificationParseError, time},
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
        let received = ReceivedNotification {
            id: id.clone(),
            kind: notification.kind.clone(),
            task_id: notification.task_id.clone(),
            message: notification.message.clone(),
            sender_app_id: sender.to_string(),
            received_at: time::format(time::now()),
        };
        let recorded = self.store.record(received).await?;
        Ok((notification, id, recorded))
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
            InboxError::Invalid(_) | InboxError::NoTaskId => {
                tonic::Status::invalid_argument(message)
            }
            InboxError::Unavailable(_) => tonic::Status::unavailable(message),
            InboxError::Corrupt(error) => crate::api::status::internal(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fakes::MemoryStore;

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
