//! The notification task-api sends notification-service when a task is completed: the
//! original's JSON, `{"type":"task_completed","task_id":"…","message":"Task … has been completed"}`;
//! and, in the same shape, when a task is due (`task_due`) or its reminder time came
//! (`task_reminder`).

use serde::{Deserialize, Serialize};

use super::{Alarm, TaskEventType, TaskStatus};

/// The invocation metadata that makes a repeated notification a no-op at the receiver.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(crate) const NOTIFICATION_TYPE_TASK_COMPLETED: &str = "task_completed";
pub(super) const NOTIFICATION_TYPE_TASK_DUE: &str = "task_due";
pub(super) const NOTIFICATION_TYPE_TASK_REMINDER: &str = "task_reminder";
const TYPES: [&str; 3] = [
    NOTIFICATION_TYPE_TASK_COMPLETED,
    NOTIFICATION_TYPE_TASK_DUE,
    NOTIFICATION_TYPE_TASK_REMINDER,
];
const MESSAGE_MAX_CHARS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) task_id: String,
    pub(crate) message: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotificationParseError {
    #[error("the body is not a notification: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("{field} {rule}")]
    Invalid { field: &'static str, rule: String },
}

impl Notification {
    pub fn task_completed(task_id: &str) -> Self {
        Self {
            kind: NOTIFICATION_TYPE_TASK_COMPLETED.into(),
            task_id: task_id.to_string(),
            message: format!("Task {task_id} has been completed"),
        }
    }

    /// The notification an event of `event_type` calls for, if any.
    pub(crate) fn of(event_type: TaskEventType, task_id: &str) -> Option<Self> {
        let (kind, message) = match event_type {
            TaskEventType::StatusChanged(TaskStatus::Completed) => {
                return Some(Self::task_completed(task_id));
            }
            TaskEventType::Announced(Alarm::Due) => {
                (NOTIFICATION_TYPE_TASK_DUE, format!("Task {task_id} is due"))
            }
            TaskEventType::Announced(Alarm::Reminder) => (
                NOTIFICATION_TYPE_TASK_REMINDER,
                format!("Task {task_id} will be due soon"),
            ),
            _ => return None,
        };
        Some(Self {
            kind: kind.into(),
            task_id: task_id.to_string(),
            message,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Three strings: serialising cannot fail.
        serde_json::to_vec(self).expect("a notification serialises to JSON")
    }

    /// Parses and checks a received body.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, NotificationParseError> {
        let notification: Notification =
            serde_json::from_slice(bytes).map_err(NotificationParseError::Malformed)?;
        notification.checked()
    }

    /// The notification, if its fields are within their rules.
    pub(crate) fn checked(self) -> Result<Self, NotificationParseError> {
        let notification = self;
        let invalid = |field, rule: &str| NotificationParseError::Invalid {
            field,
            rule: rule.to_string(),
        };
        if !TYPES.contains(&notification.kind.as_str()) {
            return Err(invalid(
                "type",
                "must be \"task_completed\", \"task_due\" or \"task_reminder\"",
            ));
        }
        if notification.task_id.is_empty() || notification.task_id.len() > 64 {
            return Err(invalid("task_id", "must be 1 to 64 characters"));
        }
        if notification.message.is_empty()
            || notification.message.chars().count() > MESSAGE_MAX_CHARS
        {
            return Err(invalid("message", "must be 1 to 1000 characters"));
        }
        Ok(notification)
    }
}

/// The method of notification-service that takes several notifications in one call. `notify`
/// takes one, as the original's receiver does; a receiver without this method is sent them
/// one at a time.
pub(crate) const NOTIFY_BATCH_METHOD: &str = "notify-batch";

/// The most notifications one `notify-batch` call may carry.
pub(crate) const NOTIFY_BATCH_MAX: usize = 256;

/// The body of `notify-batch`: notifications, each with the key it is kept under once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NotificationBatch {
    pub(crate) notifications: Vec<KeyedNotification>,
}

/// A notification and its idempotency key (what `notify` takes in the `idempotency-key`
/// metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyedNotification {
    pub(crate) key: String,
    pub(crate) notification: Notification,
}

/// The answer of `notify-batch`: a receipt for each notification, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchReceipts {
    pub(crate) receipts: Vec<Receipt>,
}

/// What became of one notification of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Receipt {
    /// Kept now.
    Kept,
    /// Its key was kept before: nothing more to do.
    Duplicate,
    /// Invalid: sending it again will not help.
    Refused { reason: String },
    /// Not kept now (its store did not answer): send it again.
    Unavailable { reason: String },
}

impl BatchReceipts {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        // Tags and strings: serialising cannot fail.
        serde_json::to_vec(self).expect("receipts serialise to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_originals_payload() {
        let json: serde_json::Value =
            serde_json::from_slice(&Notification::task_completed("t1").to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "task_completed", "task_id": "t1", "message": "Task t1 has been completed"})
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        assert!(Notification::from_json(b"{}").is_err());
        assert!(
            Notification::from_json(br#"{"type":"other","task_id":"t","message":"m"}"#).is_err()
        );
        assert!(
            Notification::from_json(br#"{"type":"task_completed","task_id":"","message":"m"}"#)
                .is_err()
        );
        assert!(Notification::from_json(&Notification::task_completed("t").to_json()).is_ok());
    }

    #[test]
    fn batches_and_receipts_have_a_stable_shape() {
        let batch = NotificationBatch {
            notifications: vec![KeyedNotification {
                key: "t1.2".into(),
                notification: Notification::task_completed("t1"),
            }],
        };
        assert_eq!(
            serde_json::to_value(&batch).unwrap(),
            serde_json::json!({"notifications": [{"key": "t1.2", "notification":
                {"type": "task_completed", "task_id": "t1", "message": "Task t1 has been completed"}}]})
        );
        let receipts = BatchReceipts {
            receipts: vec![
                Receipt::Kept,
                Receipt::Duplicate,
                Receipt::Refused { reason: "r".into() },
                Receipt::Unavailable { reason: "u".into() },
            ],
        };
        let json = serde_json::json!({"receipts": [{"outcome": "kept"}, {"outcome": "duplicate"},
            {"outcome": "refused", "reason": "r"}, {"outcome": "unavailable", "reason": "u"}]});
        assert_eq!(serde_json::to_value(&receipts).unwrap(), json);
        assert_eq!(
            serde_json::from_slice::<BatchReceipts>(&receipts.to_json()).unwrap(),
            receipts
        );
    }
}
