//! AppCallback semantics against the real daprd: two apps, their sidecars, Redis.

use crate::common;

use std::{collections::HashMap, time::Duration};

use crate::common::{Options, Scrape, TestApp, create, eventually, per_store, wait_until_handled};
use dapr::dapr::proto::{
    common::v1::InvokeRequest,
    runtime::v1::{
        self as rt, InvokeServiceRequest, PublishEventRequest,
        app_callback_client::AppCallbackClient, dapr_client::DaprClient,
        topic_event_bulk_request_entry::Event, topic_event_response::TopicEventResponseStatus,
    },
};
use devstack::{ComponentSet, Stack, http};
use prost::Message;
use task_api::{
    domain::{TaskEvent, TaskEventType, TaskStatus, time},
    proto::{
        notification::v1::ListNotificationsRequest,
        task::v1::{self as pb, task_service_client::TaskServiceClient},
    },
};
use tonic::{Code, metadata::MetadataValue};

async fn redis_stack() -> Stack {
    stack_on(ComponentSet::Redis).await
}

/// The event suite runs on each broker: Redis streams and Kafka (tasks on Redis).
async fn stack_on(set: ComponentSet) -> Stack {
    Stack::builder().components(set).start().await.unwrap()
}

/// Whether the broker has moved anything to task-api's retry topic yet.
fn retried_some(stack: &Stack) -> bool {
    match stack.kafka() {
        Some(kafka) => kafka
            .offsets("task-api")
            .is_ok_and(|o| o.get("task-events-retry").is_some_and(|t| t.end > 0)),
        None => stack
            .broker()
            .unwrap()
            .stream_length("task-events-retry")
            .is_ok_and(|n| n > 0),
    }
}

async fn notifications_for(notifications: &TestApp, task_id: &str) -> usize {
    notifications
        .notifications_client()
        .await
        .list_notifications(ListNotificationsRequest {
            task_id: task_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notifications
        .len()
}

/// Waits until `task_id` has `count` notifications, then, once task-api has handled every event
/// published so far, checks that no more arrived.
async fn expect_exactly(
    stack: &Stack,
    notifications: &TestApp,
    task_id: &str,
    count: usize,
    within: Duration,
) {
    eventually(within, || async {
        (notifications_for(notifications, task_id).await >= count).then_some(())
    })
    .await;
    wait_until_handled(
        stack,
        &[
            "task-events",
            "task-events-outbox",
            "task-events-outbox-retry",
            "task-events-retry",
        ],
    )
    .await;
    assert_eq!(notifications_for(notifications, task_id).await, count);
}

async fn complete(client: &mut common::Client, id: &str) {
    client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: id.into(),
            status: pb::TaskStatus::Completed as i32,
            etag: String::new(),
        })
        .await
        .unwrap();
}

async fn publish(sidecar: &devstack::Sidecar, data: Vec<u8>, content_type: &str, event_id: &str) {
    let mut dapr = DaprClient::new(sidecar.channel().await.unwrap());
    dapr.publish_event(PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "task-events".into(),
        data,
        data_content_type: content_type.into(),
        metadata: HashMap::from([("cloudevent.id".to_string(), event_id.to_string())]),
    })
    .await
    .unwrap();
}

fn completed_event(task_id: &str, revision: Option<u64>) -> Vec<u8> {
    TaskEvent {
        event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
        task_id: task_id.into(),
        title: "t".into(),
        status: TaskStatus::Completed,
        timestamp: time::now(),
        revision,
        signature: None,
    }
    .to_json()
}

