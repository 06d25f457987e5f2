//! Dapr pub/sub as the service layer's [`Broker`].
//!
//! Two components: `pubsub` carries `task-events` (what other apps consume) and its retry topic;
//! task-api's outbox and the outbox's retry topic live on a component of their own, so nothing
//! that happens on `task-events` (a slow consumer, retries waiting on notification-service) can
//! hold back the relay: each component has its own connections and delivery workers in daprd.

use std::{collections::HashMap, sync::Arc};

use dapr::dapr::proto::runtime::v1::{
    BulkPublishRequest, BulkPublishRequestEntry, PublishEventRequest,
};
use tonic::Status;

use super::{Call, Sidecar, client::transient, timed};
use crate::service::ports::{Broker, BrokerError, Message, Topic};

/// Where each topic lives.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    /// The component of `task-events` and its retry topic.
    pub(crate) pubsub: String,
    pub(crate) events: String,
    pub(crate) retry: String,
    /// The component of the outbox topics.
    pub(crate) outbox_pubsub: String,
    pub(crate) outbox: String,
    pub(crate) outbox_retry: String,
}

impl Topics {
    fn of(&self, topic: Topic) -> (&str, &str) {
        match topic {
            Topic::Events => (&self.pubsub, &self.events),
            Topic::Retry => (&self.pubsub, &self.retry),
            Topic::Outbox => (&self.outbox_pubsub, &self.outbox),
            Topic::OutboxRetry => (&self.outbox_pubsub, &self.outbox_retry),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DaprBroker {
    sidecar: Sidecar,
    topics: Arc<Topics>,
}

/// A publish's failure: INTERNAL means the broker did not take the message.
fn broker_error(status: Status) -> BrokerError {
    match status.code() {
        code if transient(code) => BrokerError::Unavailable {
            source: Box::new(status),
        },
        _ => BrokerError::Failed {
            source: Box::new(status),
        },
    }
}

fn metadata(message: &Message) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if let Some(id) = &message.id {
        metadata.insert("cloudevent.id".to_string(), id.clone());
    }
    // daprd puts the context of its own publish span in the envelope unless told otherwise
    // (pkg/runtime/pubsub/cloudevents.go); this makes subscribers continue the message's trace.
    if let Some(traceparent) = &message.traceparent {
        metadata.insert("cloudevent.traceparent".to_string(), traceparent.clone());
    }
    metadata
}

/// A bulk publish's entries, each with its own id, CloudEvent id and trace context.
fn entries(messages: Vec<Message>) -> Vec<BulkPublishRequestEntry> {
    messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| BulkPublishRequestEntry {
            entry_id: index.to_string(),
            metadata: metadata(&message),
            event: message.data,
            content_type: "application/json".into(),
        })
        .collect()
}

impl DaprBroker {
    pub(crate) fn new(sidecar: Sidecar, topics: Topics) -> Self {
        Self {
            sidecar,
            topics: Arc::new(topics),
        }
    }

    async fn publish_one(&self, topic: Topic, message: Message) -> Result<(), BrokerError> {
        let (pubsub, name) = self.topics.of(topic);
        let mut grpc = self.sidecar.grpc();
        let request = PublishEventRequest {
            pubsub_name: pubsub.to_string(),
            topic: name.to_string(),
            metadata: metadata(&message),
            data: message.data,
            data_content_type: "application/json".into(),
        };
        let call = Call::new("pubsub", "publish", "PublishEvent").on(pubsub, name);
        timed(call, grpc.publish_event(request))
            .await
            .map(|_| ())
            .map_err(broker_error)
    }
}

impl Broker for DaprBroker {
    async fn publish(&self, topic: Topic, messages: Vec<Message>) -> Vec<Result<(), BrokerError>> {
        match messages.len() {
            0 => return Vec::new(),
            // One message needs no bulk envelope.
            1 => {
                let message = messages.into_iter().next().expect("one message");
                return vec![self.publish_one(topic, message).await];
            }
            _ => {}
        }
        let (pubsub, name) = self.topics.of(topic);
        let count = messages.len();
        let entries = entries(messages);
        let mut grpc = self.sidecar.grpc();
        let request = BulkPublishRequest {
            pubsub_name: pubsub.to_string(),
            topic: name.to_string(),
            entries,
            metadata: HashMap::new(),
        };
        let call = Call::new("pubsub", "bulk_publish", "BulkPublishEvent").on(pubsub, name);
        let response = timed(call, grpc.bulk_publish_event(request)).await;
        match response {
            // daprd answers an error for the whole call when any entry failed: which ones did is
            // not said, so none counts as published.
            Err(status) => {
                let status = Arc::new(status);
                (0..count)
                    .map(|_| match status.code() {
                        code if transient(code) => Err(BrokerError::Unavailable {
                            source: Box::new(SharedStatus(status.clone())),
                        }),
                        _ => Err(BrokerError::Failed {
                            source: Box::new(SharedStatus(status.clone())),
                        }),
                    })
                    .collect()
            }
            Ok(response) => {
                let failed: HashMap<String, String> = response
                    .into_inner()
                    .failed_entries
                    .into_iter()
                    .map(|f| (f.entry_id, f.error))
                    .collect();
                (0..count)
                    .map(|index| match failed.get(&index.to_string()) {
                        Some(error) => Err(BrokerError::Unavailable {
                            source: error.clone().into(),
                        }),
                        None => Ok(()),
                    })
                    .collect()
            }
        }
    }
}

/// One status answering for every message of a bulk publish.
#[derive(Debug)]
struct SharedStatus(Arc<Status>);

impl std::fmt::Display for SharedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedStatus {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_id_and_trace_context_override_the_cloudevents() {
        let message = Message {
            id: Some("t-1.3".into()),
            data: Vec::new(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let sent = metadata(&message);
        assert_eq!(sent["cloudevent.id"], "t-1.3");
        assert_eq!(
            sent["cloudevent.traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let plain = Message {
            id: None,
            data: Vec::new(),
            traceparent: None,
        };
        assert!(
            metadata(&plain).is_empty(),
            "daprd's own id and trace context"
        );
    }
}
