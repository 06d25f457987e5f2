//! task-api's outbox on the broker: a change stages its event on a private topic before the
//! change is written; the relay publishes it to `task-events` once the stored task confirms the
//! change (see [`super::relay`]).
//!
//! Staging first means a change never commits without a durable trace of its event; publishing
//! only what the record confirms means a change that failed never produces an event.
//!
//! ```json
//! {"nonce":"8f2a1c0d","staged_at":"2025-01-15T10:30:00.100000Z","reschedules":true,
//!  "event":{"event_type":"task.created","task_id":"…","title":"…","status":"pending",
//!           "timestamp":"…","revision":1}}
//! ```
//!
//! With spans exported, `traceparent` holds the context of the change's `stage` span, which the
//! relay's publish continues (absent otherwise, and in messages staged before it existed).
//!
//! A staged event the relay cannot decide yet (its write still in flight elsewhere) moves to
//! the outbox's retry topic with `attempt` and `not_before`, so it never holds back the events
//! behind it.
//!
//! Concurrent changes stage together: while one publish is in flight, the events staged meanwhile
//! queue and go out together in the next publish, as one message, so many writers cost the
//! sidecar one call, one stream entry and one delivery, and a writer on its own waits on no
//! timer. Such a message lists its events (the relay decides each on its own):
//!
//! ```json
//! {"batch":[{"nonce":"8f2a1c0d","staged_at":"…","event":{…}},{"nonce":"…","staged_at":"…","event":{…}}]}
//! ```
//!
//! A batch of one is the event's own message, as are the copies put off to the retry topic.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    ports::{Broker, BrokerError, Message, Topic},
    store::{decode, encode},
};
use crate::{
    domain::{FieldViolation, Nonce, TaskEvent, time},
    telemetry::spans,
};

/// The most events one staging message carries: at most about 1.5 KB each (a 200-character
/// title of 4-byte characters, and the rest), well under a broker's usual 1 MiB per message.
const MAX_BATCH: usize = 128;

/// An event waiting for its change to be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StagedEvent {
    /// The event to publish, carrying the revision the change makes.
    pub(crate) event: TaskEvent,
    /// The writer's nonce for that revision.
    pub(crate) nonce: Nonce,
    pub(crate) staged_at: DateTime<Utc>,
    /// The change alters the task's scheduled alarms: the relay syncs its jobs first.
    pub(crate) reschedules: bool,
    /// How often the relay already put it off (0 when first staged).
    pub(crate) attempt: u32,
    /// Not to be decided before this time (when put off).
    pub(crate) not_before: Option<DateTime<Utc>>,
    /// Found claimed by a relay that never recorded the outcome: published again only after
    /// this time, if `task-events` has not shown by then that the publish landed.
    pub(crate) grace_until: Option<DateTime<Utc>>,
    /// The W3C trace context of the change that staged it, which its publish continues.
    pub(crate) traceparent: Option<String>,
}

impl StagedEvent {
    /// The revision the change makes.
    pub(crate) fn revision(&self) -> u64 {
        self.event.revision.unwrap_or_default()
    }

    /// This event put off once more, to be looked at again after `delay`.
    pub(crate) fn put_off(&self, delay: Duration) -> Self {
        let now = time::now();
        Self {
            attempt: self.attempt + 1,
            not_before: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
            ..self.clone()
        }
    }

    /// This event put off until `at`, published then unless `task-events` showed meanwhile that
    /// a claimed publish landed (see the relay).
    pub(crate) fn put_off_until(&self, at: DateTime<Utc>, grace_until: DateTime<Utc>) -> Self {
        Self {
            attempt: self.attempt + 1,
            not_before: Some(at),
            grace_until: Some(grace_until),
            ..self.clone()
        }
    }

    /// How long ago the change was staged.
    pub(crate) fn age(&self) -> Duration {
        (time::now() - self.staged_at).to_std().unwrap_or_default()
    }
}

