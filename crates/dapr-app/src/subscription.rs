//! Building the answer to `ListTopicSubscriptions`.

use dapr::dapr::proto::runtime::v1::{
    BulkSubscribeConfig, TopicRoutes, TopicRule, TopicSubscription,
};

/// One subscription: a topic of a pub/sub component, its routes, and what daprd does with
/// events that fail.
#[derive(Debug, Clone)]
pub struct Subscription(TopicSubscription);

impl Subscription {
    /// A subscription to `topic` of the pub/sub component `pubsub`, with no routes yet: daprd
    /// then delivers every event with an empty path.
    pub fn new(pubsub: &str, topic: &str) -> Self {
        Self(TopicSubscription {
            pubsub_name: pubsub.into(),
            topic: topic.into(),
            ..Default::default()
        })
    }

    fn routes(&mut self) -> &mut TopicRoutes {
        self.0.routes.get_or_insert_with(TopicRoutes::default)
    }

    /// The path events go to when no rule matches.
    pub fn route(mut self, path: &str) -> Self {
        self.routes().default = path.into();
        self
    }

    /// Events for which the CEL expression `matches` (over the CloudEvent: `event.type`,
    /// `event.data.<field>` of a JSON payload, ...) go to `path`. Rules are tried in order.
    pub fn rule(mut self, matches: &str, path: &str) -> Self {
        self.routes().rules.push(TopicRule {
            r#match: matches.into(),
            path: path.into(),
        });
        self
    }

    /// Where daprd moves an event that was dropped or whose redeliveries all failed.
    pub fn dead_letter_topic(mut self, topic: &str) -> Self {
        self.0.dead_letter_topic = topic.into();
        self
    }

    /// Deliver in batches of up to `max_messages`, waiting at most `max_await_ms` to fill one.
    pub fn bulk(mut self, max_messages: i32, max_await_ms: i32) -> Self {
        self.0.bulk_subscribe = Some(BulkSubscribeConfig {
            enabled: true,
            max_messages_count: max_messages,
            max_await_duration_ms: max_await_ms,
        });
        self
    }

    /// A metadata entry for the component, such as `rawPayload: "true"` for payloads published
    /// without a CloudEvent envelope.
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.insert(key.into(), value.into());
        self
    }

    /// The subscription as daprd receives it.
    pub fn build(self) -> TopicSubscription {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_routes_rules_dead_letters_and_bulk() {
        let built = Subscription::new("pubsub", "orders")
            .rule(r#"event.data.kind == "big""#, "/orders/big")
            .route("/orders")
            .dead_letter_topic("orders-dead")
            .bulk(10, 100)
            .metadata("rawPayload", "true")
            .build();
        let routes = built.routes.unwrap();
        assert_eq!(routes.default, "/orders");
        assert_eq!(routes.rules[0].path, "/orders/big");
        assert_eq!(built.dead_letter_topic, "orders-dead");
        assert_eq!(built.bulk_subscribe.unwrap().max_messages_count, 10);
        assert_eq!(built.metadata["rawPayload"], "true");
        let plain = Subscription::new("pubsub", "t").build();
        assert!(plain.routes.is_none() && plain.bulk_subscribe.is_none());
    }
}
