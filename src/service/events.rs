//! Handling delivered events: relay the outbox, notify completions, due dates and reminders
//! (once each, and only real ones), keep what can never be handled as dead letters.
//!
//! | Event | Answer |
//! |---|---|
//! | staged on the outbox topics | see [`super::relay`] |
//! | `task.completed`, `task.due`, `task.reminder` signed by task-api | notify under `<task>.<revision>`; SUCCESS |
//! | the same in the original's shape (no `revision`), confirmed by the stored task | notify under `<task>.<revision of that write>`; SUCCESS |
//! | any of those not signed by task-api, or not confirmed (forged, relabelled, stale) | SUCCESS, logged, nothing sent |
//! | the notification cannot be delivered now | moved to the retry topic; from there RETRY until it can |
//! | an event of the original implementation | its task is indexed (listable) |
//! | not a task event at all; a notification refused as invalid | dead letter (kept, replayable); SUCCESS |
//!
//! Nothing is answered DROP: events that can never be handled are kept by task-api itself.
//!
//! One rule for every shape: a notification follows only an event task-api itself published
//! (its signature proves the relay confirmed the change against the stored task), or, for an
//! event in the original's shape, one the stored task confirms now: written last by the
//! original, completed, at exactly the event's timestamp. Neither rule expires, and a replayed
//! event keeps its notification key, which notification-service keeps once.

use futures::future::join_all;
use tracing::Instrument;

use super::{
    Error, Relay, Tasks,
    ports::{Broker, Message, Notifier, NotifyError, Ports, Topic},
    relay::event_id,
    store::{
        dead_letters::{DeadLetter, DeadLetterSummary, DeadLetters},
        records::TaskRecords,
    },
};
use crate::{
    domain::{
        EventKey, KeyedNotification, Notification, TaskEvent, TaskEventType, TaskId, TaskRecord,
        TaskStatus, Versioned, text::echo, time,
    },
    telemetry::{
        metrics::{METRICS, seconds_since},
        spans,
    },
};

/// Which subscription an event arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `task-events`: completions, due dates and reminders (routed by the event type).
    Notify,
    /// `task-events`: events in the original's shape (no `revision`).
    Adopt,
    /// `task-events`: every other event (nothing to do but note it).
    Noted,
    /// The retry topic: events whose notification failed, back for another attempt.
    Retry,
    /// task-api's outbox topic: staged events waiting for their change to be confirmed.
    Outbox,
    /// The outbox's retry topic: staged events put off.
    OutboxRetry,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Notify | Route::Adopt | Route::Noted | Route::Retry => "task-events",
            Route::Outbox | Route::OutboxRetry => "outbox",
        }
    }

    /// The route's name in metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Notify => "notify",
            Route::Adopt => "adopt",
            Route::Noted => "noted",
            Route::Retry => "retry",
            Route::Outbox => "outbox",
            Route::OutboxRetry => "outbox_retry",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "task-events" => Some(Route::Notify),
            "outbox" => Some(Route::Outbox),
            _ => None,
        }
    }

    fn is_outbox(self) -> bool {
        matches!(self, Route::Outbox | Route::OutboxRetry)
    }
}

/// One delivered event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery<'a> {
    /// The CloudEvent id: the same on every redelivery of one publish.
    pub(crate) id: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) route: Route,
    pub(crate) data: &'a [u8],
    pub(crate) data_content_type: &'a str,
    /// When it was published (the CloudEvent `time`), if known.
    pub(crate) published_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The trace it was published in (the CloudEvent `traceparent`), if any.
    pub(crate) traceparent: Option<&'a str>,
    /// The partition of its topic it came from, where the broker has them (Kafka): each is
    /// delivered in order, on its own, so each is behind or caught up on its own.
    pub(crate) partition: Option<&'a str>,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled (or nothing to do): acknowledge.
    Success(&'static str),
    /// A transient failure: deliver again later.
    Retry(String),
    /// Can never be handled as it is: kept as a dead letter, then acknowledged.
    Dead(String),
}

