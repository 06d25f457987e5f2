//! What daprd calls on notification-service: only invocation, `notify` (record one),
//! `notify-batch` (record several, a receipt each) and `notifications?task_id=` (read them
//! back). It subscribes to nothing, binds nothing and
//! schedules no jobs; `dapr-app` answers those calls deliberately.

use dapr_app::{App, Invocation, Reply, Verb};
use tonic::Status;

use super::{inbox::Inbox, store::Recorded};
use crate::{
    domain::{
        BatchReceipts, IDEMPOTENCY_KEY, NOTIFY_BATCH_METHOD, Notification, Receipt, text::echo,
    },
    health::Readiness,
    percent::query_pairs,
    service::ports::KeyValueStore,
};

pub(super) struct NotificationCallbacks<S> {
    inbox: Inbox<S>,
    readiness: Readiness,
}

impl<S: KeyValueStore> NotificationCallbacks<S> {
    pub(super) fn new(inbox: Inbox<S>, readiness: Readiness) -> Self {
        Self { inbox, readiness }
    }

    async fn notify(&self, call: &Invocation) -> Result<Reply, Status> {
        let sender = call.caller().unwrap_or("unknown");
        let (notification, key, recorded) = self
            .inbox
            .receive(&call.data, call.header(IDEMPOTENCY_KEY), sender)
            .await?;
        note(&notification, &key, sender, recorded);
        Ok(Reply::json(b"{}".to_vec()))
    }

    async fn notify_batch(&self, call: &Invocation) -> Result<Reply, Status> {
        let sender = call.caller().unwrap_or("unknown");
        let received = self.inbox.receive_batch(&call.data, sender).await?;
        let mut receipts = Vec::with_capacity(received.len());
        for (item, receipt) in received {
            match &receipt {
                Receipt::Kept => note(&item.notification, &item.key, sender, Recorded::New),
                Receipt::Duplicate => {
                    note(&item.notification, &item.key, sender, Recorded::Duplicate)
                }
                Receipt::Refused { reason } => tracing::warn!(
                    task_id = %echo(&item.notification.task_id), idempotency_key = %echo(&item.key),
                    %reason, "notification refused"
                ),
                Receipt::Unavailable { reason } => tracing::warn!(
                    task_id = %echo(&item.notification.task_id), idempotency_key = %echo(&item.key),
                    %reason, "notification not kept; the sender sends it again"
                ),
            }
            receipts.push(receipt);
        }
        Ok(Reply::json(BatchReceipts { receipts }.to_json()))
    }

    async fn list(&self, query: &str) -> Result<Reply, Status> {
        let pairs = query_pairs(query);
        let task_id = pairs
            .iter()
            .find(|(name, _)| name == "task_id")
            .map(|(_, value)| value.as_str())
            .unwrap_or_default();
        let notifications = self.inbox.for_task(task_id).await?;
        let body =
            serde_json::to_vec(&notifications).map_err(|e| crate::api::status::internal(&e))?;
        Ok(Reply::json(body))
    }
}

/// Counts and logs one notification kept (or recognised as kept before).
fn note(notification: &Notification, key: &str, sender: &str, recorded: Recorded) {
    crate::telemetry::metrics::METRICS
        .notifications_received
        .with_label_values(&[match recorded {
            Recorded::New => "new",
            Recorded::Duplicate => "duplicate",
        }])
        .inc();
    match recorded {
        Recorded::New => tracing::info!(
            task_id = %notification.task_id, idempotency_key = %key, %sender,
            "notification: {}", notification.message
        ),
        Recorded::Duplicate => tracing::info!(
            task_id = %notification.task_id, idempotency_key = %key,
            "duplicate notification ignored"
        ),
    }
}

impl<S: KeyValueStore> App for NotificationCallbacks<S> {
    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        match (call.method.trim_matches('/'), call.verb) {
            ("notify", Some(Verb::Post | Verb::Put) | None) => self.notify(&call).await,
            (NOTIFY_BATCH_METHOD, Some(Verb::Post | Verb::Put) | None) => {
                self.notify_batch(&call).await
            }
            ("notifications", Some(Verb::Get) | None) => self.list(&call.query).await,
            (method, verb) => Err(Status::not_found(format!(
                "notification-service has no method {} for verb {}: it serves POST notify, POST notify-batch and GET notifications?task_id=",
                echo(method),
                verb.map_or("none", Verb::as_str)
            ))),
        }
    }

    fn health(&self) -> Result<(), Status> {
        self.readiness.app_health()
    }
}
