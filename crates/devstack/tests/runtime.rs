//! The real Dapr runtime under the harness: state, ETags, pub/sub delivery, service invocation
//! between two sidecars and a job from the scheduler, on Redis.
//!
//! The app under each sidecar is a minimal `dapr-app` app defined here, so these tests show
//! what daprd does, independent of task-api.

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::{InvokeRequest, StateItem},
    runtime::v1::{
        self as rt, DeleteStateRequest, GetStateRequest, InvokeServiceRequest, PublishEventRequest,
        SaveStateRequest, ScheduleJobRequest, dapr_client::DaprClient,
    },
};
use dapr_app::{App, Callbacks, EventStatus, Invocation, Job, Reply, Subscription, TopicEvent};
use devstack::{ComponentSet, Sidecar, Stack};
use tokio::sync::mpsc;
use tonic::{Code, Status, transport::Channel};

/// What the minimal app saw.
#[derive(Debug)]
enum Seen {
    Topic {
        topic: String,
        data: serde_json::Value,
    },
    Job {
        name: String,
        data: Vec<u8>,
    },
}

struct MinimalApp {
    seen: mpsc::UnboundedSender<Seen>,
}

impl App for MinimalApp {
    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        let mut reply = format!("echo {}: ", call.method).into_bytes();
        reply.extend_from_slice(&call.data);
        Ok(Reply::bytes("text/plain", reply))
    }

    async fn subscriptions(&self) -> Vec<rt::TopicSubscription> {
        vec![Subscription::new("pubsub", "smoke").build()]
    }

    async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
        let data = serde_json::from_slice(&event.data).unwrap_or(serde_json::Value::Null);
        let _ = self.seen.send(Seen::Topic {
            topic: event.topic,
            data,
        });
        EventStatus::Success
    }

    async fn on_job_event(&self, job: Job) -> Result<(), Status> {
        let _ = self.seen.send(Seen::Job {
            name: job.name,
            data: job.data,
        });
        Ok(())
    }
}

/// Serves a [`MinimalApp`] on a free loopback port.
async fn start_minimal_app() -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, receiver) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(Callbacks::new(MinimalApp { seen }).into_routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (port, receiver)
}

/// The minimal app behind a sidecar named `smoke`, a client of that sidecar, and what the app
/// sees.
async fn smoke_sidecar(
    stack: &Stack,
) -> (Sidecar, DaprClient<Channel>, mpsc::UnboundedReceiver<Seen>) {
    let (port, seen) = start_minimal_app().await;
    let sidecar = stack
        .sidecar("smoke")
        .unwrap()
        .app_port(port)
        .start()
        .await
        .unwrap();
    let dapr = DaprClient::new(sidecar.channel().await.unwrap());
    (sidecar, dapr, seen)
}

async fn next_seen(receiver: &mut mpsc::UnboundedReceiver<Seen>, within: Duration) -> Seen {
    tokio::time::timeout(within, receiver.recv())
        .await
        .expect("nothing reached the app in time")
        .expect("app channel closed")
}

async fn save(
    dapr: &mut DaprClient<Channel>,
    key: &str,
    value: &str,
    etag: Option<&str>,
) -> Result<(), Status> {
    dapr.save_state(SaveStateRequest {
        store_name: "statestore".into(),
        states: vec![StateItem {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            etag: etag.map(|value| dapr::dapr::proto::common::v1::Etag {
                value: value.into(),
            }),
            ..Default::default()
        }],
    })
    .await
    .map(|_| ())
}

