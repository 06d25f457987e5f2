//! The rules of tasks, free of gRPC, Dapr and I/O.
//!
//! Values are parsed into types that cannot hold invalid data ([`Title`], [`Priority`], ...), so
//! code past the edge never re-checks them.

mod change;
mod deadline;
mod event;
mod notification;
mod record;
mod status;
mod task;
pub mod text;
pub mod time;
mod validation;
mod versioned;

pub use change::{Change, HISTORY_KEPT, History, Nonce, Verdict};
pub use deadline::{Alarm, Deadline, DeadlineChange};
pub use event::{EventParseError, TaskEvent, TaskEventType};
pub use notification::{NOTIFICATION_TYPE_TASK_COMPLETED, Notification, NotificationParseError};
pub use record::{Planned, TaskRecord, TaskState, Tombstone};
pub use status::{TaskStatus, UnknownStatus};
pub use task::{
    DESCRIPTION_MAX_CHARS, Description, NewTask, Priority, RequestId, TITLE_MAX_CHARS, Task,
    TaskChanges, TaskId, Title,
};
pub use validation::{FieldViolation, Violations};
pub use versioned::Versioned;
