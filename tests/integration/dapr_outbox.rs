//! Why task-api keeps its own outbox instead of Dapr's transactional outbox, shown against the
//! real daprd 1.18.3 on PostgreSQL.
//!
//! Dapr's outbox (`outboxPublishPubsub` on a transactional state store) publishes an internal
//! message before the transaction, adds a marker key to it, and publishes the user's event once
//! a read finds the marker: it waits 1 s, then keeps looking for 10 s
//! (`pkg/runtime/pubsub/outbox.go`). A transaction that failed leaves a message whose marker
//! never comes, and every ETag conflict is such a failure. task-api's relay decides a staged
//! event at once from the task record (`faults::racing_deletes_*`: the slowest event of 80
//! racing pairs arrives in under a second).

use std::{collections::HashMap, time::Duration};

use crate::common::EventProbe;
use dapr::dapr::proto::{
    common::v1::StateItem,
    runtime::v1::{
        ExecuteStateTransactionRequest, TransactionalStateOperation, dapr_client::DaprClient,
    },
};
use devstack::{ComponentSet, Stack};

/// A Redis streams component with daprd's default delivery workers (10): what a Dapr user gets
/// unless they raise `concurrency`, as task-api's own components do.
fn default_pubsub(address: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: defaultpubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
    - name: redisHost
      value: \"{address}\"
"
    )
}

fn outbox_store(connection: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: outboxstore
spec:
  type: state.postgresql
  version: v2
  metadata:
    - name: connectionString
      value: \"{connection}\"
    - name: tablePrefix
      value: outbox_
    - name: outboxPublishPubsub
      value: defaultpubsub
    - name: outboxPublishTopic
      value: outbox-events
    - name: outboxDiscardWhenMissingState
      value: \"true\"
"
    )
}

async fn upsert(dapr: &mut DaprClient<tonic::transport::Channel>, key: &str) {
    dapr.execute_state_transaction(ExecuteStateTransactionRequest {
        store_name: "outboxstore".into(),
        operations: vec![TransactionalStateOperation {
            operation_type: "upsert".into(),
            request: Some(StateItem {
                key: key.into(),
                value: format!("{{\"key\":\"{key}\"}}").into_bytes(),
                metadata: HashMap::from([(
                    "contentType".to_string(),
                    "application/json".to_string(),
                )]),
                ..Default::default()
            }),
        }],
        metadata: HashMap::new(),
    })
    .await
    .unwrap();
}

/// Transactions that lose an ETag race leave internal messages whose marker never appears; each
/// holds one of the broker's delivery workers (10 on Redis streams unless `concurrency` says
/// otherwise) for the whole marker search (1 s, then 10 s), and messages queued behind them past
/// `processingTimeout` are handed out again: after a burst of 29 conflicts on one key, an
/// unrelated change waits more than 30 s for its event. More workers move the threshold (with
/// 100, 29 conflicts no longer stall it), not the mechanism. Conflicts are routine for task-api
/// (every racing writer without an ETag).
#[tokio::test]
async fn conflicts_hold_up_daprs_outbox() {
    let stack = Stack::builder()
        .components(ComponentSet::Postgres)
        .start()
        .await
        .unwrap();
    let connection = stack.postgres().unwrap().connection_string();
    std::fs::write(
        stack.resources_dir().join("outboxstore.yaml"),
        outbox_store(&connection),
    )
    .unwrap();
    std::fs::write(
        stack.resources_dir().join("defaultpubsub.yaml"),
        default_pubsub(&stack.broker().unwrap().address()),
    )
    .unwrap();
    let mut subscriber = EventProbe::start("defaultpubsub", &["outbox-events"]).await;
    let _subscriber_sidecar = stack
        .sidecar("outbox-subscriber")
        .unwrap()
        .app_port(subscriber.port)
        .start()
        .await
        .unwrap();
    let writer = stack
        .sidecar("outbox-writer")
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut dapr = DaprClient::new(writer.channel().await.unwrap());
    upsert(&mut dapr, "contended").await;
    subscriber.next(Duration::from_secs(30)).await;
    let etag = dapr
        .get_state(dapr::dapr::proto::runtime::v1::GetStateRequest {
            store_name: "outboxstore".into(),
            key: "contended".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .etag;
    let mut racers = tokio::task::JoinSet::new();
    for n in 0..30 {
        let mut dapr = dapr.clone();
        let etag = etag.clone();
        racers.spawn(async move {
            dapr.execute_state_transaction(ExecuteStateTransactionRequest {
                store_name: "outboxstore".into(),
                operations: vec![TransactionalStateOperation {
                    operation_type: "upsert".into(),
                    request: Some(StateItem {
                        key: "contended".into(),
                        value: format!("{{\"key\":\"contended\",\"n\":{n}}}").into_bytes(),
                        etag: Some(dapr::dapr::proto::common::v1::Etag { value: etag }),
                        metadata: HashMap::from([(
                            "contentType".to_string(),
                            "application/json".to_string(),
                        )]),
                        ..Default::default()
                    }),
                }],
                metadata: HashMap::new(),
            })
            .await
            .is_ok()
        });
    }
    let mut won = 0;
    while let Some(ok) = racers.join_next().await {
        won += usize::from(ok.unwrap());
    }
    assert_eq!(won, 1, "one transaction wins the race");
    // An unrelated change, committed right after the burst: its event does not arrive within
    // the 30 s task-api promises.
    upsert(&mut dapr, "unrelated").await;
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = subscriber.next(Duration::from_secs(60)).await;
            let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
            if data["key"] == "unrelated" {
                return;
            }
        }
    })
    .await;
    assert!(
        arrived.is_err(),
        "the unrelated change's event arrived within 30 s: Dapr's outbox no longer stalls behind conflicts, so the reasoning in this file needs another look"
    );
}