async fn get(dapr: &mut DaprClient<Channel>, key: &str) -> (String, String) {
    let response = dapr
        .get_state(GetStateRequest {
            store_name: "statestore".into(),
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (String::from_utf8(response.data).unwrap(), response.etag)
}

async fn state_round_trip(components: ComponentSet) {
    let stack = Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap();
    let (_sidecar, mut dapr, _seen) = smoke_sidecar(&stack).await;

    save(&mut dapr, "k", r#"{"n":1}"#, None).await.unwrap();
    let (value, first_etag) = get(&mut dapr, "k").await;
    assert_eq!(value, r#"{"n":1}"#);
    assert!(!first_etag.is_empty(), "a saved key has an ETag");

    save(&mut dapr, "k", r#"{"n":2}"#, Some(&first_etag))
        .await
        .unwrap();
    let (value, second_etag) = get(&mut dapr, "k").await;
    assert_eq!(value, r#"{"n":2}"#);
    assert_ne!(first_etag, second_etag);

    let stale = save(&mut dapr, "k", r#"{"n":3}"#, Some(&first_etag))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "stale ETag: {stale:?}");
    assert_eq!(get(&mut dapr, "k").await.0, r#"{"n":2}"#);

    let stale_delete = dapr
        .delete_state(DeleteStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            etag: Some(dapr::dapr::proto::common::v1::Etag {
                value: first_etag.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);

    dapr.delete_state(DeleteStateRequest {
        store_name: "statestore".into(),
        key: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (value, etag) = get(&mut dapr, "k").await;
    assert!(
        value.is_empty() && etag.is_empty(),
        "a deleted key reads back empty"
    );

    if components == ComponentSet::Redis {
        redis_keeps_data_and_version(&stack, &mut dapr).await;
    }
}

/// On Redis, a saved key is a hash of its data and its version, and an ETag that is not a
/// version is refused.
async fn redis_keeps_data_and_version(stack: &Stack, dapr: &mut DaprClient<Channel>) {
    let redis = stack.redis().unwrap();
    save(dapr, "seen-in-redis", "v", None).await.unwrap();
    assert_eq!(
        redis
            .cli(&["HGET", "smoke||seen-in-redis", "data"])
            .unwrap(),
        "v"
    );
    assert_eq!(
        redis
            .cli(&["HGET", "smoke||seen-in-redis", "version"])
            .unwrap(),
        "1"
    );
    let malformed = save(dapr, "seen-in-redis", "w", Some("not-a-number"))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
}

async fn publish_reaches_subscriber(components: ComponentSet) {
    let stack = Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap();
    let (_sidecar, mut dapr, mut seen) = smoke_sidecar(&stack).await;
    dapr.publish_event(PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "smoke".into(),
        data: br#"{"hello":"world","n":1}"#.to_vec(),
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    })
    .await
    .unwrap();
    match next_seen(&mut seen, Duration::from_secs(20)).await {
        Seen::Topic { topic, data } => {
            assert_eq!(topic, "smoke");
            assert_eq!(data, serde_json::json!({"hello": "world", "n": 1}));
        }
        other => panic!("expected a topic event, got {other:?}"),
    }
}

async fn invoke_between_two_sidecars(components: ComponentSet) {
    let stack = Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap();
    let (port, _seen) = start_minimal_app().await;
    let _callee = stack
        .sidecar("callee")
        .unwrap()
        .app_port(port)
        .start()
        .await
        .unwrap();
    let caller = stack.sidecar("caller").unwrap().start().await.unwrap();
    let mut dapr = DaprClient::new(caller.channel().await.unwrap());
    let response = dapr
        .invoke_service(InvokeServiceRequest {
            id: "callee".into(),
            message: Some(InvokeRequest {
                method: "greet".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"from caller".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let body = response.data.map(|any| any.value).unwrap_or_default();
    assert_eq!(String::from_utf8(body).unwrap(), "echo greet: from caller");
}

async fn job_fires_on_job_event(components: ComponentSet) {
    let stack = Stack::builder()
        .components(components)
        .scheduler(true)
        .start()
        .await
        .unwrap();
    let (_sidecar, mut dapr, mut seen) = smoke_sidecar(&stack).await;
    dapr.schedule_job(ScheduleJobRequest {
        job: Some(rt::Job {
            name: "smoke-job".into(),
            due_time: Some("1s".into()),
            data: Some(prost_types::Any {
                type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                value: b"payload".to_vec(),
            }),
            ..Default::default()
        }),
        overwrite: true,
    })
    .await
    .unwrap();
    match next_seen(&mut seen, Duration::from_secs(30)).await {
        Seen::Job { name, data } => {
            assert_eq!(name, "smoke-job");
            assert_eq!(data, b"payload");
        }
        other => panic!("expected a job event, got {other:?}"),
    }
}

#[tokio::test]
async fn redis_state_round_trip_and_etags() {
    state_round_trip(ComponentSet::Redis).await;
}

#[tokio::test]
async fn redis_publish_reaches_the_app() {
    publish_reaches_subscriber(ComponentSet::Redis).await;
}

#[tokio::test]
async fn redis_invocation_between_two_sidecars() {
    invoke_between_two_sidecars(ComponentSet::Redis).await;
}

#[tokio::test]
async fn redis_job_fires_on_job_event() {
    job_fires_on_job_event(ComponentSet::Redis).await;
}

#[tokio::test]
async fn a_missing_daprd_names_the_install_command() {
    // Point the harness at binaries that do not exist: it must fail, naming the install command.
    let error = devstack::Binaries::locate_in(std::path::Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("tools/dapr/install.sh"), "{error}");
}
