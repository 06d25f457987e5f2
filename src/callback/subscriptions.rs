//! What task-api subscribes to, answered from configuration and the broker's type, never with an
//! error (daprd asks once, and an error would stop every subscription for the life of that
//! sidecar): if start-up has not learned the broker's waits within a few seconds, task events
//! take the shortest.
//!
//! | Component / topic | Route | Dead-letter topic |
//! |---|---|---|
//! | `pubsub` / `task-events`: completions, due dates, reminders | `/task-events/notify` | `task-events-retry` |
//! | `pubsub` / `task-events`: events in the original's shape (no `revision`) | `/task-events/adopt` | `task-events-retry` |
//! | `pubsub` / `task-events`: anything else | `/task-events` | `task-events-retry` |
//! | `pubsub` / `task-events-retry` | `/task-events/retry` | itself |
//! | `outbox` / `task-events-outbox` | `/outbox` | `task-events-outbox-retry` |
//! | `outbox` / `task-events-outbox-retry` | `/outbox/retry` | itself |
//!
//! The dead-letter topics turn "dead" into "try again in a few seconds": an event is never
//! acknowledged until it has been handled. They also take what daprd cannot route (a payload
//! that is not JSON): it reaches task-api from the retry topic and is kept as a dead letter,
//! instead of holding a Kafka partition with endless retries. A notification that fails is moved
//! to the retry topic by task-api itself, so the events behind it go on.
//!
//! Every subscription is delivered in bulk: batches form when events arrive faster than
//! task-api handles them. Task events wait a millisecond to fill a batch, or on a broker where
//! that pays a few (see [`crate::service::pacing`]); staged events wait longer (see
//! [`STAGED_MAX_AWAIT_MS`]). A delivery goes by the path
//! daprd chose; one without a path (a declarative Subscription that replaced these) goes by its
//! topic.

use std::time::Duration;

use dapr::dapr::proto::runtime::v1::TopicSubscription;
use dapr_app::Subscription;

use crate::{
    config::TaskApiConfig,
    service::{
        Route,
        pacing::{Pacing, Waits},
    },
};

/// Completions, due dates and reminders: they trigger a notification.
pub(crate) const NOTIFY_PATH: &str = "/task-events/notify";
/// Events in the original's shape: their tasks are indexed.
pub(crate) const ADOPT_PATH: &str = "/task-events/adopt";
/// Every other task event: noted.
pub(crate) const TASK_EVENTS_PATH: &str = "/task-events";
/// Events back from the retry topic.
pub(crate) const RETRY_PATH: &str = "/task-events/retry";
/// Staged events on the outbox topic.
pub(crate) const OUTBOX_PATH: &str = "/outbox";
/// Staged events put off.
pub(crate) const OUTBOX_RETRY_PATH: &str = "/outbox/retry";

/// The most events one bulk delivery carries.
const BULK_MAX_MESSAGES: i32 = 100;
/// How long daprd waits to fill a batch of staged events. Nothing waits on a staged copy while
/// its writer is alive (the writer publishes the event itself; the copy is for a writer that
/// died), so it can wait for company: bigger batches cost daprd and task-api less per event,
/// and a copy that arrives after its writer's publish is settled from memory.
const STAGED_MAX_AWAIT_MS: i32 = 20;

/// How long a listing waits for the broker's waits to be learned (the sidecar lists
/// subscriptions after its components, which start-up reads them from, are up).
const WAITS_LEARNED_WITHIN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub(crate) struct Subscriptions {
    pacing: Pacing,
    pubsub: String,
    topic: String,
    retry_topic: String,
    outbox_pubsub: String,
    outbox_topic: String,
    outbox_retry_topic: String,
}

fn bulk(subscription: Subscription, max_await_ms: i32) -> TopicSubscription {
    subscription.bulk(BULK_MAX_MESSAGES, max_await_ms).build()
}

