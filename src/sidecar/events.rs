//! Publishing task events to the `pubsub` component.

use std::collections::HashMap;

use dapr::dapr::proto::runtime::v1::PublishEventRequest;

use super::{Sidecar, SidecarError};
use crate::domain::TaskEvent;

#[derive(Debug, Clone)]
pub struct EventPublisher {
    sidecar: Sidecar,
    pubsub: String,
    topic: String,
}

impl EventPublisher {
    pub fn new(sidecar: Sidecar, pubsub: &str, topic: &str) -> Self {
        Self {
            sidecar,
            pubsub: pubsub.to_string(),
            topic: topic.to_string(),
        }
    }

    /// Publishes the event's JSON as `application/json`; daprd wraps it in a CloudEvent.
    pub async fn publish(&self, event: &TaskEvent) -> Result<(), SidecarError> {
        self.sidecar
            .grpc()
            .publish_event(PublishEventRequest {
                pubsub_name: self.pubsub.clone(),
                topic: self.topic.clone(),
                data: event.to_json(),
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await?;
        Ok(())
    }
}
