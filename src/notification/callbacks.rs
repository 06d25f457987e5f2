//! What daprd calls on notification-service: only invocation, `notify` (record one) and
//! `notifications?task_id=` (read them back). It subscribes to nothing, binds nothing and
//! schedules no jobs; `dapr-app` answers those calls deliberately.

use dapr_app::{App, Invocation, Reply, Verb};
use tonic::Status;

use crate::{
    domain::{Notification, text::echo, time},
    health::Readiness,
    percent::query_pairs,
    service::Error,
    sidecar::{
        notifications::{NotificationStore, ReceivedNotification, Recorded},
        notify::IDEMPOTENCY_KEY,
    },
};

#[derive(Clone)]
pub struct NotificationCallbacks {
    store: NotificationStore,
    readiness: Readiness,
}

impl NotificationCallbacks {
    pub fn new(store: NotificationStore, readiness: Readiness) -> Self {
        Self { store, readiness }
    }

    async fn notify(&self, call: &Invocation) -> Result<Reply, Status> {
        let notification = Notification::from_json(&call.data)
            .map_err(|e| Status::invalid_argument(format!("invalid notification: {e}")))?;
        // Without a key, every delivery counts as new.
        let id = call
            .header(IDEMPOTENCY_KEY)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let sender = call.caller().unwrap_or("unknown").to_string();
        let received = ReceivedNotification {
            id: id.clone(),
            kind: notification.kind.clone(),
            task_id: notification.task_id.clone(),
            message: notification.message.clone(),
            sender_app_id: sender.clone(),
            received_at: time::format(time::now()),
        };
        match self.store.record(received).await.map_err(Error::from)? {
            Recorded::New => tracing::info!(
                task_id = %notification.task_id, idempotency_key = %id, sender = %sender,
                "notification: {}", notification.message
            ),
            Recorded::Duplicate => tracing::info!(
                task_id = %notification.task_id, idempotency_key = %id,
                "duplicate notification ignored"
            ),
        }
        Ok(Reply::json(b"{}".to_vec()))
    }

    async fn list(&self, query: &str) -> Result<Reply, Status> {
        let pairs = query_pairs(query);
        let task_id = pairs
            .iter()
            .find(|(name, _)| name == "task_id")
            .map(|(_, value)| value.as_str())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Status::invalid_argument("query parameter task_id is required"))?;
        let notifications = self.store.for_task(task_id).await.map_err(Error::from)?;
        let body =
            serde_json::to_vec(&notifications).map_err(|e| crate::api::status::internal(&e))?;
        Ok(Reply::json(body))
    }
}

impl App for NotificationCallbacks {
    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        match (call.method.trim_matches('/'), call.verb) {
            ("notify", Some(Verb::Post | Verb::Put) | None) => self.notify(&call).await,
            ("notifications", Some(Verb::Get) | None) => self.list(&call.query).await,
            (method, verb) => Err(Status::not_found(format!(
                "notification-service has no method {} for verb {}: it serves POST notify and GET notifications?task_id=",
                echo(method),
                verb.map_or("none", Verb::as_str)
            ))),
        }
    }

    fn health(&self) -> Result<(), Status> {
        self.readiness.app_health()
    }
}