impl Subscriptions {
    pub(crate) fn new(config: &TaskApiConfig, pacing: Pacing) -> Self {
        Self {
            pacing,
            pubsub: config.pubsub.clone(),
            topic: config.topic.clone(),
            retry_topic: config.retry_topic.clone(),
            outbox_pubsub: config.outbox_pubsub.clone(),
            outbox_topic: config.outbox_topic.clone(),
            outbox_retry_topic: config.outbox_retry_topic.clone(),
        }
    }

    /// The subscriptions, with task events gathered as long as the broker's waits say.
    pub(crate) async fn list(&self) -> Vec<TopicSubscription> {
        self.list_with(self.pacing.learned(WAITS_LEARNED_WITHIN).await)
    }

    fn list_with(&self, waits: Waits) -> Vec<TopicSubscription> {
        // Completions wait on task events for their notification (see `Waits::events_fill`).
        let events_fill = i32::try_from(waits.events_fill.as_millis()).unwrap_or(i32::MAX);
        vec![
            bulk(
                Subscription::new(&self.pubsub, &self.topic)
                    // CEL over the CloudEvent; `data` is the parsed JSON payload.
                    .rule(
                        r#"event.data.event_type in ["task.completed", "task.due", "task.reminder"]"#,
                        NOTIFY_PATH,
                    )
                    .rule("!has(event.data.revision)", ADOPT_PATH)
                    .route(TASK_EVENTS_PATH)
                    .dead_letter_topic(&self.retry_topic),
                events_fill,
            ),
            bulk(
                Subscription::new(&self.pubsub, &self.retry_topic)
                    .route(RETRY_PATH)
                    .dead_letter_topic(&self.retry_topic),
                events_fill,
            ),
            bulk(
                Subscription::new(&self.outbox_pubsub, &self.outbox_topic)
                    .route(OUTBOX_PATH)
                    .dead_letter_topic(&self.outbox_retry_topic),
                STAGED_MAX_AWAIT_MS,
            ),
            bulk(
                Subscription::new(&self.outbox_pubsub, &self.outbox_retry_topic)
                    .route(OUTBOX_RETRY_PATH)
                    .dead_letter_topic(&self.outbox_retry_topic),
                STAGED_MAX_AWAIT_MS,
            ),
        ]
    }

