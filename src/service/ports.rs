//! What the use cases need from the outside world, as traits the service layer owns.
//!
//! `sidecar/` implements them over the Dapr sidecar; `service::fakes` implements them in
//! memory, able to fail or stop at any chosen call, so every write order and every decision of
//! the use cases is checked in milliseconds. A fake is never the evidence that Dapr behaves a
//! certain way: the integration tests run the Dapr implementations against a real daprd.
//!
//! The ports are deliberately plain (keyed documents with ETags, topics of messages, jobs, one
//! invocation): the documents' formats, the list index and every decision stay in the service
//! layer, where the fakes exercise them too.

use std::{future::Future, time::Duration};

use crate::domain::{Alarm, KeyedNotification, TaskId, Versioned};

/// The cause of a failure in a dependency, kept as it was (e.g. the sidecar's `tonic::Status`).
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a write treats the version stored under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Overwrite whatever is there.
    Any,
    /// Only if the key does not exist.
    IfAbsent,
    /// Only if the stored ETag is still this one.
    IfMatch(String),
}

impl Condition {
    /// The condition for replacing what was read: its ETag, or absence if nothing was there.
    pub(crate) fn replacing(etag: Option<&str>) -> Self {
        match etag {
            Some(etag) => Condition::IfMatch(etag.to_string()),
            None => Condition::IfAbsent,
        }
    }
}

/// One document to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) condition: Condition,
    /// The store forgets the document after this long (e.g. a tombstone).
    pub(crate) ttl: Option<Duration>,
}

impl Write {
    pub(crate) fn new(key: impl Into<String>, value: Vec<u8>, condition: Condition) -> Self {
        Self {
            key: key.into(),
            value,
            condition,
            ttl: None,
        }
    }

    pub(crate) fn expiring(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The write's condition did not hold: someone else wrote the key first.
    #[error("{key} was changed by someone else")]
    Conflict { key: String },
    /// An ETag the store could not have issued.
    #[error("the ETag is not one the state store issued")]
    InvalidEtag {
        #[source]
        source: Cause,
    },
    /// The store (or the sidecar in front of it) did not do it; it may work later. A write may
    /// or may not have taken effect.
    #[error("the state store did not answer")]
    Unavailable {
        #[source]
        source: Cause,
    },
    /// The store refused the call for a reason retrying will not change.
    #[error("the state store refused the call")]
    Failed {
        #[source]
        source: Cause,
    },
}

/// Documents under keys, each with the ETag of its current version.
pub(crate) trait KeyValueStore: Clone + Send + Sync + 'static {
    /// The value and ETag under `key`; `None` when there is none.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<Vec<u8>>>, StoreError>> + Send;

    /// Values of many keys in one call, in the order asked (a key asked twice gets its value
    /// twice); `None` for missing keys.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Versioned<Vec<u8>>>>, StoreError>> + Send;

    /// Writes one document, failing with [`StoreError::Conflict`] if its condition does not hold.
    /// Answers the document's new ETag when the store tells it without a read (Dapr's save does
    /// not answer with it, but some stores' ETags follow from the write), `None` otherwise.
    fn put(&self, write: Write) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Several writes in one call. On an error some may have applied and some not: read the
    /// keys back to tell.
    fn put_many(&self, writes: Vec<Write>) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The topics task-api uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// task-api's own topic, where changes stage their event before they are written.
    Outbox,
    /// Where the relay puts off staged events it cannot decide yet.
    OutboxRetry,
    /// `task-events`, where the events of committed changes are published.
    Events,
    /// Where events whose handling failed wait for another attempt.
    Retry,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The CloudEvent id subscribers see; the broker's own when `None`.
    pub(crate) id: Option<String>,
    /// JSON.
    pub(crate) data: Vec<u8>,
    /// The W3C trace context subscribers continue (the CloudEvent's `traceparent`); the
    /// broker's own when `None`.
    pub(crate) traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    /// The broker (or the sidecar in front of it) did not take the message; it may later.
    #[error("the broker did not take the message")]
    Unavailable {
        #[source]
        source: Cause,
    },
    #[error("the broker refused the message")]
    Failed {
        #[source]
        source: Cause,
    },
}

/// Topics of messages.
pub(crate) trait Broker: Clone + Send + Sync + 'static {
    /// Publishes `messages` to `topic` in one call; for each, whether the broker took it.
    fn publish(
        &self,
        topic: Topic,
        messages: Vec<Message>,
    ) -> impl Future<Output = Vec<Result<(), BrokerError>>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SchedulerError {
    #[error("the scheduler did not take the job")]
    Unavailable {
        #[source]
        source: Cause,
    },
    #[error("the scheduler refused the job")]
    Failed {
        #[source]
        source: Cause,
    },
}

/// A one-shot job that fires `alarm` of `task_id` at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlarmJob {
    pub(crate) task_id: TaskId,
    pub(crate) alarm: Alarm,
    pub(crate) at: chrono::DateTime<chrono::Utc>,
}

/// The jobs that fire a task's alarms, one per task and alarm.
pub(crate) trait Scheduler: Clone + Send + Sync + 'static {
    /// Schedules (or moves) the job of `job.alarm` of `job.task_id` to fire once at `job.at`.
    fn schedule(&self, job: &AlarmJob) -> impl Future<Output = Result<(), SchedulerError>> + Send;

    /// Removes the job of `alarm` of `task_id`, if there is one.
    fn cancel(
        &self,
        task_id: &TaskId,
        alarm: Alarm,
    ) -> impl Future<Output = Result<(), SchedulerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    /// The receiver refused the notification as invalid: sending it again will not help.
    #[error("the notification was refused as invalid")]
    Refused {
        #[source]
        source: Cause,
    },
    #[error("the notification was not delivered")]
    Unavailable {
        #[source]
        source: Cause,
    },
}

/// Delivery of notifications to notification-service.
pub(crate) trait Notifier: Clone + Send + Sync + 'static {
    /// Delivers each notification; the receiver keeps one per key however often it arrives.
    /// One result each, in order: one may be refused while the others are kept. Several are
    /// sent in one call where the receiver takes them so.
    fn notify(
        &self,
        notifications: &[KeyedNotification],
    ) -> impl Future<Output = Vec<Result<(), NotifyError>>> + Send;
}

/// The set of implementations the use cases run on.
pub(crate) trait Ports: Clone + Send + Sync + 'static {
    type Store: KeyValueStore;
    type Broker: Broker;
    type Scheduler: Scheduler;
    type Notifier: Notifier;
}
