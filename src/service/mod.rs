//! The use cases: what task-api does with a request or an event, whichever door it came in by.
//! TaskService calls, invocations through Dapr and topic events all end up here, so they behave
//! the same.
//!
//! The use cases depend only on the traits in [`ports`]; `sidecar/` implements them over Dapr
//! and [`fakes`] in memory, so every decision here is tested without a sidecar.

pub(crate) mod alarms;
mod batch;
pub(crate) mod events;
#[cfg(test)]
pub(crate) mod fakes;
pub(crate) mod in_flight;
pub(crate) mod index;
pub(crate) mod listing;
mod observer;
pub(crate) mod outbox;
pub(crate) mod pacing;
pub(crate) mod ports;
pub(crate) mod publisher;
pub(crate) mod relay;
pub(crate) mod store;
pub(crate) mod tasks;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;

use std::{fmt, time::Duration};

pub(crate) use alarms::Alarms;
pub(crate) use events::{Delivery, EventHandler, Outcome, Route};
pub(crate) use listing::ListQuery;
pub(crate) use relay::Relay;
pub(crate) use tasks::Tasks;

use self::{
    index::IndexError,
    ports::{BrokerError, Cause, SchedulerError, StoreError},
    store::{CorruptDocument, ReadError},
};
use crate::domain::{RequestId, TaskId, TaskStatus, Violations};

/// What could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dependency {
    StateStore,
    Broker,
    Scheduler,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dependency::StateStore => "the state store",
            Dependency::Broker => "the broker",
            Dependency::Scheduler => "the scheduler",
        })
    }
}

/// What became of the change a failed call was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landed {
    /// Nothing was saved (or the call changed nothing).
    No,
    /// The change may or may not have been saved: read the task to see. If it was, its event
    /// follows as for any saved change.
    Maybe,
}

/// Why a use case failed. [`crate::api::status`] turns it into a gRPC status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
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
    /// Every attempt to claim a request id lost a race (it keeps being claimed and released).
    #[error("request_id {request_id} could not be claimed after {attempts} attempts; retry")]
    RequestIdContended {
        request_id: RequestId,
        attempts: u32,
    },
    /// A dependency could not do it now; retrying may work.
    #[error("{}", unavailable_message(.dependency, .task_id.as_ref(), .landed, .source))]
    Unavailable {
        dependency: Dependency,
        /// The task the call was about.
        task_id: Option<TaskId>,
        landed: Landed,
        #[source]
        source: Cause,
    },
    /// The task has too many changes whose events are not published yet: the event path is
    /// not keeping up (or is down); retrying later works once it catches up.
    #[error(
        "task {task_id} has {unpublished} changes whose events are not published yet; retry later"
    )]
    Backlogged { task_id: TaskId, unpublished: usize },
    /// A create repeated a request id with different content.
    #[error(
        "request_id {request_id} was already used for a different request (it created task {task_id}); use a new request_id for a new task"
    )]
    RequestIdReused {
        request_id: RequestId,
        task_id: String,
    },
    /// A bug or a broken deployment: nothing a caller can fix.
    #[error("unexpected failure")]
    Internal(#[source] Cause),
}

fn unavailable_message(
    dependency: &Dependency,
    task_id: Option<&TaskId>,
    landed: &Landed,
    source: &Cause,
) -> String {
    let mut message = format!("{dependency} did not answer ({})", chain(source.as_ref()));
    match (task_id, landed) {
        (Some(id), Landed::Maybe) => message.push_str(&format!(
            "; the change to task {id} may or may not have been saved (read it to see)"
        )),
        (Some(id), Landed::No) => message.push_str(&format!("; task {id} was not changed")),
        (None, _) => {}
    }
    message
}

/// An error and its causes, as one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// A failed step of a change to task `id`; `write` says the failed step was the write itself,
    /// whose outcome is then unknown.
    pub(crate) fn from_store(error: StoreError, id: Option<&TaskId>, write: bool) -> Self {
        match error {
            StoreError::Unavailable { source } => Error::Unavailable {
                dependency: Dependency::StateStore,
                task_id: id.cloned(),
                landed: if write { Landed::Maybe } else { Landed::No },
                source,
            },
            StoreError::InvalidEtag { source } => Error::Invalid(Violations::single(
                "etag",
                format!(
                    "is not a valid ETag ({})",
                    crate::domain::text::excerpt(&source.to_string(), 200)
                ),
            )),
            other => Error::Internal(Box::new(other)),
        }
    }

    pub(crate) fn from_broker(error: BrokerError, id: Option<&TaskId>) -> Self {
        match error {
            BrokerError::Unavailable { source } => Error::Unavailable {
                dependency: Dependency::Broker,
                task_id: id.cloned(),
                landed: Landed::No,
                source,
            },
            other => Error::Internal(Box::new(other)),
        }
    }

    pub(crate) fn from_index(error: &std::sync::Arc<IndexError>, id: &TaskId) -> Self {
        match error.as_ref() {
            IndexError::Store(StoreError::Unavailable { .. }) | IndexError::WriterStopped => {
                Error::Unavailable {
                    dependency: Dependency::StateStore,
                    task_id: Some(id.clone()),
                    landed: Landed::No,
                    source: Box::new(SharedCause(error.clone())),
                }
            }
            _ => Error::Internal(Box::new(SharedCause(error.clone()))),
        }
    }
}

/// An error shared by several waiters (one batched write, or one staging message, answers them
/// all).
#[derive(Debug)]
pub(crate) struct SharedCause<E: ?Sized = IndexError>(pub(crate) std::sync::Arc<E>);

impl<E: fmt::Display + ?Sized> fmt::Display for SharedCause<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + ?Sized> std::error::Error for SharedCause<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `n` causes that are one: what each waiter on one failed call is told.
pub(crate) fn shared_causes(source: ports::Cause, n: usize) -> impl Iterator<Item = ports::Cause> {
    let shared: std::sync::Arc<dyn std::error::Error + Send + Sync> = std::sync::Arc::from(source);
    (0..n).map(move |_| Box::new(SharedCause(shared.clone())) as ports::Cause)
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Error::from_store(error, None, false)
    }
}

impl From<CorruptDocument> for Error {
    fn from(error: CorruptDocument) -> Self {
        Error::Internal(Box::new(error))
    }
}

impl From<ReadError> for Error {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Store(error) => error.into(),
            ReadError::Corrupt(error) => error.into(),
        }
    }
}

impl From<IndexError> for Error {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::Store(error) => error.into(),
            other => Error::Internal(Box::new(other)),
        }
    }
}

impl From<SchedulerError> for Error {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Unavailable { source } => Error::Unavailable {
                dependency: Dependency::Scheduler,
                task_id: None,
                landed: Landed::No,
                source,
            },
            other => Error::Internal(Box::new(other)),
        }
    }
}

/// Retries of an optimistic read-modify-write: short, jittered, growing pauses so concurrent
/// writers of one key spread out instead of colliding again.
pub(crate) async fn backoff(attempt: u32) {
    let ceiling_ms = (5u64 << attempt.min(6)).min(200);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling_ms))).await;
}
