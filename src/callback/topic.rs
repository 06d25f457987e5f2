//! Topic events (alone or from a bulk delivery, which `dapr-app` splits): every event gets
//! SUCCESS or RETRY, never DROP. An event that can never be handled is kept as a dead letter by
//! task-api itself (see `service::events`), so nothing depends on a dead-letter topic to keep it.

use dapr_app::{EventStatus, TopicEvent};

use super::subscriptions::Subscriptions;
use crate::service::{Delivery, EventHandler, Outcome};

pub async fn on_event(
    events: &EventHandler,
    subscriptions: &Subscriptions,
    event: TopicEvent,
) -> EventStatus {
    let TopicEvent {
        id, topic, path, ..
    } = &event;
    let Some(route) = subscriptions.route(path, topic) else {
        // Not ours to handle or to keep: daprd must have been configured to send it here.
        tracing::warn!(
            event_id = %id,
            %topic,
            %path,
            "event on a path this app never subscribed: acknowledged, not handled"
        );
        return EventStatus::Success;
    };
    let outcome = events
        .handle(Delivery {
            id,
            topic,
            route,
            data: &event.data,
            data_content_type: &event.data_content_type,
        })
        .await;
    let status = status(&outcome);
    match outcome {
        Outcome::Success(what) => {
            tracing::info!(event_id = %id, %topic, %path, outcome = status.as_str(), "{what}");
        }
        Outcome::Retry(reason) => {
            tracing::warn!(event_id = %id, %topic, %path, outcome = status.as_str(), "{reason}");
        }
        Outcome::Dead(reason) => tracing::warn!(
            event_id = %id,
            %topic,
            %path,
            outcome = status.as_str(),
            "kept as a dead letter: {reason}"
        ),
    }
    status
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
