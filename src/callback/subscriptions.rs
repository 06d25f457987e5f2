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

use dapr::dapr::proto::runtime::v1::TopicSubscription;
use dapr_app::Subscription;

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

    fn subscription(&self, topic: &str, dead_letters: Option<&str>) -> Subscription {
        let mut subscription = Subscription::new(&self.pubsub, topic);
        if let Some(dead_letters) = dead_letters {
            subscription = subscription.dead_letter_topic(dead_letters);
        }
        if self.bulk {
            subscription = subscription.bulk(100, 200);
        }
        subscription
    }

    /// The subscriptions. daprd asks once its components are loaded, so its metadata can say
    /// whether the broker is durable (a retry topic works) before this answers.
    pub async fn list(&self) -> Vec<TopicSubscription> {
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

    fn subscriptions(&self, durable: bool) -> Vec<TopicSubscription> {
        let retry = self.retry_topic.as_deref().filter(|_| durable);
        let mut subscriptions = vec![
            self.subscription(&self.topic, retry)
                // CEL over the CloudEvent; `data` is the parsed JSON payload.
                .rule(
                    r#"event.data.event_type == "task.completed""#,
                    COMPLETED_PATH,
                )
                .route(TASK_EVENTS_PATH)
                .build(),
            self.subscription(
                &self.outbox_topic,
                retry.map(|_| self.outbox_topic.as_str()),
            )
            .route(OUTBOX_PATH)
            .build(),
        ];
        if let Some(retry) = retry {
            subscriptions.push(
                self.subscription(retry, Some(retry))
                    .route(RETRY_PATH)
                    .build(),
            );
        }
        subscriptions
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Settings, TaskApiConfig},
        sidecar::Sidecar,
    };

    fn subscriptions(settings: &[(&str, &str)]) -> Subscriptions {
        let config =
            TaskApiConfig::from_settings(&Settings::from_pairs(settings.to_vec())).unwrap();
        // Never called: `subscriptions(durable)` is given the broker's kind.
        let sidecar = Sidecar::connect_lazy(&config.sidecar).unwrap();
        Subscriptions::new(
            &config,
            Outbox::new(sidecar, &config.pubsub, &config.outbox_topic, &config.topic),
        )
    }

    /// (topic, rules as (match, path), default route, dead-letter topic)
    type Row = (String, Vec<(String, String)>, String, String);

    fn table(list: &[TopicSubscription]) -> Vec<Row> {
        list.iter()
            .map(|s| {
                let routes = s.routes.clone().unwrap_or_default();
                (
                    s.topic.clone(),
                    routes
                        .rules
                        .iter()
                        .map(|r| (r.r#match.clone(), r.path.clone()))
                        .collect(),
                    routes.default,
                    s.dead_letter_topic.clone(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_durable_broker_gets_the_retry_topic_as_every_dead_letter_topic() {
        let all = subscriptions(&[]);
        let completed = vec![(
            r#"event.data.event_type == "task.completed""#.to_string(),
            COMPLETED_PATH.to_string(),
        )];
        let s = |v: &str| v.to_string();
        assert_eq!(
            table(&all.subscriptions(true)),
            [
                (
                    s("task-events"),
                    completed.clone(),
                    s(TASK_EVENTS_PATH),
                    s("task-events-retry")
                ),
                (
                    s("task-events-outbox"),
                    vec![],
                    s(OUTBOX_PATH),
                    s("task-events-outbox")
                ),
                (
                    s("task-events-retry"),
                    vec![],
                    s(RETRY_PATH),
                    s("task-events-retry")
                ),
            ]
        );
        // In memory, or with RETRY_TOPIC=off: no dead-letter topics, no retry subscription.
        let in_memory = table(&all.subscriptions(false));
        assert_eq!(in_memory.len(), 2);
        assert!(in_memory.iter().all(|(_, _, _, dead)| dead.is_empty()));
        let off = subscriptions(&[("RETRY_TOPIC", "off")]);
        assert_eq!(table(&off.subscriptions(true)), in_memory);
        let bulk = subscriptions(&[("BULK_SUBSCRIBE", "true")]).subscriptions(true);
        assert!(
            bulk.iter()
                .all(|s| s.bulk_subscribe.as_ref().is_some_and(|b| b.enabled))
        );
    }

    #[tokio::test]
    async fn deliveries_are_routed_by_path_or_else_by_topic() {
        let subscriptions = subscriptions(&[]);
        assert_eq!(
            subscriptions.route(COMPLETED_PATH, "x"),
            Some(Route::TaskCompleted)
        );
        assert_eq!(
            subscriptions.route(TASK_EVENTS_PATH, "x"),
            Some(Route::TaskEvents)
        );
        assert_eq!(subscriptions.route(RETRY_PATH, "x"), Some(Route::Retry));
        assert_eq!(subscriptions.route(OUTBOX_PATH, "x"), Some(Route::Outbox));
        assert_eq!(
            subscriptions.route("", "task-events"),
            Some(Route::TaskEvents)
        );
        assert_eq!(
            subscriptions.route("", "task-events-outbox"),
            Some(Route::Outbox)
        );
        assert_eq!(
            subscriptions.route("", "task-events-retry"),
            Some(Route::Retry)
        );
        assert_eq!(subscriptions.route("", "other"), None);
        assert_eq!(subscriptions.route("/elsewhere", "task-events"), None);
    }
}
