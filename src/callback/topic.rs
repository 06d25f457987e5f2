//! Topic events, delivered in bulk: every event gets SUCCESS or RETRY, never DROP. An event that
//! can never be handled is kept as a dead letter by task-api itself (see `service::events`), so
//! nothing depends on a dead-letter topic to keep it.

use dapr_app::{EventStatus, TopicEvent};

use super::subscriptions::Subscriptions;
use crate::{
    service::{Delivery, EventHandler, Outcome, ports::Ports},
    telemetry::metrics::METRICS,
};

/// The metadata key of the partition a bulk entry came from, set by Dapr's Kafka component.
const PARTITION: &str = "__partition";

/// Handles a batch of events; one status each, in order.
pub(super) async fn on_events<P: Ports>(
    events: &EventHandler<P>,
    subscriptions: &Subscriptions,
    batch: Vec<TopicEvent>,
) -> Vec<EventStatus> {
    let routes: Vec<_> = batch
        .iter()
        .map(|event| subscriptions.route(&event.path, &event.topic))
        .collect();
    let deliveries: Vec<Delivery> = batch
        .iter()
        .zip(&routes)
        .filter_map(|(event, route)| {
            route.map(|route| Delivery {
                id: &event.id,
                topic: &event.topic,
                route,
                data: &event.data,
                data_content_type: &event.data_content_type,
                published_at: event
                    .extension_str("time")
                    .and_then(crate::domain::time::parse),
                traceparent: event.traceparent(),
                partition: event.metadata.get(PARTITION).map(String::as_str),
            })
        })
        .collect();
    let mut outcomes = events.handle(&deliveries).await.into_iter();
    batch
        .iter()
        .zip(routes)
        .map(|(event, route)| match route {
            Some(route) => {
                let outcome = outcomes
                    .next()
                    .unwrap_or_else(|| Outcome::Retry("not handled".into()));
                log(event, &outcome);
                let status = status(&outcome);
                METRICS
                    .events_handled
                    .with_label_values(&[route.label(), outcome_label(&outcome)])
                    .inc();
                status
            }
            None => {
                // Not ours to handle or to keep: daprd must have been configured to send it here.
                tracing::warn!(
                    event_id = %event.id,
                    topic = %event.topic,
                    path = %event.path,
                    "event on a path this app never subscribed: acknowledged, not handled"
                );
                EventStatus::Success
            }
        })
        .collect()
}

fn log(event: &TopicEvent, outcome: &Outcome) {
    let (id, topic) = (&event.id, &event.topic);
    match outcome {
        Outcome::Success(what) => tracing::debug!(event_id = %id, %topic, "{what}"),
        Outcome::Retry(reason) => tracing::warn!(event_id = %id, %topic, "RETRY: {reason}"),
        Outcome::Dead(reason) => {
            tracing::warn!(event_id = %id, %topic, "kept as a dead letter: {reason}")
        }
    }
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Success(_) => "success",
        Outcome::Retry(_) => "retry",
        Outcome::Dead(_) => "dead_letter",
    }
}

/// What daprd is told: a dead letter is acknowledged, because task-api has kept it.
fn status(outcome: &Outcome) -> EventStatus {
    match outcome {
        Outcome::Success(_) | Outcome::Dead(_) => EventStatus::Success,
        Outcome::Retry(_) => EventStatus::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_transient_failure_is_redelivered() {
        assert_eq!(status(&Outcome::Success("done")), EventStatus::Success);
        assert_eq!(
            status(&Outcome::Retry("store down".into())),
            EventStatus::Retry
        );
        assert_eq!(
            status(&Outcome::Dead("not a task event".into())),
            EventStatus::Success,
            "kept as a dead letter by task-api: never DROP"
        );
    }
}