/// What arrives on the outbox topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutboxMessage {
    Staged(StagedEvent),
    /// Events staged together, by concurrent changes.
    Batch(Vec<StagedEvent>),
    /// A readiness probe: proves the broker takes messages; nothing to do.
    Probe,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
struct Document(OutboxMessage);

#[derive(Default, Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    probe: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    batch: Vec<Wire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reschedules: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TryFrom<Wire> for Document {
    type Error = FieldViolation;

    fn try_from(wire: Wire) -> Result<Self, Self::Error> {
        let message = if wire.probe {
            OutboxMessage::Probe
        } else if !wire.batch.is_empty() {
            OutboxMessage::Batch(
                wire.batch
                    .into_iter()
                    .map(staged_event)
                    .collect::<Result<_, _>>()?,
            )
        } else {
            OutboxMessage::Staged(staged_event(wire)?)
        };
        Ok(Document(message))
    }
}

fn staged_event(wire: Wire) -> Result<StagedEvent, FieldViolation> {
    let nonce = wire
        .nonce
        .as_deref()
        .and_then(Nonce::parse)
        .ok_or_else(|| FieldViolation::new("nonce", "is missing or malformed"))?;
    let staged_at = wire
        .staged_at
        .as_deref()
        .and_then(time::parse)
        .ok_or_else(|| FieldViolation::new("staged_at", "is missing or malformed"))?;
    let date_time = |field: &'static str, text: Option<String>| {
        text.map(|text| {
            time::parse(&text).ok_or_else(|| FieldViolation::new(field, "is not a date-time"))
        })
        .transpose()
    };
    let not_before = date_time("not_before", wire.not_before)?;
    let grace_until = date_time("grace_until", wire.grace_until)?;
    let event = wire
        .event
        .ok_or_else(|| FieldViolation::new("event", "is missing"))?;
    let event = TaskEvent::from_json(event.to_string().as_bytes())
        .map_err(|e| FieldViolation::new("event", e.to_string()))?;
    if event.revision.is_none() {
        return Err(FieldViolation::new("event", "has no revision"));
    }
    Ok(StagedEvent {
        event,
        nonce,
        staged_at,
        reschedules: wire.reschedules,
        attempt: wire.attempt,
        not_before,
        grace_until,
        traceparent: wire.traceparent,
    })
}

impl From<Document> for Wire {
    fn from(Document(message): Document) -> Self {
        match message {
            OutboxMessage::Probe => Wire {
                probe: true,
                ..Wire::default()
            },
            OutboxMessage::Staged(staged) => staged.into(),
            OutboxMessage::Batch(batch) => Wire {
                batch: batch.into_iter().map(Wire::from).collect(),
                ..Wire::default()
            },
        }
    }
}

impl From<StagedEvent> for Wire {
    fn from(staged: StagedEvent) -> Self {
        Wire {
            nonce: Some(staged.nonce.to_string()),
            staged_at: Some(time::format(staged.staged_at)),
            // An event is plain JSON: it always reads back.
            event: serde_json::from_slice(&staged.event.to_json()).ok(),
            reschedules: staged.reschedules,
            attempt: staged.attempt,
            not_before: staged.not_before.map(time::format),
            grace_until: staged.grace_until.map(time::format),
            traceparent: staged.traceparent,
            ..Wire::default()
        }
    }
}

impl OutboxMessage {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        encode(&Document(self.clone()))
    }

    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, crate::service::store::CorruptDocument> {
        decode::<Document>("outbox message", bytes).map(|Document(message)| message)
    }

    /// The message to publish: ids of racing writers' staged events differ by nonce; its
    /// delivery continues the change's trace (a batch's, the trace of the publish that staged it).
    pub(crate) fn to_message(&self) -> Message {
        let (id, traceparent) = match self {
            OutboxMessage::Staged(staged) => (Some(staged_id(staged)), staged.traceparent.clone()),
            OutboxMessage::Batch(batch) => (
                batch
                    .first()
                    .map(|first| format!("{}+{}", staged_id(first), batch.len() - 1)),
                None,
            ),
            OutboxMessage::Probe => (None, None),
        };
        Message {
            id,
            data: self.to_json(),
            traceparent,
        }
    }
}

