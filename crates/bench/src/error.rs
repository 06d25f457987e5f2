use std::{io, path::PathBuf};

/// Why the benchmark could not run (request errors are results, not these).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Stack(#[from] devstack::Error),
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Failed {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: {source}")]
    Call {
        what: &'static str,
        #[source]
        source: CallError,
    },
    #[error("could not connect to {what}: {source}")]
    Connect {
        what: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Tracing or metrics were on, but their backend was not seen to get them: the figures
    /// would measure an export that never happened.
    #[error("{what}: {source}")]
    NotObserved { what: String, source: Unseen },
    #[error("could not write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("reading the event backlog: {0}")]
    Backlog(#[from] BacklogError),
}

/// What was found instead of the exports [`BenchError::NotObserved`] looked for.
#[derive(Debug, thiserror::Error)]
pub enum Unseen {
    #[error(transparent)]
    Prometheus(#[from] devstack::prometheus::QueryWaitError),
    #[error(transparent)]
    Jaeger(#[from] devstack::QueryError),
    /// The backend answered, without what was looked for.
    #[error("{0}")]
    Missing(String),
}

/// Why the event backlog could not be read from the broker.
#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("could not talk to {broker}: {source}")]
    Io {
        broker: &'static str,
        source: io::Error,
    },
    #[error("{broker}: {detail}")]
    Protocol {
        broker: &'static str,
        detail: String,
    },
    #[error("{broker} gave no answer within {waited:?}")]
    Timeout {
        broker: &'static str,
        waited: std::time::Duration,
    },
}

impl BacklogError {
    pub fn redis(detail: impl Into<String>) -> Self {
        BacklogError::Protocol {
            broker: "Redis",
            detail: detail.into(),
        }
    }

    pub fn kafka(detail: impl Into<String>) -> Self {
        BacklogError::Protocol {
            broker: "Kafka",
            detail: detail.into(),
        }
    }

    pub fn io(broker: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| BacklogError::Io { broker, source }
    }
}

/// Why one request of a workload failed: counted and reported, never fatal on its own.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error status.
    #[error("{}", crate::ops::describe(.0))]
    Status(#[from] tonic::Status),
    /// No answer within the call's deadline.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A stored task that does not read.
    #[error("{key}: {source}")]
    Unreadable {
        key: String,
        #[source]
        source: task_api::stored::InvalidDocument,
    },
    /// An answer that is not what the call asked for.
    #[error("{0}")]
    Wrong(String),
    /// The task the call is about is not there: never written, or deleted.
    #[error("{0}")]
    NotThere(String),
    /// What the call would write breaks a rule.
    #[error("{what} is invalid: {source}")]
    Invalid {
        what: &'static str,
        #[source]
        source: task_api::domain::Violations,
    },
    /// The call about one task failed.
    #[error("{call}({id}): {source}")]
    About {
        call: &'static str,
        id: String,
        #[source]
        source: Box<CallError>,
    },
    /// A caller ended before its calls were made.
    #[error("a caller stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

pub type Result<T> = std::result::Result<T, BenchError>;

pub fn setup(message: impl Into<String>) -> BenchError {
    BenchError::Setup(message.into())
}

/// `what` failed for `source`'s reason.
pub fn failed<E>(what: &'static str) -> impl FnOnce(E) -> BenchError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| BenchError::Failed {
        what,
        source: Box::new(source),
    }
}

/// The calls `what` made failed.
pub fn call_failed<E: Into<CallError>>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |source| BenchError::Call {
        what,
        source: source.into(),
    }
}
