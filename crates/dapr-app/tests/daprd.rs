//! An app made of a `Router` and served by `serve`, under a real daprd on Redis: events
//! published through the sidecar reach their handlers decoded, with their CloudEvent
//! extensions; an invocation from another app's sidecar reaches its handler with its verb and
//! caller and answers JSON; and shutdown returns while daprd is still connected.

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::{HttpExtension, InvokeRequest, http_extension},
    runtime::v1::{InvokeServiceRequest, PublishEventRequest, dapr_client::DaprClient},
};
use dapr_app::{EventStatus, Invocation, Json, Router, TopicEvent, Verb};
use devstack::{ComponentSet, Stack};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status, transport::Channel};

const APP_ID: &str = "orders";
/// The app id of a second sidecar, with no app, that invokes [`APP_ID`].
const CALLER_ID: &str = "shop";
const TOPIC: &str = "orders";
/// A W3C trace context, as a publisher continuing a trace would pass it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const BIG_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
struct Order {
    id: u32,
    item: String,
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
struct Quote {
    id: u32,
    shipping_cents: u64,
    caller: Option<String>,
}

/// What a topic handler saw: the decoded order and the event's attributes.
#[derive(Debug)]
struct Seen {
    path: &'static str,
    order: Order,
    event: TopicEvent,
}

fn router(seen: mpsc::UnboundedSender<Seen>) -> Router {
    let big = seen.clone();
    Router::new()
        .topic(
            "pubsub",
            TOPIC,
            "/orders",
            move |Json(order): Json<Order>, event: TopicEvent| {
                let _ = seen.send(Seen {
                    path: "/orders",
                    order,
                    event,
                });
                async { EventStatus::Success }
            },
        )
        .topic_rule(
            "pubsub",
            TOPIC,
            r#"event.type == "order.big""#,
            "/orders/big",
            move |Json(order): Json<Order>, event: TopicEvent| {
                let _ = big.send(Seen {
                    path: "/orders/big",
                    order,
                    event,
                });
                async { EventStatus::Success }
            },
        )
        .invocation(
            "quote",
            Verb::Post,
            |Json(order): Json<Order>, call: Invocation| async move {
                Ok::<_, Status>(Json(Quote {
                    id: order.id,
                    shipping_cents: 499,
                    caller: call.caller().map(str::to_owned),
                }))
            },
        )
}

/// A plain JSON payload, with the trace context passed as a CloudEvent override.
async fn publish_plain(dapr: &mut DaprClient<Channel>) {
    let request = PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: TOPIC.into(),
        data: br#"{"id":1,"item":"book"}"#.to_vec(),
        data_content_type: "application/json".into(),
        metadata: [("cloudevent.traceparent".into(), TRACEPARENT.into())].into(),
    };
    dapr.publish_event(request).await.unwrap();
}

/// A whole CloudEvent of the publisher's making, with a type the routing rule matches and an
/// extension of its own.
async fn publish_cloud_event(dapr: &mut DaprClient<Channel>) {
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": "big-1",
        "source": "shop",
        "type": "order.big",
        "datacontenttype": "application/json",
        "data": {"id": 2, "item": "piano"},
        "channel": "web",
        "traceid": BIG_TRACEPARENT,
        "traceparent": BIG_TRACEPARENT,
    });
    let request = PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: TOPIC.into(),
        data: serde_json::to_vec(&event).unwrap(),
        data_content_type: "application/cloudevents+json".into(),
        metadata: Default::default(),
    };
    dapr.publish_event(request).await.unwrap();
}

/// Both published events, in the order their handlers ran.
async fn two_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut all = Vec::new();
    while all.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .expect("both events reach their handlers in time")
            .expect("the app is still running");
        all.push(next);
    }
    all.sort_by_key(|seen| seen.order.id);
    all
}

fn assert_events(seen: &[Seen]) {
    let plain = &seen[0];
    assert_eq!(plain.path, "/orders");
    assert_eq!(
        plain.order,
        Order {
            id: 1,
            item: "book".into()
        }
    );
    assert_eq!(plain.event.source, APP_ID, "the publishing app");
    assert_eq!(plain.event.pubsub_name, "pubsub");
    assert_eq!(plain.event.traceparent(), Some(TRACEPARENT));
    assert_eq!(plain.event.extension_str("topic"), Some(TOPIC));
    assert!(
        plain.event.extension_str("time").is_some(),
        "{:?}",
        plain.event.extensions
    );

    let big = &seen[1];
    assert_eq!(big.path, "/orders/big", "routed by the CEL rule");
    assert_eq!(
        big.order,
        Order {
            id: 2,
            item: "piano".into()
        }
    );
    assert_eq!(
        (big.event.id.as_str(), big.event.r#type.as_str()),
        ("big-1", "order.big")
    );
    assert_eq!(big.event.extension_str("channel"), Some("web"));
    assert_eq!(big.event.traceparent(), Some(BIG_TRACEPARENT));
}

fn quote_request(body: &[u8]) -> InvokeServiceRequest {
    InvokeServiceRequest {
        id: APP_ID.into(),
        message: Some(InvokeRequest {
            method: "quote".into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: body.to_vec(),
            }),
            content_type: "application/json".into(),
            http_extension: Some(HttpExtension {
                verb: http_extension::Verb::Post as i32,
                querystring: String::new(),
            }),
        }),
    }
}

/// Through the caller's own sidecar: daprd names the caller only on calls between sidecars.
async fn assert_invocations(dapr: &mut DaprClient<Channel>) {
    let answer = dapr
        .invoke_service(quote_request(br#"{"id":7,"item":"lamp"}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.content_type, "application/json");
    let quote: Quote = serde_json::from_slice(&answer.data.unwrap_or_default().value).unwrap();
    assert_eq!(
        quote,
        Quote {
            id: 7,
            shipping_cents: 499,
            caller: Some(CALLER_ID.into())
        }
    );
    let refused = dapr
        .invoke_service(quote_request(b"not an order"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("does not decode as"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_router_app_gets_typed_events_with_extensions_and_invocations_through_daprd() {
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let listener = dapr_app::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_sender, mut seen) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(dapr_app::serve(listener, router(seen_sender), async {
        let _ = stopped.await;
    }));
    let mut sidecar = stack
        .sidecar(APP_ID)
        .unwrap()
        .app_port(port)
        .start()
        .await
        .unwrap();
    sidecar
        .wait_for_subscriptions(Duration::from_secs(30))
        .await
        .unwrap();
    let mut dapr = DaprClient::new(sidecar.channel().await.unwrap());

    publish_plain(&mut dapr).await;
    publish_cloud_event(&mut dapr).await;
    assert_events(&two_seen(&mut seen).await);
    let caller = stack.sidecar(CALLER_ID).unwrap().start().await.unwrap();
    assert_invocations(&mut DaprClient::new(caller.channel().await.unwrap())).await;

    // daprd keeps its connection to the app open; serve still returns once asked to stop.
    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown");
    assert!(served.unwrap().is_ok());
}
