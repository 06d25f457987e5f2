//! The use cases: what task-api does with a request or an event, whichever door it came in by.
//! TaskService calls, invocations through Dapr and topic events all end up here, so they
//! behave the same.

mod events;
mod tasks;

pub use events::{Delivery, EventHandler, Outcome, Route};
pub use tasks::{ListQuery, Page, PageToken, Tasks};

use crate::{
    domain::{TaskEventType, TaskId, TaskStatus, Violations},
    sidecar::{SidecarError, Versioned},
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
    /// The change was saved but its event could not be published.
    #[error(
        "task {} was saved, but its {event_type} event could not be published: {source}",
        task.value.id
    )]
    EventNotPublished {
        task: Box<Versioned<crate::domain::Task>>,
        event_type: TaskEventType,
        source: SidecarError,
    },
    #[error("the Dapr sidecar is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SidecarError> for Error {
    fn from(error: SidecarError) -> Self {
        match error {
            SidecarError::Unavailable(message) => Error::Unavailable(message),
            SidecarError::InvalidEtag(message) => Error::Invalid(Violations::single(
                "etag",
                format!("is not a valid ETag ({message})"),
            )),
            other => Error::Internal(other.to_string()),
        }
    }
}