/// What a replay of the dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ReplayReport {
    /// Handled this time, and removed from the dead letters.
    pub(crate) handled: usize,
    /// Still failing; kept.
    pub(crate) kept: usize,
}

pub(crate) struct EventHandler<P: Ports> {
    tasks: Tasks<P>,
    records: TaskRecords<P::Store>,
    relay: Relay<P>,
    notifier: P::Notifier,
    broker: P::Broker,
    dead_letters: DeadLetters<P::Store>,
    key: EventKey,
}

impl<P: Ports> Clone for EventHandler<P> {
    fn clone(&self) -> Self {
        Self {
            tasks: self.tasks.clone(),
            records: self.records.clone(),
            relay: self.relay.clone(),
            notifier: self.notifier.clone(),
            broker: self.broker.clone(),
            dead_letters: self.dead_letters.clone(),
            key: self.key.clone(),
        }
    }
}

/// Events seen on `task-events` that the relay published, and where they are in their batch.
#[derive(Default)]
struct Seen {
    at: Vec<usize>,
    events: Vec<(TaskId, u64)>,
}

/// An event whose notification is to be sent, with its place in the batch and its span.
struct Wanted {
    index: usize,
    span: tracing::Span,
    event: TaskEvent,
    item: KeyedNotification,
}

/// Counts a notification's outcome, and when sent, how long after its change.
fn count_notification(wanted: &Wanted, result: &Result<(), NotifyError>) {
    let kind = wanted.item.notification.kind.as_str();
    let outcome = match result {
        Ok(()) => "sent",
        Err(NotifyError::Refused { .. }) => "refused",
        Err(NotifyError::Unavailable { .. }) => "retry",
    };
    METRICS
        .notifications
        .with_label_values(&[kind, outcome])
        .inc();
    if result.is_ok() {
        METRICS
            .notification_latency
            .with_label_values(&[kind])
            .observe(seconds_since(wanted.event.timestamp));
    }
}

/// An event that calls for a notification, checked.
enum Checked {
    Notify(TaskEvent, KeyedNotification),
    Done(Outcome),
}

impl<P: Ports> EventHandler<P> {
    pub(crate) fn new(
        tasks: Tasks<P>,
        relay: Relay<P>,
        notifier: P::Notifier,
        broker: P::Broker,
        dead_letters: DeadLetters<P::Store>,
        key: EventKey,
    ) -> Self {
        Self {
            records: tasks.records().clone(),
            tasks,
            relay,
            notifier,
            broker,
            dead_letters,
            key,
        }
    }

    /// The sidecar listed the subscriptions: it (re)starts delivering them, and until
    /// `task-events` delivers, the relay does not take its silence for an empty topic.
    pub(crate) fn subscriptions_listed(&self) {
        self.relay.note_resubscribed();
    }

