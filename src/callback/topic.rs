//! Topic events, one at a time or in bulk: every entry gets SUCCESS or RETRY. (Never DROP: an
//! event that can never be handled is kept as a dead letter by task-api, see `service::events`.)

use dapr::dapr::proto::runtime::v1::{
    TopicEventBulkRequest, TopicEventBulkResponse, TopicEventBulkResponseEntry, TopicEventRequest,
    TopicEventResponse, topic_event_bulk_request_entry::Event,
    topic_event_response::TopicEventResponseStatus,
};

use super::subscriptions::Subscriptions;
use crate::service::{Delivery, EventHandler, Outcome};

pub async fn on_event(
    events: &EventHandler,
    subscriptions: &Subscriptions,
    request: TopicEventRequest,
) -> TopicEventResponse {
    let status = handle(
        events,
        subscriptions,
        &request.path,
        &request.topic,
        &request.id,
        &request.data,
        &request.data_content_type,
    )
    .await;
    TopicEventResponse {
        status: status as i32,
    }
}

/// Bulk delivery: each entry is handled like a single event and answered by its entry id
/// (an entry without an answer would be retried by daprd).
pub async fn on_bulk(
    events: &EventHandler,
    subscriptions: &Subscriptions,
    request: TopicEventBulkRequest,
) -> TopicEventBulkResponse {
    let mut statuses = Vec::with_capacity(request.entries.len());
    for entry in request.entries {
        let status = match entry.event {
            Some(Event::CloudEvent(event)) => {
                handle(
                    events,
                    subscriptions,
                    &request.path,
                    &request.topic,
                    &event.id,
                    &event.data,
                    &event.data_content_type,
                )
                .await
            }
            // A raw (non-CloudEvent) entry: the payload itself, identified by its entry id.
            Some(Event::Bytes(data)) => {
                handle(
                    events,
                    subscriptions,
                    &request.path,
                    &request.topic,
                    &entry.entry_id,
                    &data,
                    &entry.content_type,
                )
                .await
            }
            None => {
                tracing::warn!(entry_id = %entry.entry_id, "bulk entry without an event: nothing to handle");
                TopicEventResponseStatus::Success
            }
        };
        statuses.push(TopicEventBulkResponseEntry {
            entry_id: entry.entry_id,
            status: status as i32,
        });
    }
    TopicEventBulkResponse { statuses }
}

async fn handle(
    events: &EventHandler,
    subscriptions: &Subscriptions,
    path: &str,
    topic: &str,
    id: &str,
    data: &[u8],
    data_content_type: &str,
) -> TopicEventResponseStatus {
    let Some(route) = subscriptions.route(path, topic) else {
        // Not ours to handle or to keep: daprd must have been configured to send it here.
        tracing::warn!(
            event_id = id,
            topic,
            path,
            "event on a path this app never subscribed: acknowledged, not handled"
        );
        return TopicEventResponseStatus::Success;
    };
    let outcome = events
        .handle(Delivery {
            id,
            topic,
            route,
            data,
            data_content_type,
        })
        .await;
    match outcome {
        Outcome::Success(what) => {
            tracing::info!(event_id = id, topic, path, outcome = "SUCCESS", "{what}");
            TopicEventResponseStatus::Success
        }
        Outcome::Retry(reason) => {
            tracing::warn!(event_id = id, topic, path, outcome = "RETRY", "{reason}");
            TopicEventResponseStatus::Retry
        }
        Outcome::Dead(reason) => {
            tracing::warn!(
                event_id = id,
                topic,
                path,
                outcome = "SUCCESS",
                "kept as a dead letter: {reason}"
            );
            TopicEventResponseStatus::Success
        }
    }
}
