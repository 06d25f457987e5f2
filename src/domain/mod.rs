//! The rules of tasks, free of gRPC, Dapr and I/O.
//!
//! Values are parsed into types that cannot hold invalid data ([`Priority`], [`TaskId`], ...), so
//! code past the edge never re-checks them.

mod change;
mod deadline;
mod event;
mod notification;
mod record;
mod signature;
mod status;
mod task;
pub(crate) mod text;
pub mod time;
mod validation;
mod versioned;

pub(crate) use change::{Change, Verdict};
pub use change::{Nonce, Unpublished};
pub use deadline::Alarm;
pub(crate) use deadline::{Deadline, DeadlineChange};
pub use event::{EventParseError, TaskEvent, TaskEventType};
pub use notification::Notification;
pub(crate) use notification::{
    BatchReceipts, IDEMPOTENCY_KEY, KeyedNotification, NOTIFY_BATCH_MAX, NOTIFY_BATCH_METHOD,
    NotificationBatch, NotificationParseError, Receipt,
};
pub use record::{Planned, TaskRecord, TaskState, Tombstone};
pub use signature::EventKey;
pub use status::{TaskStatus, UnknownStatus};
pub(crate) use task::{Description, RequestId, Title};
pub use task::{NewTask, Priority, Task, TaskChanges, TaskId};
pub use validation::{FieldViolation, Violations};
pub(crate) use versioned::Versioned;
