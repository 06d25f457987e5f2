//! Caller authentication against the real secret store: API keys, the sidecar token, key
//! rotation without a restart, and refusing to start without the secret.

use std::time::Duration;

use crate::common::{Options, TestApp, eventually};
use devstack::{ComponentSet, DEV_API_KEY_FIELD, DEV_API_KEY_SECRET, Stack};
use task_api::proto::task::v1 as pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn in_memory() -> Stack {
    Stack::builder()
        .components(ComponentSet::InMemory)
        .start()
        .await
        .unwrap()
}

fn list() -> pb::ListTasksRequest {
    pb::ListTasksRequest::default()
}

#[tokio::test]
async fn api_key_is_required_and_checked() {
    let stack = in_memory().await;
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
    let stack = in_memory().await;
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
    let stack = in_memory().await;
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
    let stack = in_memory().await;
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
    let stack = in_memory().await;
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
    let stack = in_memory().await;
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
