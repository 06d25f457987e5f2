//! What task-api subscribes to, answered from configuration alone so the answer is right from
//! the first instant the port accepts connections (daprd asks once, and an error would stop
//! every subscription for the life of that sidecar).

use dapr::dapr::proto::runtime::v1::{
    BulkSubscribeConfig, ListTopicSubscriptionsResponse, TopicRoutes, TopicRule, TopicSubscription,
};

use crate::{config::TaskApiConfig, service::Route};

/// `task.completed` events: they trigger a notification.
pub const COMPLETED_PATH: &str = "/task-events/completed";
/// Every other task event.
pub const TASK_EVENTS_PATH: &str = "/task-events";
/// What landed on the dead-letter topic.
pub const DEAD_LETTERS_PATH: &str = "/task-events/dead-letters";

#[derive(Debug, Clone)]
pub struct Subscriptions {
    pubsub: String,
    topic: String,
    dead_letter_topic: String,
    bulk: bool,
}

impl Subscriptions {
    pub fn new(config: &TaskApiConfig) -> Self {
        Self {
            pubsub: config.pubsub.clone(),
            topic: config.topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            bulk: config.bulk_subscribe,
        }
    }

    pub fn list(&self) -> ListTopicSubscriptionsResponse {
        let bulk = self.bulk.then_some(BulkSubscribeConfig {
            enabled: true,
            max_messages_count: 100,
            max_await_duration_ms: 200,
        });
        ListTopicSubscriptionsResponse {
            subscriptions: vec![
                TopicSubscription {
                    pubsub_name: self.pubsub.clone(),
                    topic: self.topic.clone(),
                    routes: Some(TopicRoutes {
                        rules: vec![TopicRule {
                            // CEL over the CloudEvent; `data` is the parsed JSON payload.
                            r#match: r#"event.data.event_type == "task.completed""#.into(),
                            path: COMPLETED_PATH.into(),
                        }],
                        default: TASK_EVENTS_PATH.into(),
                    }),
                    dead_letter_topic: self.dead_letter_topic.clone(),
                    bulk_subscribe: bulk,
                    ..Default::default()
                },
                TopicSubscription {
                    pubsub_name: self.pubsub.clone(),
                    topic: self.dead_letter_topic.clone(),
                    routes: Some(TopicRoutes {
                        rules: Vec::new(),
                        default: DEAD_LETTERS_PATH.into(),
                    }),
                    ..Default::default()
                },
            ],
        }
    }

    /// The route a delivery's `path` names; `None` for a path this app never subscribed.
    pub fn route(&self, path: &str, topic: &str) -> Option<Route> {
        match path {
            COMPLETED_PATH => Some(Route::TaskCompleted),
            TASK_EVENTS_PATH => Some(Route::TaskEvents),
            DEAD_LETTERS_PATH => Some(Route::DeadLetters),
            // No route configured at all (e.g. a declarative Subscription replaced ours): go by
            // topic.
            "" if topic == self.topic => Some(Route::TaskEvents),
            "" if topic == self.dead_letter_topic => Some(Route::DeadLetters),
            _ => None,
        }
    }
}
