//! What task-api subscribes to, answered from configuration alone so the answer is right from
//! the first instant the port accepts connections (daprd asks once, and an error would stop
//! every subscription for the life of that sidecar).
//!
//! | Topic | Route | Dead-letter topic |
//! |---|---|---|
//! | `task-events`, `event.data.event_type == "task.completed"` | `/task-events/completed` | `task-events-retry` |
//! | `task-events`, anything else | `/task-events` | `task-events-retry` |
//! | `task-events-retry` | `/task-events/retry` | itself |
//! | `task-events-outbox` | `/task-events/outbox` | itself |
//!
//! daprd moves an event whose redelivery attempts (the Resiliency policy) all failed to the
//! dead-letter topic. Pointing that at a topic task-api itself subscribes to turns "dead" into
//! "try again in a few seconds": an event is never acknowledged until it has been handled.
//! On the in-memory broker (where a dead-letter publish from inside a delivery would wait on
//! itself) and with `RETRY_TOPIC=off` there are no dead-letter topics.

use dapr::dapr::proto::runtime::v1::{
    BulkSubscribeConfig, ListTopicSubscriptionsResponse, TopicRoutes, TopicRule, TopicSubscription,
};

use std::time::Duration;

use crate::{config::TaskApiConfig, service::Route, sidecar::outbox::Outbox};

/// How long the answer may wait for the sidecar to say which broker it has.
const BROKER_KIND_WAIT: Duration = Duration::from_secs(10);

/// `task.completed` events: they trigger a notification.
pub const COMPLETED_PATH: &str = "/task-events/completed";
/// Every other task event.
pub const TASK_EVENTS_PATH: &str = "/task-events";
/// Events back from the retry topic.
pub const RETRY_PATH: &str = "/task-events/retry";
/// Staged events on the outbox topic.
pub const OUTBOX_PATH: &str = "/task-events/outbox";

#[derive(Debug, Clone)]
pub struct Subscriptions {
    pubsub: String,
    topic: String,
    outbox_topic: String,
    retry_topic: Option<String>,
    bulk: bool,
    outbox: Outbox,
}

impl Subscriptions {
    pub fn new(config: &TaskApiConfig, outbox: Outbox) -> Self {
        Self {
            pubsub: config.pubsub.clone(),
            topic: config.topic.clone(),
            outbox_topic: config.outbox_topic.clone(),
            retry_topic: config.retry_topic.clone(),
            bulk: config.bulk_subscribe,
            outbox,
        }
    }

    fn subscription(
        &self,
        topic: &str,
        routes: TopicRoutes,
        dead_letters: Option<&str>,
    ) -> TopicSubscription {
        let bulk = self.bulk.then_some(BulkSubscribeConfig {
            enabled: true,
            max_messages_count: 100,
            max_await_duration_ms: 200,
        });
        TopicSubscription {
            pubsub_name: self.pubsub.clone(),
            topic: topic.to_string(),
            routes: Some(routes),
            dead_letter_topic: dead_letters.unwrap_or_default().to_string(),
            bulk_subscribe: bulk,
            ..Default::default()
        }
    }

    /// The subscriptions. daprd asks once its components are loaded, so its metadata can say
    /// whether the broker is durable (a retry topic works) before this answers.
    pub async fn list(&self) -> ListTopicSubscriptionsResponse {
        let durable = match tokio::time::timeout(BROKER_KIND_WAIT, self.outbox.durable()).await {
            Ok(Ok(durable)) => durable,
            _ => {
                tracing::warn!(
                    "could not learn the broker's type from the sidecar; subscribing with the retry topic"
                );
                true
            }
        };
        self.subscriptions(durable)
    }

    fn subscriptions(&self, durable: bool) -> ListTopicSubscriptionsResponse {
        let retry = self.retry_topic.as_deref().filter(|_| durable);
        let only = |path: &str| TopicRoutes {
            rules: Vec::new(),
            default: path.into(),
        };
        let mut subscriptions = vec![
            self.subscription(
                &self.topic,
                TopicRoutes {
                    rules: vec![TopicRule {
                        // CEL over the CloudEvent; `data` is the parsed JSON payload.
                        r#match: r#"event.data.event_type == "task.completed""#.into(),
                        path: COMPLETED_PATH.into(),
                    }],
                    default: TASK_EVENTS_PATH.into(),
                },
                retry,
            ),
            self.subscription(
                &self.outbox_topic,
                only(OUTBOX_PATH),
                retry.map(|_| self.outbox_topic.as_str()),
            ),
        ];
        if let Some(retry) = retry {
            subscriptions.push(self.subscription(retry, only(RETRY_PATH), Some(retry)));
        }
        ListTopicSubscriptionsResponse { subscriptions }
    }

    /// The route a delivery's `path` names; `None` for a path this app never subscribed.
    pub fn route(&self, path: &str, topic: &str) -> Option<Route> {
        match path {
            COMPLETED_PATH => Some(Route::TaskCompleted),
            TASK_EVENTS_PATH => Some(Route::TaskEvents),
            RETRY_PATH => Some(Route::Retry),
            OUTBOX_PATH => Some(Route::Outbox),
            // No route configured at all (e.g. a declarative Subscription replaced ours): go by
            // topic.
            "" if topic == self.topic => Some(Route::TaskEvents),
            "" if topic == self.outbox_topic => Some(Route::Outbox),
            "" if self.retry_topic.as_deref() == Some(topic) => Some(Route::Retry),
            _ => None,
        }
    }
}