    /// Handles a batch of deliveries (one route's, or mixed); one outcome each, in order. An
    /// event that can never be handled is recorded as a dead letter.
    pub(crate) async fn handle(&self, deliveries: &[Delivery<'_>]) -> Vec<Outcome> {
        let outcomes = self.process(deliveries).await;
        let keeping = deliveries
            .iter()
            .zip(outcomes)
            .map(|(delivery, outcome)| self.keep_if_dead(delivery, outcome));
        join_all(keeping).await
    }

    async fn keep_if_dead(&self, delivery: &Delivery<'_>, outcome: Outcome) -> Outcome {
        let Outcome::Dead(reason) = outcome else {
            return outcome;
        };
        let letter = DeadLetter {
            id: delivery.id.to_string(),
            topic: delivery.topic.to_string(),
            route: delivery.route.name().to_string(),
            reason: reason.clone(),
            data_content_type: delivery.data_content_type.to_string(),
            data: String::from_utf8_lossy(delivery.data).into_owned(),
            truncated: false,
            data_bytes: delivery.data.len(),
            received_at: time::format(time::now()),
        };
        match self.dead_letters.record(letter).await {
            Ok(kept) => {
                METRICS.dead_letters.inc();
                METRICS.dead_letters_kept.set(kept as i64);
                Outcome::Dead(reason)
            }
            Err(error) => Outcome::Retry(format!(
                "dead letter not recorded ({reason}): {}",
                super::chain(&error)
            )),
        }
    }

    async fn process(&self, deliveries: &[Delivery<'_>]) -> Vec<Outcome> {
        let staged: Vec<&[u8]> = deliveries
            .iter()
            .filter(|d| d.route.is_outbox())
            .map(|d| d.data)
            .collect();
        let mut relayed = self.relay.relay(&staged).await.into_iter();
        let events: Vec<&Delivery> = deliveries.iter().filter(|d| !d.route.is_outbox()).collect();
        let mut handled = self.events(&events).await.into_iter();
        deliveries
            .iter()
            .map(|d| {
                let next = if d.route.is_outbox() {
                    relayed.next()
                } else {
                    handled.next()
                };
                next.unwrap_or_else(|| Outcome::Retry("not handled".into()))
            })
            .collect()
    }

    /// Task events: the original's are adopted; completions, due dates and reminders notified.
    async fn events(&self, deliveries: &[&Delivery<'_>]) -> Vec<Outcome> {
        if deliveries.is_empty() {
            return Vec::new();
        }
        let parsed: Vec<Result<TaskEvent, Outcome>> = deliveries
            .iter()
            .map(|d| TaskEvent::from_json(d.data).map_err(|e| Outcome::Dead(e.to_string())))
            .collect();
        // Events in the original's shape are checked against their tasks: one read for all.
        let originals: Vec<TaskId> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|e| e.revision.is_none())
            .filter_map(|e| TaskId::parse(&e.task_id).ok())
            .collect();
        // The batch's own calls (one read for many events) in a span linked to every event.
        let batch = spans::batch("deliveries", deliveries.iter().map(|d| d.traceparent));
        let reading = self
            .read_for_originals(&originals)
            .instrument(batch.clone());
        let stored = match reading.await {
            Ok(stored) => stored,
            Err(error) => {
                let reason = format!("cannot read the tasks: {}", super::chain(&error));
                return deliveries
                    .iter()
                    .map(|_| Outcome::Retry(reason.clone()))
                    .collect();
            }
        };
        let seen = self.published_by_task_api(deliveries, &parsed);
        let checked = deliveries.iter().zip(parsed).map(|(delivery, event)| {
            // Each event continues the trace it was published in.
            let span = spans::handle(delivery.route.label(), delivery.traceparent);
            let checked = match event {
                Ok(event) => {
                    span.in_scope(|| spans::verify().in_scope(|| self.check(&event, &stored)))
                }
                Err(outcome) => Checked::Done(outcome),
            };
            (span, checked)
        });
        let notified = self.notify(deliveries, checked.collect());
        let observed = self.relay.observe(&seen.events).instrument(batch);
        let (mut outcomes, settled) = futures::join!(notified, observed);
        // Only once this batch's events are in their ledgers may the relay take its partitions
        // as caught up: a relay deciding in between would find a landed copy's partition
        // delivering and its ledger without it, and publish it again. After a sidecar restart
        // the relay's put-off copies and the first batch of task-events arrive together.
        if settled.iter().all(|settled| *settled) {
            self.relay.note_delivered(
                deliveries
                    .iter()
                    .filter(|d| matches!(d.route, Route::Notify | Route::Noted | Route::Adopt))
                    .filter_map(|d| Some((d.partition, d.published_at?))),
            );
        }
        for (index, settled) in seen.at.into_iter().zip(settled) {
            if !settled && matches!(outcomes[index], Outcome::Success(_)) {
                outcomes[index] =
                    Outcome::Retry("cannot check the event against its claim".to_string());
            }
        }
        outcomes
    }

    /// The events of `task-events` that task-api's relay published (signed), as (task,
    /// revision), with their places in the batch: each is observed, in case its publisher
    /// never learnt that the publish landed.
    fn published_by_task_api(
        &self,
        deliveries: &[&Delivery<'_>],
        parsed: &[Result<TaskEvent, Outcome>],
    ) -> Seen {
        let mut seen = Seen::default();
        for (index, (delivery, event)) in deliveries.iter().zip(parsed).enumerate() {
            let Ok(event) = event else { continue };
            // The retry topic carries task-events' events whose handling failed, observation
            // included.
            if !matches!(delivery.route, Route::Notify | Route::Noted | Route::Retry) {
                continue;
            }
            if let (Some(revision), Ok(id)) = (event.revision, TaskId::parse(&event.task_id))
                && self.key.verify(event)
            {
                seen.at.push(index);
                seen.events.push((id, revision));
            }
        }
        seen
    }

    /// Reads and adopts the tasks of events in the original's shape.
    async fn read_for_originals(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<(TaskId, Versioned<TaskRecord>)>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for (id, record) in ids.iter().zip(self.records.get_many(ids).await?) {
            if let Some(record) = record? {
                self.tasks.adopt(&record.value).await?;
                found.push((id.clone(), record));
            }
        }
        Ok(found)
    }

    /// Whether `event` calls for a notification, and under which key.
    fn check(&self, event: &TaskEvent, stored: &[(TaskId, Versioned<TaskRecord>)]) -> Checked {
        let Some(notification) = Notification::of(event.event_type, &event.task_id) else {
            return Checked::Done(Outcome::Success("task event noted"));
        };
        let key = match event.revision {
            Some(revision) if self.key.verify(event) => Some(event_id(&event.task_id, revision)),
            Some(_) => None,
            None => stored
                .iter()
                .find(|(id, _)| id.as_str() == event.task_id)
                .and_then(|(_, record)| confirms_original(&record.value, event))
                .map(|revision| event_id(&event.task_id, revision)),
        };
        match key {
            Some(key) => Checked::Notify(event.clone(), KeyedNotification { key, notification }),
            None => {
                tracing::warn!(
                    task_id = %echo(&event.task_id),
                    revision = ?event.revision,
                    event_type = %event.event_type,
                    "event not published by task-api nor confirmed by the stored task (forged, altered or stale): nothing sent"
                );
                Checked::Done(Outcome::Success("unconfirmed event ignored"))
            }
        }
    }

    /// Sends the notifications the checked events call for, all in one call: one alone in its
    /// event's span, several in a span linked to each. A failure on `task-events` moves the
    /// event to the retry topic (so the events behind it go on); on the retry topic it is
    /// answered RETRY. One outcome per delivery, in order.
    async fn notify(
        &self,
        deliveries: &[&Delivery<'_>],
        checked: Vec<(tracing::Span, Checked)>,
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(checked.len());
        let mut wanted = Vec::new();
        for (index, (span, checked)) in checked.into_iter().enumerate() {
            match checked {
                Checked::Done(outcome) => outcomes.push(Some(outcome)),
                Checked::Notify(event, item) => {
                    outcomes.push(None);
                    wanted.push(Wanted {
                        index,
                        span,
                        event,
                        item,
                    });
                }
            }
        }
        if wanted.is_empty() {
            return outcomes.into_iter().flatten().collect();
        }
        let span = match wanted.as_slice() {
            [one] => one.span.clone(),
            many => spans::batch(
                "notify batch",
                many.iter()
                    .map(|w| spans::traceparent_of(&w.span))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(Option::as_deref),
            ),
        };
        let items: Vec<KeyedNotification> = wanted.iter().map(|w| w.item.clone()).collect();
        let results = self.notifier.notify(&items).instrument(span.clone()).await;
        let mut moving = Vec::new();
        for (wanted, result) in wanted.into_iter().zip(results) {
            let delivery = deliveries[wanted.index];
            count_notification(&wanted, &result);
            outcomes[wanted.index] = Some(match result {
                Ok(()) => Outcome::Success("notification sent"),
                Err(NotifyError::Refused { source }) => Outcome::Dead(format!(
                    "notification refused as invalid: {}",
                    super::chain(source.as_ref())
                )),
                Err(error) if delivery.route != Route::Retry => {
                    moving.push((wanted.index, wanted.event, error));
                    continue;
                }
                Err(error) => Outcome::Retry(format!(
                    "notification not delivered yet: {}",
                    super::chain(&error)
                )),
            });
        }
        if !moving.is_empty() {
            let messages = moving
                .iter()
                .map(|(index, event, _)| Message {
                    id: Some(deliveries[*index].id.to_string()),
                    data: event.to_json(),
                    // Its next attempt continues the same trace.
                    traceparent: deliveries[*index].traceparent.map(str::to_string),
                })
                .collect();
            let moved = self
                .broker
                .publish(Topic::Retry, messages)
                .instrument(span)
                .await;
            let mut moved = moved.into_iter();
            for (index, _, error) in moving {
                outcomes[index] = Some(match moved.next() {
                    Some(Ok(())) => {
                        Outcome::Success("notification not delivered yet: moved to the retry topic")
                    }
                    _ => Outcome::Retry(format!(
                        "notification not delivered yet: {}",
                        super::chain(&error)
                    )),
                });
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Outcome::Retry("not notified".into())))
            .collect()
    }

    /// Summaries of the kept dead letters, oldest first.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetterSummary>, Error> {
        Ok(self.dead_letters.summaries().await?)
    }

    /// One dead letter, or `None` if no letter has that id.
    pub(crate) async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, Error> {
        Ok(self.dead_letters.get(id).await?)
    }

    /// Handles every dead letter again; the ones handled now are removed. A letter whose
    /// payload was cut cannot be handled and stays. Reads a few letters at a time.
    pub(crate) async fn replay_dead_letters(&self) -> Result<ReplayReport, Error> {
        let mut report = ReplayReport::default();
        for ids in self.dead_letters.id_chunks().await? {
            for letter in self.dead_letters.read(&ids).await? {
                let route = Route::from_name(&letter.route).unwrap_or(Route::Notify);
                let delivery = Delivery {
                    id: &letter.id,
                    topic: &letter.topic,
                    route,
                    data: letter.data.as_bytes(),
                    data_content_type: &letter.data_content_type,
                    published_at: None,
                    traceparent: None,
                    partition: None,
                };
                match self.process(&[delivery]).await.pop() {
                    Some(Outcome::Success(_)) => {
                        self.dead_letters.remove(&letter.id).await?;
                        report.handled += 1;
                    }
                    Some(Outcome::Retry(reason) | Outcome::Dead(reason)) => {
                        tracing::info!(event_id = %letter.id, %reason, "dead letter still not handled; kept");
                        report.kept += 1;
                    }
                    None => report.kept += 1,
                }
            }
        }
        Ok(report)
    }
}

/// The revision under which a completion in the original's shape is notified, if the stored
/// task confirms it: the original wrote the task last, the task is completed, and its last
/// update is exactly the event's timestamp (the original stamps both with one clock reading).
/// The original has no due dates, so it never announces them.
fn confirms_original(record: &TaskRecord, event: &TaskEvent) -> Option<u64> {
    let completion = TaskEventType::StatusChanged(TaskStatus::Completed);
    let task = record.live()?;
    (record.foreign
        && event.event_type == completion
        && task.status == TaskStatus::Completed
        && task.updated_at == event.timestamp)
        .then_some(record.revision)
}
