//! The use cases: what task-api does with a request or an event, whichever door it came in by.
//! TaskService calls, invocations through Dapr and topic events all end up here, so they
//! behave the same.

mod alarms;
mod events;
mod listing;
mod relay;
mod tasks;

pub use alarms::Alarms;
pub use events::{Delivery, EventHandler, Outcome, Route};
pub use listing::{ListQuery, Page, PageToken};
pub use relay::Relay;
pub use tasks::Tasks;

use crate::{
    domain::{RequestId, TaskId, TaskStatus, Violations, text::excerpt},
    sidecar::SidecarError,
};

/// Why a use case failed. [`crate::api::status`] turns it into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The caller's ETag is stale: someone changed the task since the caller read it.
    #[error(
        "task {id} was changed since you read it: its ETag is now {current_etag:?} (status {current_status}); read it again and retry"
    )]
    StaleEtag {
        id: TaskId,
        current_etag: String,
        current_status: TaskStatus,
    },
    /// Every attempt of a read-modify-write lost a race against other writers.
    #[error("task {id} is being changed by others too often; gave up after {attempts} attempts")]
    Contended { id: TaskId, attempts: u32 },
    /// The sidecar, the state store or the broker could not do it now; retrying may work.
    /// `task_id` names the task the call was about; `may_have_landed` says the change may have
    /// been saved (its event then follows as for any saved change).
    #[error("{message}")]
    Unavailable {
        message: String,
        task_id: Option<TaskId>,
        may_have_landed: bool,
    },
    /// A create repeated a request id with different content.
    #[error(
        "request_id {request_id} was already used for a different request (it created task {task_id}); use a new request_id for a new task"
    )]
    RequestIdReused {
        request_id: RequestId,
        task_id: String,
    },
    /// A bug or a broken deployment: nothing a caller can fix.
    #[error("unexpected failure: {0}")]
    Internal(#[source] SidecarError),
}

impl Error {
    /// Unavailable, about `task_id` if given; the change did not land.
    pub fn unavailable(message: impl Into<String>, task_id: Option<TaskId>) -> Self {
        Error::Unavailable {
            message: message.into(),
            task_id,
            may_have_landed: false,
        }
    }

    /// A failed step of a change to task `id`; `written` says the failed step was the write
    /// itself, whose outcome is then unknown.
    pub fn from_write(error: SidecarError, id: &TaskId, written: bool) -> Self {
        match error {
            SidecarError::Unavailable(message) if written => Error::Unavailable {
                message: format!(
                    "{message}; the change to task {id} may or may not have been saved (read it to see)"
                ),
                task_id: Some(id.clone()),
                may_have_landed: true,
            },
            SidecarError::Unavailable(message) => Error::Unavailable {
                message: format!("{message}; task {id} was not changed"),
                task_id: Some(id.clone()),
                may_have_landed: false,
            },
            other => other.into(),
        }
    }
}

impl From<SidecarError> for Error {
    fn from(error: SidecarError) -> Self {
        match error {
            SidecarError::Unavailable(message) => Error::unavailable(message, None),
            SidecarError::InvalidEtag(message) => Error::Invalid(Violations::single(
                "etag",
                format!("is not a valid ETag ({})", excerpt(&message, 200)),
            )),
            other => Error::Internal(other),
        }
    }
}