fn staged_id(staged: &StagedEvent) -> String {
    format!(
        "{}.{}#{}-{}",
        staged.event.task_id,
        staged.revision(),
        staged.nonce,
        staged.attempt
    )
}

type Pending = (StagedEvent, oneshot::Sender<Result<(), BrokerError>>);

/// Stages events on the outbox topic, concurrent writers' in one message.
#[derive(Clone)]
pub(crate) struct Outbox<B> {
    broker: B,
    queue: mpsc::UnboundedSender<Pending>,
    /// When a staging publish or a probe last succeeded (µs since the epoch), for readiness.
    last_success: Arc<AtomicI64>,
    /// When one last failed.
    last_failure: Arc<AtomicI64>,
}

impl<B> std::fmt::Debug for Outbox<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl<B: Broker> Outbox<B> {
    /// Must be called within a tokio runtime: it starts the staging task, which ends when the
    /// last clone is dropped.
    pub(crate) fn new(broker: B) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        let last_success = Arc::new(AtomicI64::new(0));
        let last_failure = Arc::new(AtomicI64::new(0));
        tokio::spawn(stage_batches(
            broker.clone(),
            requests,
            Outcomes {
                success: last_success.clone(),
                failure: last_failure.clone(),
            },
        ));
        Self {
            broker,
            queue,
            last_success,
            last_failure,
        }
    }

    /// Stages `staged`; returns once the broker took it.
    pub(crate) async fn stage(&self, staged: StagedEvent) -> Result<(), BrokerError> {
        let (done, result) = oneshot::channel();
        if self.queue.send((staged, done)).is_err() {
            return Err(stopped());
        }
        result.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Puts staged events off to the outbox's retry topic, each to be decided later.
    pub(crate) async fn put_off(&self, staged: &[StagedEvent]) -> Vec<Result<(), BrokerError>> {
        let messages = staged
            .iter()
            .map(|s| OutboxMessage::Staged(s.clone()).to_message())
            .collect();
        self.broker.publish(Topic::OutboxRetry, messages).await
    }

    /// How long since a staging publish (or a probe) last succeeded, if none failed since;
    /// `None` if none has, or one failed after it.
    pub(crate) fn proven_since(&self) -> Option<Duration> {
        let at = self.last_success.load(Ordering::Relaxed);
        let failed = self.last_failure.load(Ordering::Relaxed);
        (at > 0 && at > failed).then(|| {
            let now = time::now().timestamp_micros();
            Duration::from_micros(u64::try_from(now - at).unwrap_or(0))
        })
    }

    /// Publishes a readiness probe to the outbox topic.
    pub(crate) async fn probe(&self) -> Result<(), BrokerError> {
        let results = self
            .broker
            .publish(Topic::Outbox, vec![OutboxMessage::Probe.to_message()])
            .await;
        let result = results.into_iter().next().unwrap_or(Ok(()));
        let at = if result.is_ok() {
            &self.last_success
        } else {
            &self.last_failure
        };
        at.store(time::now().timestamp_micros(), Ordering::Relaxed);
        result
    }
}

fn stopped() -> BrokerError {
    BrokerError::Failed {
        source: "the staging task stopped".into(),
    }
}

/// When staging last succeeded and last failed.
struct Outcomes {
    success: Arc<AtomicI64>,
    failure: Arc<AtomicI64>,
}