async fn a_completion_notifies_exactly_once_even_when_redelivered(set: ComponentSet) {
    let stack = stack_on(set).await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;

    let task = create(&mut client, "finish me", None).await;
    complete(&mut client, &task.id).await;
    expect_exactly(&stack, &notifications, &task.id, 1, Duration::from_secs(20)).await;
    let received = notifications
        .notifications_client()
        .await
        .list_notifications(ListNotificationsRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .notifications;
    assert_eq!(received[0].r#type, "task_completed");
    assert_eq!(
        received[0].message,
        format!("Task {} has been completed", task.id)
    );
    assert_eq!(received[0].sender_app_id, "task-api");

    // The real completion (revision 2) published again, under its own id and under new ones:
    // still one notification.
    let event = completed_event(&task.id, Some(2));
    for id in [
        format!("{}.2", task.id),
        "replay-1".into(),
        "replay-2".into(),
    ] {
        publish(&app.sidecar, event.clone(), "application/json", &id).await;
    }
    expect_exactly(&stack, &notifications, &task.id, 1, Duration::from_secs(20)).await;
}

per_store! {
    a_completion_notifies_exactly_once_even_when_redelivered:
    a_completion_notifies_exactly_once_even_when_redelivered_on_redis => Redis,
    a_completion_notifies_exactly_once_even_when_redelivered_on_kafka => Kafka,
}

/// Completions the stored task does not confirm are ignored: an unknown task, a task that is
/// not completed, a revision that was not a completion.
async fn forged_completions_notify_nobody(set: ComponentSet) {
    let stack = stack_on(set).await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;
    let pending = create(&mut client, "still pending", None).await;
    let done = create(&mut client, "done", None).await;
    complete(&mut client, &done.id).await;
    expect_exactly(&stack, &notifications, &done.id, 1, Duration::from_secs(20)).await;

    let forged = [
        completed_event("no-such-task", Some(2)),
        completed_event(&pending.id, Some(2)),
        completed_event(&pending.id, None),
        completed_event(&done.id, Some(1)),
        completed_event(&done.id, Some(9)),
    ];
    for (n, event) in forged.into_iter().enumerate() {
        publish(
            &app.sidecar,
            event,
            "application/json",
            &format!("forged-{n}"),
        )
        .await;
    }
    wait_until_handled(&stack, &["task-events", "task-events-retry"]).await;
    assert_eq!(notifications_for(&notifications, "no-such-task").await, 0);
    assert_eq!(notifications_for(&notifications, &pending.id).await, 0);
    assert_eq!(notifications_for(&notifications, &done.id).await, 1);
}

per_store! {
    forged_completions_notify_nobody:
    forged_completions_notify_nobody_on_redis => Redis,
    forged_completions_notify_nobody_on_kafka => Kafka,
}

/// notification-service is down when the event first arrives: its redelivery attempts fail, it
/// moves to the retry topic and comes round again, and one notification goes out once
/// notification-service is up.
async fn a_transient_failure_is_retried_until_the_notification_goes_out(set: ComponentSet) {
    let stack = stack_on(set).await;
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let task = create(&mut client, "notify later", None).await;
    complete(&mut client, &task.id).await;
    eventually(Duration::from_secs(30), || async {
        retried_some(&stack).then_some(())
    })
    .await;

    let notifications = TestApp::notification_service(&stack, Options::default()).await;
    expect_exactly(&stack, &notifications, &task.id, 1, Duration::from_secs(40)).await;
}

per_store! {
    a_transient_failure_is_retried_until_the_notification_goes_out:
    a_transient_failure_is_retried_until_the_notification_goes_out_on_redis => Redis,
    a_transient_failure_is_retried_until_the_notification_goes_out_on_kafka => Kafka,
}

/// The `InvokeService` calls task-api's sidecar has served (task-api's only invocations are its
/// notifications), read from daprd's own metrics.
async fn invocations(sidecar: &devstack::Sidecar) -> f64 {
    Scrape::of(sidecar.metrics_port(), "/").await.sum(
        "dapr_grpc_io_server_completed_rpcs",
        &[(
            "grpc_server_method",
            "/dapr.proto.runtime.v1.Dapr/InvokeService",
        )],
    )
}

/// Completes `count` fresh tasks at once (so their events travel together); their ids.
async fn complete_at_once(app: &TestApp, count: usize) -> Vec<String> {
    let mut client = app.client().await;
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        ids.push(create(&mut client, &format!("burst {n}"), None).await.id);
    }
    let completions = ids.iter().map(|id| async move {
        let mut client = app.client().await;
        complete(&mut client, id).await;
    });
    futures::future::join_all(completions).await;
    ids
}

/// Completions that arrive together are notified together: each once, in fewer invocations
/// than notifications (method `notify-batch` of the real notification-service, through both
/// sidecars).
#[tokio::test]
async fn completions_that_arrive_together_are_notified_once_each_in_fewer_calls() {
    let stack = redis_stack().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let before = invocations(&app.sidecar).await;
    let ids = complete_at_once(&app, 40).await;
    for id in &ids {
        expect_exactly(&stack, &notifications, id, 1, Duration::from_secs(30)).await;
    }
    let calls = invocations(&app.sidecar).await - before;
    println!("40 completions notified in {calls} invocations");
    assert!(
        (1.0..40.0).contains(&calls),
        "40 notifications in {calls} invocations"
    );
}

/// A receiver with only `notify` (the original's notification-service has no `notify-batch`):
/// it gets each completion once through `notify`, under its idempotency key, and is asked for
/// `notify-batch` once, not on every batch.
#[derive(Clone, Default)]
struct NotifyOnly {
    keys: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    batches_asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl dapr_app::App for NotifyOnly {
    async fn on_invoke(
        &self,
        call: dapr_app::Invocation,
    ) -> Result<dapr_app::Reply, tonic::Status> {
        match call.method.as_str() {
            "notify" => {
                let key = call.header("idempotency-key").unwrap_or_default();
                self.keys.lock().unwrap().push(key.to_string());
                Ok(dapr_app::Reply::json(b"{}".to_vec()))
            }
            method => {
                if method == "notify-batch" {
                    self.batches_asked
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Err(tonic::Status::not_found(format!("no method {method}")))
            }
        }
    }
}

#[tokio::test]
async fn a_receiver_without_notify_batch_gets_every_completion_through_notify() {
    let stack = redis_stack().await;
    let receiver = NotifyOnly::default();
    let listener = dapr_app::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dapr_app::serve(
        listener,
        dapr_app::Callbacks::new(receiver.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let _receiver_sidecar = stack
        .sidecar("notification-service")
        .unwrap()
        .app_port(port)
        .start()
        .await
        .unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    let asked = || {
        receiver
            .batches_asked
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let mut ids = Vec::new();
    let mut asked_per_burst = Vec::new();
    for _ in 0..2 {
        ids.extend(complete_at_once(&app, 40).await);
        eventually(Duration::from_secs(30), || async {
            (receiver.keys.lock().unwrap().len() >= ids.len()).then_some(())
        })
        .await;
        wait_until_handled(&stack, &["task-events", "task-events-retry"]).await;
        asked_per_burst.push(asked() - asked_per_burst.iter().sum::<usize>());
    }
    let keys = receiver.keys.lock().unwrap().clone();
    println!(
        "notify-batch asked {asked_per_burst:?} times in two bursts; {} notify calls",
        keys.len()
    );
    let expected: std::collections::BTreeSet<String> =
        ids.iter().map(|id| format!("{id}.2")).collect();
    let distinct: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(distinct, expected, "every completion, under its key");
    assert_eq!(keys.len(), ids.len(), "each once");
    // Asked by the first deliveries of several completions (those in flight before the first
    // answer), then not again.
    assert!(asked_per_burst[0] >= 1, "{asked_per_burst:?}");
    assert_eq!(asked_per_burst[1], 0, "{asked_per_burst:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// What can never be handled is kept as a dead letter (and acknowledged, so it does not come
/// round again), readable and replayable through invocation.
async fn poison_messages_are_kept_as_dead_letters(set: ComponentSet) {
    let stack = stack_on(set).await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let caller = stack.sidecar("operator").unwrap().start().await.unwrap();

    publish(
        &app.sidecar,
        b"this is not a task event".to_vec(),
        "text/plain",
        "poison-text",
    )
    .await;
    publish(
        &app.sidecar,
        br#"{"event_type":"task.exploded","task_id":"x","title":"x","status":"pending","timestamp":"2025-01-15T10:30:00"}"#.to_vec(),
        "application/json",
        "poison-unknown-type",
    )
    .await;

    let letters = eventually(Duration::from_secs(30), || async {
        let response = http::get(
            caller.http_port(),
            "/v1.0/invoke/task-api/method/dead-letters",
        )
        .await
        .ok()?;
        let letters = response.json().ok()?;
        let ids: Vec<String> = letters
            .as_array()?
            .iter()
            .filter_map(|l| l["id"].as_str().map(str::to_string))
            .collect();
        (ids.contains(&"poison-text".to_string())
            && ids.contains(&"poison-unknown-type".to_string()))
        .then_some(letters)
    })
    .await;
    let text = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "poison-text")
        .unwrap();
    // daprd cannot evaluate the routing rule on a payload that is not JSON and moves the event
    // to the retry topic at once; it is kept from there.
    assert_eq!(text["topic"], "task-events-retry");
    assert!(
        text["reason"]
            .as_str()
            .unwrap()
            .contains("not a task event")
    );
    assert!(
        text["data_excerpt"]
            .as_str()
            .unwrap()
            .contains("this is not a task event")
    );
    // Kept and acknowledged: nothing left pending on any topic.
    wait_until_handled(&stack, &["task-events", "task-events-retry"]).await;
    let replay = http::request(
        caller.http_port(),
        "POST",
        "/v1.0/invoke/task-api/method/dead-letters/replay",
        &[],
        b"",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(replay.status, 200, "{}", replay.text());
    assert_eq!(
        replay.json().unwrap(),
        serde_json::json!({"handled": 0, "kept": 2}),
        "still poison: kept"
    );

    // task-api is still serving.
    let mut client = app.client().await;
    create(&mut client, "still alive", None).await;
}

per_store! {
    poison_messages_are_kept_as_dead_letters:
    poison_messages_are_kept_as_dead_letters_on_redis => Redis,
    poison_messages_are_kept_as_dead_letters_on_kafka => Kafka,
}

/// However large the poison, dead letters stay below daprd's 4 MiB message limit: 24 payloads
/// of 1 MiB are all kept (each cut to 64 KiB), listed as short summaries in one answer, readable
/// one by one, and replayed without a failure; nothing is left to be redelivered.
#[tokio::test]
async fn large_poison_payloads_stay_below_the_message_limit() {
    const LETTERS: usize = 24;
    const MIB: usize = 1024 * 1024;
    let stack = redis_stack().await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let caller = stack.sidecar("operator").unwrap().start().await.unwrap();
    for n in 0..LETTERS {
        let (data, content_type) = if n % 2 == 0 {
            // JSON, but not a task event.
            (
                format!(
                    r#"{{"event_type":"task.huge","blob":"{}"}}"#,
                    "b".repeat(MIB)
                )
                .into_bytes(),
                "application/json",
            )
        } else {
            ("t".repeat(MIB).into_bytes(), "text/plain")
        };
        publish(&app.sidecar, data, content_type, &format!("huge-{n}")).await;
    }
    let port = caller.http_port();
    let get = move |path: String| async move {
        http::request(port, "GET", &path, &[], b"", Duration::from_secs(30))
            .await
            .unwrap()
    };
    let listed = eventually(Duration::from_secs(60), || async {
        let response = get("/v1.0/invoke/task-api/method/dead-letters".into()).await;
        let count = response.json().ok()?.as_array()?.len();
        (response.status == 200 && count == LETTERS).then_some(response)
    })
    .await;
    assert!(
        listed.body.len() < 64 * 1024,
        "summaries only: {} bytes",
        listed.body.len()
    );
    for summary in listed.json().unwrap().as_array().unwrap() {
        assert!(
            summary["data_bytes"].as_u64().unwrap() >= MIB as u64,
            "{summary}"
        );
        assert!(summary["data_excerpt"].as_str().unwrap().len() <= 512);
    }
    let one = get("/v1.0/invoke/task-api/method/dead-letters/huge-1".into()).await;
    assert_eq!(one.status, 200, "{}", one.text());
    let letter = one.json().unwrap();
    assert_eq!(letter["truncated"], true);
    assert_eq!(letter["data"].as_str().unwrap().len(), 64 * 1024);
    let missing = get("/v1.0/invoke/task-api/method/dead-letters/no-such-letter".into()).await;
    assert_eq!(missing.status, 404);

    let replay = http::request(
        caller.http_port(),
        "POST",
        "/v1.0/invoke/task-api/method/dead-letters/replay",
        &[],
        b"",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(replay.status, 200, "{}", replay.text());
    assert_eq!(
        replay.json().unwrap(),
        serde_json::json!({"handled": 0, "kept": LETTERS}),
        "cut payloads cannot be handled: kept"
    );
    wait_until_handled(&stack, &["task-events", "task-events-retry"]).await;
}

#[tokio::test]
async fn http_callers_reach_the_task_operations_through_their_sidecar() {
    let stack = redis_stack().await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let caller = stack
        .sidecar("web-frontend")
        .unwrap()
        .start()
        .await
        .unwrap();
    let port = caller.http_port();
    let json = [("content-type", "application/json")];
    let timeout = Duration::from_secs(10);
    let call = |method: &'static str, path: String, body: &'static str| async move {
        http::request(port, method, &path, &json, body.as_bytes(), timeout)
            .await
            .unwrap()
    };
    let base = "/v1.0/invoke/task-api/method";

    let created = call(
        "POST",
        format!("{base}/tasks"),
        r#"{"title":"From HTTP","priority":3}"#,
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/json"));
    let task = created.json().unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["title"], "From HTTP");
    assert_eq!(task["priority"], 3);
    assert_eq!(task["description"], serde_json::Value::Null);
    assert_eq!(task["etag"], "1");

    let got = call("GET", format!("{base}/tasks/{id}"), "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json().unwrap()["title"], "From HTTP");

    let listed = call(
        "GET",
        format!("{base}/tasks?status=pending&page_size=5"),
        "",
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().unwrap()["tasks"][0]["id"], id.as_str());

    let started = call(
        "PUT",
        format!("{base}/tasks/{id}/status?status=in_progress"),
        "",
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(started.json().unwrap()["status"], "TASK_STATUS_IN_PROGRESS");

    let stale = call(
        "PUT",
        format!("{base}/tasks/{id}/status"),
        r#"{"status":"completed","etag":"1"}"#,
    )
    .await;
    assert_eq!(stale.status, 409, "a stale ETag: {}", stale.text());
    // daprd's own error body: JSON, labelled as text.
    assert_eq!(
        stale.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let error = stale.json().unwrap();
    assert_eq!(error["code"], 10, "{error}");

    // If-Match, as HTTP clients send it (daprd hands it to the app as dapr-if-match), guards
    // every write: a stale one is refused with 409 and changes nothing, the current one works.
    let current = call("GET", format!("{base}/tasks/{id}"), "")
        .await
        .json()
        .unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_string();
    let guarded = |method: &'static str, path: String, body: &'static str, etag: String| async move {
        let if_match = format!("\"{etag}\"");
        let headers = [
            ("content-type", "application/json"),
            ("if-match", if_match.as_str()),
        ];
        http::request(port, method, &path, &headers, body.as_bytes(), timeout)
            .await
            .unwrap()
    };
    let writes: [(&'static str, String, &'static str); 4] = [
        ("PATCH", format!("{base}/tasks/{id}"), r#"{"priority":4}"#),
        (
            "PUT",
            format!("{base}/tasks/{id}"),
            r#"{"title":"Renamed"}"#,
        ),
        (
            "PUT",
            format!("{base}/tasks/{id}/status"),
            r#"{"status":"pending"}"#,
        ),
        ("DELETE", format!("{base}/tasks/{id}"), ""),
    ];
    for (method, path, body) in &writes {
        let refused = guarded(method, path.clone(), body, "1".into()).await;
        assert_eq!(refused.status, 409, "{method} {path}: {}", refused.text());
    }
    let unchanged = call("GET", format!("{base}/tasks/{id}"), "")
        .await
        .json()
        .unwrap();
    assert_eq!(
        unchanged["etag"],
        current.as_str(),
        "a refused write changed nothing"
    );
    assert_eq!(unchanged["title"], "From HTTP");
    let mut etag = current;
    for (method, path, body) in &writes[..3] {
        let applied = guarded(method, path.clone(), body, etag.clone()).await;
        assert_eq!(applied.status, 200, "{method} {path}: {}", applied.text());
        etag = applied.json().unwrap()["etag"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let disagreeing = guarded(
        "PATCH",
        format!("{base}/tasks/{id}"),
        r#"{"priority":2,"etag":"1"}"#,
        etag.clone(),
    )
    .await;
    assert_eq!(disagreeing.status, 400, "{}", disagreeing.text());
    assert!(
        disagreeing.text().contains("If-Match"),
        "{}",
        disagreeing.text()
    );
    let stale_delete = guarded("DELETE", format!("{base}/tasks/{id}"), "", "2".into()).await;
    assert_eq!(stale_delete.status, 409, "{}", stale_delete.text());
    assert_eq!(
        call("GET", format!("{base}/tasks/{id}"), "").await.status,
        200,
        "a stale If-Match deletes nothing"
    );

    let invalid = call("POST", format!("{base}/tasks"), r#"{"title":""}"#).await;
    assert_eq!(invalid.status, 400, "{}", invalid.text());
    assert!(invalid.text().contains("title"));
    let not_json = call("POST", format!("{base}/tasks"), "{").await;
    assert_eq!(not_json.status, 400);
    let missing = call("GET", format!("{base}/tasks/no-such-task"), "").await;
    assert_eq!(missing.status, 404);
    let unknown = call("GET", format!("{base}/reports"), "").await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("reports"), "{}", unknown.text());

    let deleted = call("DELETE", format!("{base}/tasks/{id}"), "").await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        call("GET", format!("{base}/tasks/{id}"), "").await.status,
        404
    );
    drop(app);
}

/// gRPC callers: proxying (`dapr-app-id` on their own sidecar) and InvokeService.
#[tokio::test]
async fn grpc_callers_reach_task_api_through_their_sidecar() {
    let stack = redis_stack().await;
    let token = "app-token-for-task-api";
    let (app, _notifications) = TestApp::task_api_with_notifications(
        &stack,
        Options {
            app_api_token: Some(token.into()),
            ..Default::default()
        },
    )
    .await;
    let caller = stack.sidecar("reporting").unwrap().start().await.unwrap();

    // Proxying: the real TaskService RPC, sent to the caller's own sidecar. task-api's sidecar
    // adds the app token, so no API key is needed.
    let mut proxied = TaskServiceClient::with_interceptor(
        caller.channel().await.unwrap(),
        common::WithHeader("dapr-app-id", "task-api".into()),
    );
    let created = proxied
        .create_task(pb::CreateTaskRequest {
            title: "through the proxy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = proxied
        .get_task(pb::GetTaskRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.title, "through the proxy");
    let missing = proxied
        .get_task(pb::GetTaskRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // InvokeService with protobuf payloads.
    let mut dapr = DaprClient::new(caller.channel().await.unwrap());
    let invoke = |method: &str, payload: Vec<u8>, type_name: &str| InvokeServiceRequest {
        id: "task-api".into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: format!("type.googleapis.com/{type_name}"),
                value: payload,
            }),
            content_type: "application/x-protobuf".into(),
            http_extension: None,
        }),
    };
    let response = dapr
        .invoke_service(invoke(
            "CreateTask",
            pb::CreateTaskRequest {
                title: "through InvokeService".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            "task.v1.CreateTaskRequest",
        ))
        .await
        .unwrap()
        .into_inner();
    let any = response.data.unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/task.v1.Task");
    let task = pb::Task::decode(any.value.as_slice()).unwrap();
    assert_eq!(task.title, "through InvokeService");
    let got = dapr
        .invoke_service(invoke(
            "GetTask",
            pb::GetTaskRequest {
                id: task.id.clone(),
            }
            .encode_to_vec(),
            "task.v1.GetTaskRequest",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pb::Task::decode(got.data.unwrap().value.as_slice())
            .unwrap()
            .id,
        task.id
    );
    let unknown = dapr
        .invoke_service(invoke("Explode", Vec::new(), "task.v1.Nothing"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("Explode"),
        "{}",
        unknown.message()
    );
    drop(app);
}

/// Callbacks need the app token: a caller without it (or with a wrong one) is refused; daprd,
/// which sends it, delivers events.
#[tokio::test]
async fn callbacks_require_the_app_token() {
    let stack = redis_stack().await;
    let token = "callback-token";
    let (app, notifications) = TestApp::task_api_with_notifications(
        &stack,
        Options {
            app_api_token: Some(token.into()),
            ..Default::default()
        },
    )
    .await;
    let mut callback = AppCallbackClient::new(app.channel().await);
    let event = rt::TopicEventRequest {
        id: "forged".into(),
        topic: "task-events".into(),
        pubsub_name: "pubsub".into(),
        path: "/task-events".into(),
        data: completed_event("forged-task", Some(2)),
        data_content_type: "application/json".into(),
        ..Default::default()
    };
    let refused = callback.on_topic_event(event.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(event.clone());
    wrong
        .metadata_mut()
        .insert("dapr-api-token", MetadataValue::from_static("guess"));
    assert_eq!(
        callback.on_topic_event(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let invoke = callback
        .on_invoke(InvokeRequest {
            method: "dead-letters".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invoke.code(), Code::Unauthenticated);
    // The three daprd calls without a token stay open.
    callback.list_topic_subscriptions(()).await.unwrap();
    callback.list_input_bindings(()).await.unwrap();

    let mut with_token = tonic::Request::new(rt::TopicEventRequest {
        path: "/task-events/completed".into(),
        ..event
    });
    with_token
        .metadata_mut()
        .insert("dapr-api-token", MetadataValue::from_static(token));
    let accepted = callback
        .on_topic_event(with_token)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.status, TopicEventResponseStatus::Success as i32);

    // Through daprd (which sends the token) everything flows.
    let mut client = app.client().await;
    let task = create(&mut client, "tokened", None).await;
    complete(&mut client, &task.id).await;
    expect_exactly(&stack, &notifications, &task.id, 1, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn with_app_health_checks_on_the_app_is_healthy_and_receives_events() {
    let stack = redis_stack().await;
    let notifications = TestApp::notification_service(&stack, Options::default()).await;
    let app = TestApp::task_api(
        &stack,
        Options {
            app_health_check: true,
            ..Default::default()
        },
    )
    .await;
    // daprd counts its probes by outcome. Until the app's first healthy answer some may fail
    // (the app is not ready before its sidecar answers); from then on none may.
    let probes = "dapr_grpc_io_healthprobes_completed_count";
    let failed = |scrape: &Scrape| {
        scrape.sum(probes, &[]) - scrape.sum(probes, &[("grpc_client_status", "OK")])
    };
    let healthy = eventually(Duration::from_secs(10), || async {
        let scrape = Scrape::sidecar(&app.sidecar).await;
        (scrape.sum(probes, &[("grpc_client_status", "OK")]) > 0.0).then_some(scrape)
    })
    .await;
    let mut client = app.client().await;
    let task = create(&mut client, "health-checked", None).await;
    complete(&mut client, &task.id).await;
    expect_exactly(&stack, &notifications, &task.id, 1, Duration::from_secs(20)).await;
    // Probes every second for the whole test, none failed.
    let after = Scrape::sidecar(&app.sidecar).await;
    assert_eq!(
        failed(&after),
        failed(&healthy),
        "a probe failed once the app was healthy:\n{}",
        after.text()
    );
}

/// Bulk delivery (OnBulkTopicEvent): one status per entry, the same per-event rules.
async fn bulk_events_get_one_status_per_entry(set: ComponentSet) {
    let stack = stack_on(set).await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;

    // Through daprd, which delivers every subscription of task-api in bulk.
    let mut ids = Vec::new();
    for n in 0..5 {
        let task = create(&mut client, &format!("bulk {n}"), None).await;
        complete(&mut client, &task.id).await;
        ids.push(task.id);
    }
    for id in &ids {
        expect_exactly(&stack, &notifications, id, 1, Duration::from_secs(30)).await;
    }

    // Straight to the callback: a replayed real completion, a malformed entry, an unknown type,
    // an empty one.
    let mut callback = AppCallbackClient::new(app.as_its_sidecar().await);
    let entry = |id: &str, data: Vec<u8>| rt::TopicEventBulkRequestEntry {
        entry_id: id.into(),
        content_type: "application/cloudevents+json".into(),
        metadata: HashMap::new(),
        event: Some(Event::CloudEvent(rt::TopicEventCeRequest {
            id: format!("ce-{id}"),
            data_content_type: "application/json".into(),
            data,
            ..Default::default()
        })),
    };
    let response = callback
        .on_bulk_topic_event(rt::TopicEventBulkRequest {
            id: "bulk-1".into(),
            topic: "task-events".into(),
            pubsub_name: "pubsub".into(),
            path: "/task-events".into(),
            entries: vec![
                entry("good", completed_event(&ids[0], Some(2))),
                entry("malformed", b"{".to_vec()),
                entry("unknown", br#"{"event_type":"task.nope","task_id":"x","title":"x","status":"pending","timestamp":"2025-01-15T10:30:00"}"#.to_vec()),
                rt::TopicEventBulkRequestEntry {
                    entry_id: "empty".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let statuses: HashMap<String, i32> = response
        .statuses
        .into_iter()
        .map(|s| (s.entry_id, s.status))
        .collect();
    assert_eq!(statuses.len(), 4, "one status per entry");
    // Every entry is answered SUCCESS: the replay changes nothing, the poison is kept as dead
    // letters (not dropped to a dead-letter topic, where it would come round again).
    for id in ["good", "malformed", "unknown", "empty"] {
        assert_eq!(
            statuses[id],
            TopicEventResponseStatus::Success as i32,
            "{id}"
        );
    }
    expect_exactly(&stack, &notifications, &ids[0], 1, Duration::from_secs(10)).await;

    // The Alpha1 twin (deprecated, still called by older runtimes) answers the same way.
    #[allow(deprecated)]
    let mut alpha =
        dapr::dapr::proto::runtime::v1::app_callback_alpha_client::AppCallbackAlphaClient::new(
            app.as_its_sidecar().await,
        );
    #[allow(deprecated)]
    let alpha_response = alpha
        .on_bulk_topic_event_alpha1(rt::TopicEventBulkRequest {
            path: "/task-events".into(),
            topic: "task-events".into(),
            entries: vec![entry("again", b"[]".to_vec())],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        alpha_response.statuses[0].status,
        TopicEventResponseStatus::Success as i32
    );
}

per_store! {
    bulk_events_get_one_status_per_entry:
    bulk_events_get_one_status_per_entry_on_redis => Redis,
    bulk_events_get_one_status_per_entry_on_kafka => Kafka,
}

/// Jobs and bindings task-api does not use are answered deliberately.
#[tokio::test]
async fn unused_callbacks_answer_deliberately() {
    let stack = Stack::builder().scheduler(true).start().await.unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut callback = AppCallbackClient::new(app.as_its_sidecar().await);
    let bindings = callback.list_input_bindings(()).await.unwrap().into_inner();
    assert!(bindings.bindings.is_empty());
    let binding = callback
        .on_binding_event(rt::BindingEventRequest {
            name: "cron".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(binding.code(), Code::NotFound);
    let job = callback
        .on_job_event(rt::JobEventRequest {
            name: "unknown-job".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        job.code(),
        Code::NotFound,
        "NOT_FOUND: daprd counts it delivered"
    );

    // A real job through the scheduler reaches OnJobEvent and is not retried.
    let mut dapr = DaprClient::new(app.sidecar.channel().await.unwrap());
    dapr.schedule_job(rt::ScheduleJobRequest {
        job: Some(rt::Job {
            name: "stray".into(),
            due_time: Some("0s".into()),
            ..Default::default()
        }),
        overwrite: true,
    })
    .await
    .unwrap();
    // daprd counts the calls it makes to its app by method and outcome; the calls above went to
    // the app directly, so only the job's deliveries are counted here.
    let sidecar = &app.sidecar;
    let delivered = move |status: &'static str| async move {
        let method = "/dapr.proto.runtime.v1.AppCallback/OnJobEvent";
        let mut labels = vec![("grpc_client_method", method)];
        labels.extend((!status.is_empty()).then_some(("grpc_client_status", status)));
        Scrape::sidecar(sidecar)
            .await
            .sum("dapr_grpc_io_client_completed_rpcs", &labels)
    };
    eventually(Duration::from_secs(20), || async {
        (delivered("").await > 0.0).then_some(())
    })
    .await;
    // The job's default failure policy would retry three times a second apart; NOT_FOUND is
    // final, so after a few seconds it was still delivered once.
    // Not synchronisation: a negative check must outlast what it rules out (three retries a second apart).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(delivered("").await, 1.0, "delivered once, not retried");
    assert_eq!(delivered("NotFound").await, 1.0, "answered NOT_FOUND");
}
