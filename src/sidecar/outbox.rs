//! task-api's outbox on the broker: events are staged on a private topic before their change is
//! written, and published to `task-events` once the stored task confirms the change.
//!
//! Staging before writing means a change never commits without a durable trace of its event;
//! publishing only what the task record confirms means a change that failed never produces an
//! event (see `service::relay`). Both go through the sidecar's pub/sub API, so the broker is
//! whatever the `pubsub` component is.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use dapr::dapr::proto::runtime::v1::PublishEventRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{Sidecar, SidecarError};
use crate::domain::{Nonce, TaskEvent, time};

/// The CloudEvent id of a change's event on `task-events`: the same on every delivery and every
/// publish of that change, unique per (task, revision).
pub fn event_id(task_id: &str, revision: u64) -> String {
    format!("{task_id}.{revision}")
}

/// An event waiting for its change to be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedEvent {
    /// The event to publish, carrying the revision the change makes.
    pub event: TaskEvent,
    /// The writer's nonce for that revision.
    pub nonce: Nonce,
    pub staged_at: DateTime<Utc>,
    /// The change alters the task's scheduled alarms: the relay syncs its jobs before
    /// publishing.
    pub reschedules: bool,
}

/// What arrives on the outbox topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxMessage {
    Staged(StagedEvent),
    /// A readiness probe: proves the broker takes messages; nothing to do.
    Probe,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reschedules: bool,
}

impl OutboxMessage {
    pub fn to_json(&self) -> Vec<u8> {
        let wire = match self {
            OutboxMessage::Probe => Wire {
                probe: Some(true),
                nonce: None,
                staged_at: None,
                event: None,
                reschedules: false,
            },
            OutboxMessage::Staged(staged) => Wire {
                probe: None,
                nonce: Some(staged.nonce.to_string()),
                staged_at: Some(time::format(staged.staged_at)),
                event: serde_json::from_slice(&staged.event.to_json()).ok(),
                reschedules: staged.reschedules,
            },
        };
        serde_json::to_vec(&wire).expect("an outbox message serialises to JSON")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if wire.probe == Some(true) {
            return Ok(OutboxMessage::Probe);
        }
        let nonce = wire
            .nonce
            .as_deref()
            .and_then(Nonce::parse)
            .ok_or("nonce is missing or malformed")?;
        let staged_at = wire
            .staged_at
            .as_deref()
            .and_then(time::parse)
            .ok_or("staged_at is missing or malformed")?;
        let event = wire.event.ok_or("event is missing")?;
        let event =
            TaskEvent::from_json(event.to_string().as_bytes()).map_err(|e| e.to_string())?;
        if event.revision.is_none() {
            return Err("the staged event has no revision".into());
        }
        Ok(OutboxMessage::Staged(StagedEvent {
            event,
            nonce,
            staged_at,
            reschedules: wire.reschedules,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct Outbox {
    sidecar: Sidecar,
    pubsub: String,
    outbox_topic: String,
    events_topic: String,
    durable: Arc<OnceCell<bool>>,
}

/// The broker component that keeps nothing and delivers one message of a topic at a time.
const IN_MEMORY_BROKER: &str = "pubsub.in-memory";

impl Outbox {
    pub fn new(sidecar: Sidecar, pubsub: &str, outbox_topic: &str, events_topic: &str) -> Self {
        Self {
            sidecar,
            pubsub: pubsub.to_string(),
            outbox_topic: outbox_topic.to_string(),
            events_topic: events_topic.to_string(),
            durable: Arc::default(),
        }
    }

    /// Whether the broker keeps messages and redelivers them: every broker but
    /// `pubsub.in-memory`, which delivers one message of a topic at a time and keeps nothing,
    /// so staging there would only serialise every write behind the relay. Asked of the
    /// sidecar once.
    pub async fn durable(&self) -> Result<bool, SidecarError> {
        self.durable
            .get_or_try_init(|| async {
                let metadata = self.sidecar.metadata().await?;
                let broker = metadata
                    .registered_components
                    .iter()
                    .find(|c| c.name == self.pubsub && c.r#type.starts_with("pubsub."));
                Ok(broker.is_none_or(|c| c.r#type != IN_MEMORY_BROKER))
            })
            .await
            .copied()
    }

    async fn publish_to(
        &self,
        topic: &str,
        data: Vec<u8>,
        cloud_event_id: Option<String>,
    ) -> Result<(), SidecarError> {
        let mut metadata = HashMap::new();
        if let Some(id) = cloud_event_id {
            metadata.insert("cloudevent.id".to_string(), id);
        }
        self.sidecar
            .grpc()
            .publish_event(PublishEventRequest {
                pubsub_name: self.pubsub.clone(),
                topic: topic.to_string(),
                data,
                data_content_type: "application/json".into(),
                metadata,
            })
            .await
            .map_err(SidecarError::from_broker)?;
        Ok(())
    }

    /// Stages an event on the outbox topic (before its change is written).
    pub async fn stage(&self, staged: &StagedEvent) -> Result<(), SidecarError> {
        let revision = staged.event.revision.unwrap_or_default();
        let id = format!(
            "{}#{}",
            event_id(&staged.event.task_id, revision),
            staged.nonce
        );
        self.publish_to(
            &self.outbox_topic,
            OutboxMessage::Staged(staged.clone()).to_json(),
            Some(id),
        )
        .await
    }

    /// Publishes a confirmed change's event to `task-events`, under its stable id.
    pub async fn publish(&self, event: &TaskEvent) -> Result<(), SidecarError> {
        let id = event
            .revision
            .map(|revision| event_id(&event.task_id, revision));
        self.publish_to(&self.events_topic, event.to_json(), id)
            .await
    }

    /// Proves the broker takes messages (readiness).
    pub async fn probe(&self) -> Result<(), SidecarError> {
        self.publish_to(&self.outbox_topic, OutboxMessage::Probe.to_json(), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TaskEventType, TaskStatus};

    #[test]
    fn staged_events_round_trip() {
        let staged = StagedEvent {
            event: TaskEvent {
                event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
                task_id: "t-1".into(),
                title: "Learn <Dapr> & more".into(),
                status: TaskStatus::Completed,
                timestamp: time::parse("2025-01-15T10:30:00").unwrap(),
                revision: Some(4),
            },
            nonce: Nonce::parse("0badc0de").unwrap(),
            staged_at: time::parse("2025-01-15T10:30:00.5").unwrap(),
            reschedules: true,
        };
        let message = OutboxMessage::Staged(staged);
        assert_eq!(OutboxMessage::from_json(&message.to_json()), Ok(message));
        assert_eq!(
            OutboxMessage::from_json(&OutboxMessage::Probe.to_json()),
            Ok(OutboxMessage::Probe)
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(OutboxMessage::from_json(b"{}").is_err());
        assert!(
            OutboxMessage::from_json(
                br#"{"nonce":"x","staged_at":"2025-01-15T10:30:00","event":{}}"#
            )
            .is_err()
        );
        assert!(OutboxMessage::from_json(b"not json").is_err());
    }

    #[test]
    fn event_ids_are_stable_per_change() {
        assert_eq!(event_id("5b0c", 3), "5b0c.3");
    }
}
