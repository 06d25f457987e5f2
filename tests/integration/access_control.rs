//! notification-service's access-control policy from the Kubernetes manifests, enforced by a real
//! daprd with mTLS identities from a real Sentry: task-api may call `notify`, another app may not.

use std::time::Duration;

use crate::common::{Options, Scrape, TestApp, create, eventually, kubernetes};
use dapr::dapr::proto::{
    common::v1::{HttpExtension, InvokeRequest, http_extension::Verb},
    runtime::v1::{InvokeServiceRequest, dapr_client::DaprClient},
};
use devstack::Stack;
use task_api::{
    domain::Notification,
    proto::{notification::v1::ListNotificationsRequest, task::v1 as pb},
};
use tonic::Code;

/// The Kubernetes Configuration of notification-service, plus the local name resolution (the
/// sidecars here find each other through SQLite, not Kubernetes DNS).
fn notification_service_config(stack: &Stack) -> String {
    let rendered = kubernetes::render_overlay();
    let (_, config) = kubernetes::documents(&rendered, "Configuration")
        .into_iter()
        .find(|(name, _)| name == "notification-service-config")
        .expect("the manifests define notification-service-config");
    let local = std::fs::read_to_string(stack.config_path()).unwrap();
    let name_resolution: Vec<&str> = local
        .lines()
        .skip_while(|l| *l != "  nameResolution:")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("    "))
        .map(|(_, l)| l)
        .collect();
    assert!(
        !name_resolution.is_empty(),
        "the local config resolves names"
    );
    assert!(config.contains("\nspec:\n"));
    config.replacen(
        "\nspec:\n",
        &format!("\nspec:\n{}\n", name_resolution.join("\n")),
        1,
    )
}

#[tokio::test]
async fn only_task_api_may_notify() {
    let stack = Stack::builder().sentry(true).start().await.unwrap();
    let config = stack.dir().join("notification-service-config.yaml");
    std::fs::write(&config, notification_service_config(&stack)).unwrap();
    let notifications = TestApp::notification_service(
        &stack,
        Options {
            config_file: Some(config),
            ..Default::default()
        },
    )
    .await;
    let app = TestApp::task_api(&stack, Options::default()).await;

    // Allowed: task-api's completions reach notification-service, a lone one through `notify`,
    // several at once through `notify-batch` (the policy allows both).
    let invocations = || async {
        Scrape::of(app.sidecar.metrics_port(), "/").await.sum(
            "dapr_grpc_io_server_completed_rpcs",
            &[(
                "grpc_server_method",
                "/dapr.proto.runtime.v1.Dapr/InvokeService",
            )],
        )
    };
    let before = invocations().await;
    let mut client = app.client().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(create(&mut client, &format!("allowed {n}"), None).await.id);
    }
    let complete = |id: String| {
        let mut client = client.clone();
        async move {
            client
                .update_task_status(pb::UpdateTaskStatusRequest {
                    id,
                    status: pb::TaskStatus::Completed as i32,
                    etag: String::new(),
                })
                .await
                .unwrap();
        }
    };
    complete(ids[0].clone()).await;
    futures::future::join_all(ids[1..].iter().cloned().map(complete)).await;
    let mut reader = notifications.notifications_client().await;
    for id in &ids {
        eventually(Duration::from_secs(20), || {
            let mut reader = reader.clone();
            let task_id = id.clone();
            async move {
                let list = reader
                    .list_notifications(ListNotificationsRequest { task_id })
                    .await
                    .ok()?
                    .into_inner();
                (list.notifications.len() == 1).then_some(())
            }
        })
        .await;
    }

    // Had the policy refused notify-batch, task-api would have sent them one at a time: one
    // invocation each, and one more for the refused batch.
    let calls = invocations().await - before;
    assert!(
        calls < ids.len() as f64,
        "{} completions in {calls} invocations",
        ids.len()
    );

    // Denied: the same calls from any other app id.
    let intruder = stack.sidecar("intruder").unwrap().start().await.unwrap();
    let mut dapr = DaprClient::new(intruder.channel().await.unwrap());
    let forged = Notification::task_completed("forged");
    let batch = serde_json::json!({"notifications": [{"key": "forged.1", "notification": forged}]});
    for (method, body) in [
        ("notify", forged.to_json()),
        ("notify-batch", serde_json::to_vec(&batch).unwrap()),
    ] {
        let denied = dapr
            .invoke_service(InvokeServiceRequest {
                id: "notification-service".into(),
                message: Some(InvokeRequest {
                    method: method.into(),
                    data: Some(prost_types::Any {
                        type_url: String::new(),
                        value: body,
                    }),
                    content_type: "application/json".into(),
                    http_extension: Some(HttpExtension {
                        verb: Verb::Post as i32,
                        querystring: String::new(),
                    }),
                }),
            })
            .await
            .unwrap_err();
        // The callee's sidecar refuses with PERMISSION_DENIED; the caller's sidecar hands that
        // on wrapped in INTERNAL.
        assert_eq!(denied.code(), Code::Internal, "{method}: {denied:?}");
        assert!(
            denied.message().contains("PermissionDenied")
                && denied.message().contains(
                    "access control policy has denied access to id: spiffe://public/ns/default/intruder"
                ),
            "{method}: {denied:?}"
        );
    }
    let forged = reader
        .list_notifications(ListNotificationsRequest {
            task_id: "forged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forged.notifications.is_empty());
}