    /// The route a delivery's `path` names; `None` for a path this app never subscribed.
    pub(crate) fn route(&self, path: &str, topic: &str) -> Option<Route> {
        match path {
            NOTIFY_PATH => Some(Route::Notify),
            ADOPT_PATH => Some(Route::Adopt),
            TASK_EVENTS_PATH => Some(Route::Noted),
            RETRY_PATH => Some(Route::Retry),
            OUTBOX_PATH => Some(Route::Outbox),
            OUTBOX_RETRY_PATH => Some(Route::OutboxRetry),
            // No route configured at all (e.g. a declarative Subscription replaced ours): go by
            // topic.
            "" if topic == self.topic => Some(Route::Notify),
            "" if topic == self.retry_topic => Some(Route::Retry),
            "" if topic == self.outbox_topic => Some(Route::Outbox),
            "" if topic == self.outbox_retry_topic => Some(Route::OutboxRetry),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn subscriptions() -> Subscriptions {
        subscriptions_paced_by(Pacing::default())
    }

    fn subscriptions_paced_by(pacing: Pacing) -> Subscriptions {
        Subscriptions::new(
            &TaskApiConfig::from_settings(&Settings::default()).unwrap(),
            pacing,
        )
    }

    /// Each bulk subscription's topic and how long it waits to fill a delivery.
    fn awaits(list: &[TopicSubscription]) -> Vec<(String, i32)> {
        list.iter()
            .filter_map(|s| {
                let bulk = s.bulk_subscribe.as_ref().filter(|b| b.enabled)?;
                Some((s.topic.clone(), bulk.max_await_duration_ms))
            })
            .collect()
    }

    /// (component, topic, rules as (match, path), default route, dead-letter topic)
    type Row = (String, String, Vec<(String, String)>, String, String);

    fn table(list: &[TopicSubscription]) -> Vec<Row> {
        list.iter()
            .map(|s| {
                let routes = s.routes.clone().unwrap_or_default();
                (
                    s.pubsub_name.clone(),
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

    #[test]
    fn task_events_are_routed_by_kind_and_everything_is_bulk() {
        let list = subscriptions().list_with(Waits::SHORT);
        let s = |v: &str| v.to_string();
        let rules = vec![
            (
                s(r#"event.data.event_type in ["task.completed", "task.due", "task.reminder"]"#),
                s(NOTIFY_PATH),
            ),
            (s("!has(event.data.revision)"), s(ADOPT_PATH)),
        ];
        assert_eq!(
            table(&list),
            [
                (
                    s("pubsub"),
                    s("task-events"),
                    rules,
                    s(TASK_EVENTS_PATH),
                    s("task-events-retry")
                ),
                (
                    s("pubsub"),
                    s("task-events-retry"),
                    vec![],
                    s(RETRY_PATH),
                    s("task-events-retry")
                ),
                (
                    s("outbox"),
                    s("task-events-outbox"),
                    vec![],
                    s(OUTBOX_PATH),
                    s("task-events-outbox-retry")
                ),
                (
                    s("outbox"),
                    s("task-events-outbox-retry"),
                    vec![],
                    s(OUTBOX_RETRY_PATH),
                    s("task-events-outbox-retry")
                ),
            ]
        );
        // Completions wait on task events for their notification; nothing waits on a staged copy.
        assert_eq!(
            awaits(&list),
            [
                (s("task-events"), 1),
                (s("task-events-retry"), 1),
                (s("task-events-outbox"), 20),
                (s("task-events-outbox-retry"), 20),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn task_events_wait_as_long_as_the_broker_learned_says() {
        let pacing = Pacing::default();
        let subscriptions = subscriptions_paced_by(pacing.clone());
        let learner = pacing;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            learner.learn(Waits::GATHERING);
        });
        let s = |v: &str| v.to_string();
        assert_eq!(
            awaits(&subscriptions.list().await),
            [
                (s("task-events"), 5),
                (s("task-events-retry"), 5),
                (s("task-events-outbox"), 20),
                (s("task-events-outbox-retry"), 20),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_not_learned_in_time_leave_task_events_unwaited() {
        let started = tokio::time::Instant::now();
        let list = subscriptions().list().await;
        assert_eq!(started.elapsed(), WAITS_LEARNED_WITHIN);
        assert_eq!(awaits(&list)[0], ("task-events".to_string(), 1));
    }

    #[test]
    fn deliveries_are_routed_by_path_or_else_by_topic() {
        let subscriptions = subscriptions();
        assert_eq!(subscriptions.route(NOTIFY_PATH, "x"), Some(Route::Notify));
        assert_eq!(subscriptions.route(ADOPT_PATH, "x"), Some(Route::Adopt));
        assert_eq!(
            subscriptions.route(TASK_EVENTS_PATH, "x"),
            Some(Route::Noted)
        );
        assert_eq!(subscriptions.route(RETRY_PATH, "x"), Some(Route::Retry));
        assert_eq!(subscriptions.route(OUTBOX_PATH, "x"), Some(Route::Outbox));
        assert_eq!(
            subscriptions.route(OUTBOX_RETRY_PATH, "x"),
            Some(Route::OutboxRetry)
        );
        assert_eq!(subscriptions.route("", "task-events"), Some(Route::Notify));
        assert_eq!(
            subscriptions.route("", "task-events-outbox"),
            Some(Route::Outbox)
        );
        assert_eq!(subscriptions.route("", "other"), None);
        assert_eq!(subscriptions.route("/elsewhere", "task-events"), None);
    }
}
