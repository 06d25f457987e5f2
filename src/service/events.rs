//! Handling delivered events: relay the outbox, notify completions, due dates and reminders
//! (once each, and only real ones), keep what can never be handled as dead letters.
//!
//! | Event | Answer |
//! |---|---|
//! | staged on the outbox topic | see [`super::relay`] |
//! | `task.completed`, `task.due`, `task.reminder` the stored task confirms | notify; SUCCESS, or RETRY if that failed for now |
//! | one of those the stored task does not confirm (forged, replayed, stale) | SUCCESS, logged, nothing sent |
//! | any other task event | SUCCESS |
//! | an event of the original implementation | its task is indexed (listable), then as above |
//! | not a task event at all; a notification refused as invalid | dead letter (kept, replayable); SUCCESS |
//! | store or sidecar unreachable | RETRY |
//!
//! Nothing is answered DROP: on a durable broker the dead-letter topic of task-api's
//! subscriptions is a retry topic (an event that keeps failing comes round again later), so
//! events that can never be handled are kept by task-api itself instead.

use super::{Error, Relay, Tasks};
use crate::{
    domain::{Notification, TaskEvent, TaskEventType, TaskId, TaskStatus, text::echo, time},
    sidecar::{
        SidecarError,
        dead_letters::{DeadLetter, DeadLetterSummary, DeadLetters},
        notify::Notifier,
        outbox::event_id,
    },
};

/// Which subscription an event arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `task-events`, any event type but `task.completed`.
    TaskEvents,
    /// `task-events`, routed there by `event.data.event_type == "task.completed"`.
    TaskCompleted,
    /// The retry topic: events whose handling failed for a while, back for another attempt.
    Retry,
    /// task-api's outbox topic: staged events waiting for their change to be confirmed.
    Outbox,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::TaskEvents | Route::TaskCompleted | Route::Retry => "task-events",
            Route::Outbox => "outbox",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "task-events" => Some(Route::TaskEvents),
            "outbox" => Some(Route::Outbox),
            _ => None,
        }
    }
}

/// One delivered event.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The CloudEvent id: the same on every redelivery of one publish.
    pub id: &'a str,
    pub topic: &'a str,
    pub route: Route,
    pub data: &'a [u8],
    pub data_content_type: &'a str,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or nothing to do): acknowledge.
    Success(&'static str),
    /// A transient failure: deliver again later.
    Retry(String),
    /// Can never be handled as it is: kept as a dead letter, then acknowledged.
    Dead(String),
}

/// What a replay of the dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Handled this time, and removed from the dead letters.
    pub handled: usize,
    /// Still failing; kept.
    pub kept: usize,
}

#[derive(Debug, Clone)]
pub struct EventHandler {
    tasks: Tasks,
    relay: Relay,
    notifier: Notifier,
    dead_letters: DeadLetters,
}

impl EventHandler {
    pub fn new(tasks: Tasks, relay: Relay, notifier: Notifier, dead_letters: DeadLetters) -> Self {
        Self {
            tasks,
            relay,
            notifier,
            dead_letters,
        }
    }

    /// Handles one delivery; an event that can never be handled is recorded as a dead letter.
    pub async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let outcome = self.process(delivery.route, delivery.data).await;
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
            Ok(_) => Outcome::Dead(reason),
            Err(error) => Outcome::Retry(format!("dead letter not recorded ({reason}): {error}")),
        }
    }

    async fn process(&self, route: Route, data: &[u8]) -> Outcome {
        if route == Route::Outbox {
            return self.relay.handle(data).await;
        }
        let event = match TaskEvent::from_json(data) {
            Ok(event) => event,
            Err(e) => return Outcome::Dead(e.to_string()),
        };
        if event.revision.is_none()
            && let Err(outcome) = self.adopt(&event).await
        {
            return outcome;
        }
        if Notification::of(event.event_type, &event.task_id).is_some() {
            self.notify(&event).await
        } else {
            Outcome::Success("task event noted")
        }
    }

    /// An event of the original implementation: make its task listable.
    async fn adopt(&self, event: &TaskEvent) -> Result<(), Outcome> {
        let Ok(id) = TaskId::parse(&event.task_id) else {
            return Ok(());
        };
        match self.tasks.get(&id).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(error) => Err(Outcome::Retry(format!("task not indexed yet: {error}"))),
        }
    }

    /// One notification per real completion, due date or reminder: only a change the stored
    /// task confirms is notified, under a key derived from that change, which
    /// notification-service keeps once however often it arrives.
    async fn notify(&self, event: &TaskEvent) -> Outcome {
        let Ok(id) = TaskId::parse(&event.task_id) else {
            return Outcome::Dead(format!("task_id {} is not a task id", echo(&event.task_id)));
        };
        let record = match self.tasks.store.get(&id).await {
            Ok(record) => record,
            Err(error) => return Outcome::Retry(format!("cannot read the task: {error}")),
        };
        let key = match (event.revision, &record) {
            (Some(revision), Some(stored))
                if stored.value.changed_at(revision, event.event_type) =>
            {
                event_id(&event.task_id, revision)
            }
            // A completion of the original implementation: the task must be completed now.
            (None, Some(stored))
                if event.event_type == TaskEventType::StatusChanged(TaskStatus::Completed)
                    && stored
                        .value
                        .live()
                        .is_some_and(|t| t.status == TaskStatus::Completed) =>
            {
                format!("{}@{}", event.task_id, event.timestamp.timestamp_micros())
            }
            _ => {
                tracing::warn!(
                    task_id = %event.task_id,
                    revision = ?event.revision,
                    event_type = %event.event_type,
                    "event not confirmed by the stored task (forged, replayed or stale): nothing sent"
                );
                return Outcome::Success("unconfirmed event ignored");
            }
        };
        let Some(notification) = Notification::of(event.event_type, &event.task_id) else {
            return Outcome::Success("task event noted");
        };
        match self.notifier.notify(&notification, &key).await {
            Ok(()) => Outcome::Success("notification sent"),
            Err(SidecarError::Refused(message)) => {
                Outcome::Dead(format!("notification refused as invalid: {message}"))
            }
            Err(error) => Outcome::Retry(format!("notification not delivered yet: {error}")),
        }
    }

    /// Summaries of the kept dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterSummary>, Error> {
        Ok(self.dead_letters.summaries().await?)
    }

    /// One dead letter, or `None` if no letter has that id.
    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, Error> {
        Ok(self.dead_letters.get(id).await?)
    }

    /// Handles every dead letter again; the ones handled now are removed. A letter whose
    /// payload was cut cannot be handled and stays. Reads a few letters at a time.
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport, Error> {
        let mut report = ReplayReport::default();
        for ids in self.dead_letters.id_chunks().await? {
            for letter in self.dead_letters.read(&ids).await? {
                let route = Route::from_name(&letter.route).unwrap_or(Route::TaskEvents);
                match self.process(route, letter.data.as_bytes()).await {
                    Outcome::Success(_) => {
                        self.dead_letters.remove(&letter.id).await?;
                        report.handled += 1;
                    }
                    Outcome::Retry(reason) | Outcome::Dead(reason) => {
                        tracing::info!(event_id = %letter.id, %reason, "dead letter still not handled; kept");
                        report.kept += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}
