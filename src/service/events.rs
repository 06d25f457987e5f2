//! Handling delivered topic events: notify on completion (exactly once), record dead letters.

use super::Error;
use crate::{
    domain::{Notification, TaskEvent, TaskEventType, TaskStatus, time},
    sidecar::{
        SidecarError,
        dead_letters::{DeadLetter, DeadLetters},
        notify::Notifier,
        processed::ProcessedEvents,
    },
};

/// Which subscription route an event arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `task-events`, any event type but `task.completed`.
    TaskEvents,
    /// `task-events`, routed there by `event.data.event_type == "task.completed"`.
    TaskCompleted,
    /// The dead-letter topic.
    DeadLetters,
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

/// What daprd should do with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or handled before): acknowledge.
    Success(&'static str),
    /// A transient failure: deliver again later.
    Retry(String),
    /// Never processable: send to the dead-letter topic.
    Drop(String),
}

#[derive(Debug, Clone)]
pub struct EventHandler {
    processed: ProcessedEvents,
    notifier: Notifier,
    dead_letters: DeadLetters,
}

impl EventHandler {
    pub fn new(processed: ProcessedEvents, notifier: Notifier, dead_letters: DeadLetters) -> Self {
        Self {
            processed,
            notifier,
            dead_letters,
        }
    }

    pub async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        if delivery.route == Route::DeadLetters {
            return self.record_dead_letter(delivery).await;
        }
        let event = match TaskEvent::from_json(delivery.data) {
            Ok(event) => event,
            Err(e) => return Outcome::Drop(e.to_string()),
        };
        let completed = event.event_type == TaskEventType::StatusChanged(TaskStatus::Completed);
        match (delivery.route, completed) {
            (_, true) => self.notify_completion(delivery.id, &event).await,
            (Route::TaskCompleted, false) => Outcome::Drop(format!(
                "{} arrived on the task.completed route",
                event.event_type
            )),
            _ => Outcome::Success("task event noted"),
        }
    }

    /// One notification per completion, however often the event is delivered: the event id is
    /// remembered once the notification went out, and notification-service itself keeps one
    /// notification per idempotency key (covering a crash between the two).
    async fn notify_completion(&self, event_id: &str, event: &TaskEvent) -> Outcome {
        match self.processed.seen(event_id).await {
            Ok(true) => return Outcome::Success("already handled"),
            Ok(false) => {}
            Err(e) => return Outcome::Retry(format!("could not check the event id: {e}")),
        }
        let key = format!("{}@{}", event.task_id, event.timestamp.timestamp_micros());
        let notification = Notification::task_completed(&event.task_id);
        match self.notifier.notify(&notification, &key).await {
            Ok(()) => {}
            Err(SidecarError::Failed {
                code: tonic::Code::InvalidArgument,
                message,
            }) => return Outcome::Drop(format!("notification refused as invalid: {message}")),
            Err(e) => return Outcome::Retry(format!("notification not delivered: {e}")),
        }
        if let Err(e) = self.processed.remember(event_id).await {
            tracing::warn!(event_id, error = %e, "notified, but the event id was not remembered; a redelivery is deduplicated by notification-service");
        }
        Outcome::Success("notification sent")
    }

    async fn record_dead_letter(&self, delivery: Delivery<'_>) -> Outcome {
        let letter = DeadLetter {
            id: delivery.id.to_string(),
            topic: delivery.topic.to_string(),
            data_content_type: delivery.data_content_type.to_string(),
            data: String::from_utf8_lossy(delivery.data).into_owned(),
            received_at: time::format(time::now()),
        };
        match self.dead_letters.record(letter).await {
            Ok(true) => Outcome::Success("dead letter recorded"),
            Ok(false) => Outcome::Success("dead letter already recorded"),
            Err(e) => Outcome::Retry(format!("dead letter not recorded: {e}")),
        }
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        Ok(self.dead_letters.list().await?)
    }
}
