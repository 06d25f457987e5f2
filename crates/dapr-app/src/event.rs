//! Topic events as an app sees them, whether they came alone or in a bulk delivery.

use std::collections::HashMap;

use dapr::dapr::proto::runtime::v1::{
    TopicEventBulkRequest, TopicEventBulkRequestEntry, TopicEventRequest,
    topic_event_bulk_request_entry::Event, topic_event_response::TopicEventResponseStatus,
};

/// What the app did with an event; daprd acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Handled: daprd acknowledges it.
    Success,
    /// Not handled yet: daprd delivers it again (per the Resiliency policy), then moves it to
    /// the dead-letter topic.
    Retry,
    /// Can never be handled: daprd moves it to the dead-letter topic at once, or, without one,
    /// acknowledges it and logs a warning.
    Drop,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Success => "SUCCESS",
            EventStatus::Retry => "RETRY",
            EventStatus::Drop => "DROP",
        }
    }
}

impl From<EventStatus> for TopicEventResponseStatus {
    fn from(status: EventStatus) -> Self {
        match status {
            EventStatus::Success => TopicEventResponseStatus::Success,
            EventStatus::Retry => TopicEventResponseStatus::Retry,
            EventStatus::Drop => TopicEventResponseStatus::Drop,
        }
    }
}

/// One delivered event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicEvent {
    /// The CloudEvent id, or the entry id of a bulk entry that is not a CloudEvent.
    pub id: String,
    pub source: String,
    pub r#type: String,
    pub spec_version: String,
    pub data_content_type: String,
    /// The payload (a CloudEvent's `data`).
    pub data: Vec<u8>,
    pub topic: String,
    pub pubsub_name: String,
    /// The route the subscription chose for it (`""` when it has none).
    pub path: String,
    /// The metadata of a bulk entry; empty for a single event.
    pub metadata: HashMap<String, String>,
}

impl From<TopicEventRequest> for TopicEvent {
    fn from(request: TopicEventRequest) -> Self {
        Self {
            id: request.id,
            source: request.source,
            r#type: request.r#type,
            spec_version: request.spec_version,
            data_content_type: request.data_content_type,
            data: request.data,
            topic: request.topic,
            pubsub_name: request.pubsub_name,
            path: request.path,
            metadata: HashMap::new(),
        }
    }
}

/// The events of a bulk delivery, each with its entry id. An entry that carries nothing is handed
/// over as an empty raw payload, so the app's own rules for unreadable events decide its fate.
pub(crate) fn bulk_entries(
    request: TopicEventBulkRequest,
) -> impl Iterator<Item = (String, TopicEvent)> {
    let TopicEventBulkRequest {
        entries,
        topic,
        pubsub_name,
        path,
        ..
    } = request;
    entries.into_iter().map(move |entry| {
        let TopicEventBulkRequestEntry {
            entry_id,
            event,
            content_type,
            metadata,
        } = entry;
        let event = match event.unwrap_or(Event::Bytes(Vec::new())) {
            Event::CloudEvent(ce) => TopicEvent {
                id: ce.id,
                source: ce.source,
                r#type: ce.r#type,
                spec_version: ce.spec_version,
                data_content_type: ce.data_content_type,
                data: ce.data,
                topic: topic.clone(),
                pubsub_name: pubsub_name.clone(),
                path: path.clone(),
                metadata: metadata.clone(),
            },
            // A raw payload: identified by its entry id.
            Event::Bytes(data) => TopicEvent {
                id: entry_id.clone(),
                data_content_type: content_type,
                data,
                topic: topic.clone(),
                pubsub_name: pubsub_name.clone(),
                path: path.clone(),
                metadata: metadata.clone(),
                ..TopicEvent::default()
            },
        };
        (entry_id, event)
    })
}