/// Takes every queued event, publishes them in one message, answers each.
async fn stage_batches<B: Broker>(
    broker: B,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    outcomes: Outcomes,
) {
    while let Some(batch) = super::batch::next(&mut requests, MAX_BATCH).await {
        let (mut staged, waiters): (Vec<StagedEvent>, Vec<_>) = batch.into_iter().unzip();
        let span = spans::batch(
            "outbox batch",
            staged.iter().map(|s| s.traceparent.as_deref()),
        );
        let message = match staged.len() {
            1 => OutboxMessage::Staged(staged.remove(0)).to_message(),
            _ => Message {
                traceparent: spans::traceparent_of(&span),
                ..OutboxMessage::Batch(staged).to_message()
            },
        };
        let result = broker
            .publish(Topic::Outbox, vec![message])
            .instrument(span)
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(BrokerError::Failed {
                    source: "the broker answered no result for the message".into(),
                })
            });
        let at = if result.is_ok() {
            &outcomes.success
        } else {
            &outcomes.failure
        };
        at.store(time::now().timestamp_micros(), Ordering::Relaxed);
        let answers = answers(result, waiters.len());
        for (waiter, answer) in waiters.into_iter().zip(answers) {
            let _ = waiter.send(answer);
        }
    }
}

/// The one message's result, for each of its `n` events.
fn answers(result: Result<(), BrokerError>, n: usize) -> Vec<Result<(), BrokerError>> {
    let Err(error) = result else {
        return (0..n).map(|_| Ok(())).collect();
    };
    let (unavailable, source) = match error {
        BrokerError::Unavailable { source } => (true, source),
        BrokerError::Failed { source } => (false, source),
    };
    super::shared_causes(source, n)
        .map(|source| {
            Err(if unavailable {
                BrokerError::Unavailable { source }
            } else {
                BrokerError::Failed { source }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{TaskEventType, TaskStatus},
        service::fakes::MemoryBroker,
    };

    fn staged() -> StagedEvent {
        StagedEvent {
            event: TaskEvent {
                event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
                task_id: "t-1".into(),
                title: "Learn <Dapr> & more".into(),
                status: TaskStatus::Completed,
                timestamp: time::parse("2025-01-15T10:30:00").unwrap(),
                revision: Some(4),
                signature: None,
            },
            nonce: Nonce::parse("0badc0de").unwrap(),
            staged_at: time::parse("2025-01-15T10:30:00.5").unwrap(),
            reschedules: true,
            attempt: 0,
            not_before: None,
            grace_until: None,
            traceparent: None,
        }
    }

    #[test]
    fn staged_events_round_trip() {
        let message = OutboxMessage::Staged(staged());
        assert_eq!(
            OutboxMessage::from_json(&message.to_json()).unwrap(),
            message
        );
        let later = OutboxMessage::Staged(staged().put_off(Duration::from_secs(1)));
        assert_eq!(OutboxMessage::from_json(&later.to_json()).unwrap(), later);
        assert_eq!(
            OutboxMessage::from_json(&OutboxMessage::Probe.to_json()).unwrap(),
            OutboxMessage::Probe
        );
    }

    #[test]
    fn the_changes_trace_context_round_trips_and_is_optional() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = StagedEvent {
            traceparent: Some(traceparent.into()),
            ..staged()
        };
        let message = OutboxMessage::Staged(traced.clone());
        let json: serde_json::Value = serde_json::from_slice(&message.to_json()).unwrap();
        assert_eq!(json["traceparent"], traceparent);
        assert_eq!(
            OutboxMessage::from_json(&message.to_json()).unwrap(),
            message
        );
        // Put off, it keeps the change's context; its message carries it to the relay.
        let later = traced.put_off(Duration::from_secs(1));
        assert_eq!(later.traceparent.as_deref(), Some(traceparent));
        let sent = OutboxMessage::Staged(later).to_message();
        assert_eq!(sent.traceparent.as_deref(), Some(traceparent));
        // Without one the field is left out, and messages staged before it existed still read.
        let untraced = OutboxMessage::Staged(staged()).to_json();
        assert!(!String::from_utf8_lossy(&untraced).contains("traceparent"));
        let old = br#"{"nonce":"0badc0de","staged_at":"2025-01-15T10:30:00.5Z","event":{"event_type":"task.created","task_id":"t-1","title":"x","status":"pending","timestamp":"2025-01-15T10:30:00Z","revision":1}}"#;
        let Ok(OutboxMessage::Staged(read)) = OutboxMessage::from_json(old) else {
            panic!("an old staged event reads");
        };
        assert_eq!(read.traceparent, None);
        assert_eq!(OutboxMessage::Probe.to_message().traceparent, None);
    }

    #[test]
    fn malformed_messages_are_refused_naming_the_field() {
        assert!(OutboxMessage::from_json(b"{}").is_err());
        let error = OutboxMessage::from_json(
            br#"{"nonce":"0badc0de","staged_at":"2025-01-15T10:30:00","event":{}}"#,
        )
        .unwrap_err();
        assert!(
            error.source.to_string().starts_with("event"),
            "{}",
            error.source
        );
        assert!(OutboxMessage::from_json(b"not json").is_err());
    }

    #[test]
    fn events_staged_together_round_trip_as_one_message() {
        let mut second = staged();
        second.event.revision = Some(5);
        let together = OutboxMessage::Batch(vec![staged(), second]);
        let json = together.to_json();
        assert_eq!(OutboxMessage::from_json(&json).unwrap(), together);
        let wire: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(wire["batch"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            together.to_message().id.as_deref(),
            Some("t-1.4#0badc0de-0+1")
        );
        // One malformed event refuses the message, naming its field.
        let error = OutboxMessage::from_json(br#"{"batch":[{"nonce":"0badc0de"}]}"#).unwrap_err();
        assert!(
            error.source.to_string().starts_with("staged_at"),
            "{}",
            error.source
        );
    }

    /// Events staged by `writers` at once, and what each was answered.
    async fn stage_at_once(
        outbox: &Outbox<MemoryBroker>,
        writers: u64,
    ) -> Vec<Result<(), BrokerError>> {
        let stages: Vec<_> = (0..writers)
            .map(|n| {
                let outbox = outbox.clone();
                let mut staged = staged();
                staged.event.revision = Some(n);
                tokio::spawn(async move { outbox.stage(staged).await })
            })
            .collect();
        let mut results = Vec::new();
        for stage in stages {
            results.push(stage.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn concurrent_stages_share_messages_and_each_learns_its_result() {
        let broker = MemoryBroker::default();
        let outbox = Outbox::new(broker.clone());
        assert!(stage_at_once(&outbox, 50).await.iter().all(Result::is_ok));
        let messages = broker.published(Topic::Outbox);
        let mut revisions: Vec<u64> = messages
            .iter()
            .flat_map(|m| match OutboxMessage::from_json(&m.data).unwrap() {
                OutboxMessage::Staged(one) => vec![one],
                OutboxMessage::Batch(batch) => batch,
                OutboxMessage::Probe => vec![],
            })
            .map(|s| s.revision())
            .collect();
        revisions.sort_unstable();
        assert_eq!(revisions, (0..50).collect::<Vec<_>>());
        assert!(
            messages.len() < 50 && broker.calls() == messages.len(),
            "staged together: {} messages in {} calls for 50 events",
            messages.len(),
            broker.calls()
        );
        assert!(outbox.proven_since().is_some());
    }

    #[tokio::test]
    async fn when_a_message_is_refused_every_event_in_it_learns_why() {
        let faults = crate::service::fakes::Faults::default();
        let broker = MemoryBroker::with_faults(faults.clone());
        let outbox = Outbox::new(broker.clone());
        faults.take_down("broker");
        let results = stage_at_once(&outbox, 20).await;
        assert_eq!(results.len(), 20);
        for result in results {
            let Err(BrokerError::Unavailable { source }) = result else {
                panic!("not unavailable: {result:?}");
            };
            assert!(source.to_string().contains("injected failure"), "{source}");
        }
        assert!(broker.published(Topic::Outbox).is_empty());
        assert!(outbox.proven_since().is_none());
    }
}
