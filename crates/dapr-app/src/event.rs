//! Topic events as an app sees them, whether they came alone or in a bulk delivery.

use std::collections::HashMap;

use prost_types::{Struct, value::Kind};
use serde::de::DeserializeOwned;

use crate::{
    invoke::quoted,
    payload::{self, JsonError},
};
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
    /// The name daprd's protocol gives the status: `SUCCESS`, `RETRY` or `DROP`.
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

/// One delivered event: the CloudEvent daprd wrapped the published payload in, taken apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicEvent {
    /// The CloudEvent id, or the entry id of a bulk entry that is not a CloudEvent. daprd keeps
    /// it across redeliveries, so it serves as the idempotency key.
    pub id: String,
    /// The CloudEvent `source`: the publishing app's id unless the publisher set its own.
    pub source: String,
    /// The CloudEvent `type`: `com.dapr.event.sent` unless the publisher set its own.
    pub r#type: String,
    /// The CloudEvent `specversion` (`1.0`).
    pub spec_version: String,
    /// The content type of [`TopicEvent::data`], as the publisher declared it.
    pub data_content_type: String,
    /// The payload (a CloudEvent's `data`). A JSON payload arrives re-encoded by daprd (keys
    /// sorted, numbers as floats): parse it, never compare its bytes.
    pub data: Vec<u8>,
    /// The topic it was published to.
    pub topic: String,
    /// The pub/sub component it came through.
    pub pubsub_name: String,
    /// The route the subscription chose for it (`""` when it has none).
    pub path: String,
    /// The metadata of a bulk entry; empty for a single event.
    pub metadata: HashMap<String, String>,
    /// Every other attribute of the CloudEvent, as daprd sent it: `traceparent`, `tracestate`,
    /// `traceid`, `time`, `topic`, `pubsubname`, `subject` and the publisher's own extensions.
    /// Empty for a bulk entry that is not a CloudEvent.
    pub extensions: Struct,
}

impl TopicEvent {
    /// The payload decoded from JSON into `T`.
    ///
    /// ```
    /// # use dapr_app::TopicEvent;
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u32 }
    ///
    /// let event = TopicEvent { data: br#"{"id": 7}"#.to_vec(), ..TopicEvent::default() };
    /// assert_eq!(event.json::<Order>().unwrap().id, 7);
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        payload::decode(&self.data, &self.data_content_type, || {
            format!(
                "event {} on topic {}",
                quoted(&self.id),
                quoted(&self.topic)
            )
        })
    }

    /// One CloudEvent extension (or other attribute daprd passed on), by name.
    pub fn extension(&self, name: &str) -> Option<&prost_types::Value> {
        self.extensions.fields.get(name)
    }

    /// One CloudEvent extension that is a string, by name: `extension_str("traceparent")`.
    pub fn extension_str(&self, name: &str) -> Option<&str> {
        match self.extension(name)?.kind.as_ref()? {
            Kind::StringValue(value) => Some(value),
            _ => None,
        }
    }

    /// The W3C trace context the publisher sent, to continue its trace. daprd writes the
    /// attribute even without a trace, as an empty string; that counts as none.
    pub fn traceparent(&self) -> Option<&str> {
        self.extension_str("traceparent")
            .filter(|value| !value.is_empty())
    }
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
            extensions: request.extensions.unwrap_or_default(),
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
                extensions: ce.extensions.unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use dapr::dapr::proto::runtime::v1::TopicEventCeRequest;
    use prost_types::Value;

    use super::*;

    fn extensions(pairs: &[(&str, Kind)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(name, kind)| {
                    let value = Value {
                        kind: Some(kind.clone()),
                    };
                    (name.to_string(), value)
                })
                .collect(),
        }
    }

    #[test]
    fn extensions_are_kept_on_single_and_bulk_events() {
        let sent = extensions(&[
            ("traceparent", Kind::StringValue("00-abc-def-01".into())),
            ("tracestate", Kind::StringValue(String::new())),
            ("priority", Kind::NumberValue(2.0)),
        ]);
        let single = TopicEvent::from(TopicEventRequest {
            id: "1".into(),
            extensions: Some(sent.clone()),
            ..Default::default()
        });
        assert_eq!(single.traceparent(), Some("00-abc-def-01"));
        assert_eq!(single.extension_str("tracestate"), Some(""));
        assert_eq!(single.extension_str("priority"), None, "not a string");
        assert_eq!(
            single.extension("priority").and_then(|v| v.kind.clone()),
            Some(Kind::NumberValue(2.0))
        );
        assert_eq!(single.extension("absent"), None);

        let bulk = TopicEventBulkRequest {
            entries: vec![TopicEventBulkRequestEntry {
                entry_id: "a".into(),
                event: Some(Event::CloudEvent(TopicEventCeRequest {
                    id: "ce-a".into(),
                    extensions: Some(sent.clone()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, entry) = bulk_entries(bulk).next().expect("one entry");
        assert_eq!(entry.extensions, sent);
    }

    #[test]
    fn an_empty_traceparent_is_no_trace() {
        let event = TopicEvent {
            extensions: extensions(&[("traceparent", Kind::StringValue(String::new()))]),
            ..TopicEvent::default()
        };
        assert_eq!(event.traceparent(), None);
        assert_eq!(TopicEvent::default().traceparent(), None);
    }

    #[test]
    fn the_payload_decodes_into_a_type_or_says_which_event_it_was() {
        #[derive(Debug, serde::Deserialize, PartialEq)]
        struct Order {
            id: u32,
        }
        let mut event = TopicEvent {
            id: "ev-9".into(),
            topic: "orders".into(),
            data_content_type: "application/json".into(),
            data: br#"{"id": 4}"#.to_vec(),
            ..TopicEvent::default()
        };
        assert_eq!(event.json::<Order>().unwrap(), Order { id: 4 });
        event.data = b"[]".to_vec();
        let error = event.json::<Order>().unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("event \"ev-9\" on topic \"orders\": its payload (application/json)"),
            "{error}"
        );
        assert!(error.source().is_some());
    }
}
