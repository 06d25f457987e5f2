//! Caller authentication against the real secret store: API keys, the sidecar token, key
//! rotation without a restart, and refusing to start without the secret.

use std::time::Duration;

use crate::common::{Options, TestApp, eventually};
use devstack::{ComponentSet, DEV_API_KEY_FIELD, DEV_API_KEY_SECRET, Stack};
use task_api::proto::task::v1 as pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn redis() -> Stack {
    Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap()
}

fn list() -> pb::ListTasksRequest {
    pb::ListTasksRequest::default()
}

#[tokio::test]
async fn api_key_is_required_and_checked() {
    let stack = redis().await;
    let app = TestApp::task_api(&stack, Options::default()).await;

    let mut anonymous = app.client_with("x-unrelated", "1").await;
    let refused = anonymous.list_tasks(list()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("API key"),
        "{}",
        refused.message()
    );

    let mut wrong = app.client_with("x-api-key", "not-the-key").await;
    assert_eq!(
        wrong.list_tasks(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong_bearer = app.client_with("authorization", "Bearer not-the-key").await;
    assert_eq!(
        wrong_bearer.list_tasks(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut by_header = app.client_with("x-api-key", stack.api_key()).await;
    by_header.list_tasks(list()).await.unwrap();
    let mut by_bearer = app
        .client_with("authorization", &format!("Bearer {}", stack.api_key()))
        .await;
    by_bearer.list_tasks(list()).await.unwrap();

    // Health needs no key.
    let mut health = HealthClient::new(app.channel().await);
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 1, "SERVING");
}

#[tokio::test]
async fn the_sidecar_token_stands_in_for_the_api_key() {
    let stack = redis().await;
    let app = TestApp::task_api(
        &stack,
        Options {
            app_api_token: Some("sidecar-secret".into()),
            ..Default::default()
        },
    )
    .await;
    let mut via_token = app.client_with("dapr-api-token", "sidecar-secret").await;
    via_token.list_tasks(list()).await.unwrap();
    let mut wrong_token = app.client_with("dapr-api-token", "guess").await;
    assert_eq!(
        wrong_token.list_tasks(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Direct callers still get in with the API key.
    app.client().await.list_tasks(list()).await.unwrap();
}

#[tokio::test]
async fn auth_can_be_disabled_explicitly() {
    let stack = redis().await;
    let app = TestApp::task_api(
        &stack,
        Options {
            settings: vec![("AUTH_DISABLED", "true".into())],
            ..Default::default()
        },
    )
    .await;
    let mut anonymous = app.client_with("x-unrelated", "1").await;
    anonymous.list_tasks(list()).await.unwrap();
}

/// A rotated key takes effect without restarting task-api: the secret store component is
/// pointed at a new secrets file (daprd hot-reloads components), and task-api's next refresh
/// reads the new key.
#[tokio::test]
async fn a_rotated_key_takes_effect_without_a_restart() {
    let stack = redis().await;
    let app = TestApp::task_api(
        &stack,
        Options {
            settings: vec![("API_KEY_REFRESH_SECONDS", "1".into())],
            ..Default::default()
        },
    )
    .await;
    let old_key = stack.api_key().to_string();
    app.client().await.list_tasks(list()).await.unwrap();

    let rotated = stack.dir().join("secrets-rotated.json");
    std::fs::write(
        &rotated,
        serde_json::json!({ DEV_API_KEY_SECRET: { DEV_API_KEY_FIELD: "rotated-key" } }).to_string(),
    )
    .unwrap();
    let component = stack.resources_dir().join("common-secretstore.yaml");
    let yaml = std::fs::read_to_string(&component).unwrap();
    let original = stack.dir().join("secrets.json");
    std::fs::write(
        &component,
        yaml.replace(&*original.to_string_lossy(), &rotated.to_string_lossy()),
    )
    .unwrap();

    let mut new_client = app.client_with("x-api-key", "rotated-key").await;
    eventually(Duration::from_secs(30), || {
        let mut client = new_client.clone();
        async move { client.list_tasks(list()).await.ok() }
    })
    .await;
    new_client.list_tasks(list()).await.unwrap();
    let mut old_client = app.client_with("x-api-key", &old_key).await;
    assert_eq!(
        old_client.list_tasks(list()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_missing_secret_store_stops_start_up_with_a_clear_message() {
    let stack = redis().await;
    let error = TestApp::try_task_api(
        &stack,
        Options {
            settings: vec![
                ("SECRET_STORE_NAME", "vault".into()),
                ("SIDECAR_WAIT_SECONDS", "3".into()),
            ],
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("task-api must not start without its secret store");
    assert!(
        error.contains(r#"no secretstores component named "vault""#),
        "{error}"
    );
    assert!(error.contains("AUTH_DISABLED"), "{error}");
}

#[tokio::test]
async fn a_missing_secret_stops_start_up_with_a_clear_message() {
    let stack = redis().await;
    let error = TestApp::try_task_api(
        &stack,
        Options {
            settings: vec![("API_KEY_SECRET_NAME", "no-such-secret".into())],
            ..Default::default()
        },
    )
    .await
    .err()
    .expect("task-api must not start without its API key");
    assert!(error.contains("no-such-secret"), "{error}");
    assert!(error.contains("AUTH_DISABLED=true"), "{error}");
}

/// Closed by default: in the default configuration no method of either app, callbacks
/// included, reads or changes anything for a caller without valid credentials (none, a wrong
/// key, a wrong app token), and the API key does not open the callbacks. Only health,
/// reflection and the three callbacks daprd makes without a token (which read nothing) answer.
#[tokio::test]
async fn no_method_answers_without_valid_credentials() {
    use prost::Message;
    let stack = redis().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;

    // Every TaskService method, from the descriptors reflection serves.
    let descriptors =
        prost_types::FileDescriptorSet::decode(task_api::proto::TASK_DESCRIPTORS).unwrap();
    let task_methods: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|file| {
            file.service.iter().flat_map(move |service| {
                service.method.iter().map(move |method| {
                    format!("/{}.{}/{}", file.package(), service.name(), method.name())
                })
            })
        })
        .collect();
    assert_eq!(task_methods.len(), 6, "{task_methods:?}");
    let callbacks = [
        "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
        "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent",
        "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent",
        "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent",
        "/dapr.proto.runtime.v1.AppCallback/OnJobEvent",
        "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
        "/dapr.proto.runtime.v1.AppCallbackAlpha/OnJobEventAlpha1",
    ];
    let wrong: [&[(&'static str, &str)]; 5] = [
        &[],
        &[("x-api-key", "guess")],
        &[("authorization", "Bearer guess")],
        &[("dapr-api-token", "guess")],
        &[("dapr-api-token", "")],
    ];
    // The data a successful forged call would have created: a task, an event, a notification.
    let create = pb::CreateTaskRequest {
        title: "forged".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let refused = |result: Result<Vec<u8>, tonic::Status>, what: &str| match result {
        Err(status) if status.code() == Code::Unauthenticated => {}
        other => panic!("{what}: {other:?}"),
    };
    for app_under_test in [&app, &notifications] {
        let paths: Vec<String> = if std::ptr::eq(app_under_test, &app) {
            task_methods
                .iter()
                .cloned()
                .chain(callbacks.map(String::from))
                .collect()
        } else {
            ["/notification.v1.NotificationService/ListNotifications".to_string()]
                .into_iter()
                .chain(callbacks.map(String::from))
                .collect()
        };
        for path in &paths {
            for headers in wrong {
                let result = crate::common::raw_call(
                    app_under_test.channel().await,
                    path,
                    create.clone(),
                    headers,
                )
                .await;
                refused(result, &format!("{path} with {headers:?}"));
            }
        }
        // The API key is for callers of TaskService, not for the callbacks or notification-service.
        for path in paths.iter().filter(|p| !p.starts_with("/task.v1.")) {
            let result = crate::common::raw_call(
                app_under_test.channel().await,
                path,
                create.clone(),
                &[("x-api-key", &app.api_key)],
            )
            .await;
            refused(result, &format!("{path} with the API key"));
        }
    }

    // What needs no credentials answers, and reads or changes nothing.
    for path in [
        "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
        "/dapr.proto.runtime.v1.AppCallback/ListInputBindings",
        "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
        "/grpc.health.v1.Health/Check",
    ] {
        let answer = crate::common::raw_call(app.channel().await, path, Vec::new(), &[]).await;
        assert!(answer.is_ok(), "{path}: {answer:?}");
    }
    // The controls: valid credentials pass the same gate.
    let mut client = app.client().await;
    let listed = client.list_tasks(list()).await.unwrap().into_inner();
    assert!(listed.tasks.is_empty(), "nothing was created: {listed:?}");
    let invoke = crate::common::raw_call(
        app.channel().await,
        "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
        Vec::new(),
        &[("dapr-api-token", &app.app_token)],
    )
    .await
    .unwrap_err();
    assert_eq!(invoke.code(), Code::NotFound, "past the gate: {invoke:?}");
}
