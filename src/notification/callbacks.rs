//! What daprd calls on notification-service. Only invocation is used: `notify` (record one) and
//! `notifications?task_id=` (read them back). It subscribes to nothing, binds nothing and
//! schedules no jobs; such calls are answered so that daprd neither retries nor loses anything.

use dapr::dapr::proto::{
    common::v1::{InvokeRequest, InvokeResponse, http_extension::Verb},
    runtime::v1::{
        self as rt, app_callback_alpha_server::AppCallbackAlpha,
        app_callback_health_check_server::AppCallbackHealthCheck, app_callback_server::AppCallback,
        topic_event_response::TopicEventResponseStatus,
    },
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    domain::{Notification, time},
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

    async fn notify(&self, metadata: &MetadataMap, body: &[u8]) -> Result<InvokeResponse, Status> {
        let notification = Notification::from_json(body)
            .map_err(|e| Status::invalid_argument(format!("invalid notification: {e}")))?;
        let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        // Without a key, every delivery counts as new.
        let id = header(IDEMPOTENCY_KEY)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let sender = header("dapr-caller-app-id")
            .unwrap_or("unknown")
            .to_string();
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
        Ok(json(b"{}".to_vec()))
    }

    async fn list(&self, query: &str) -> Result<InvokeResponse, Status> {
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
        Ok(json(body))
    }
}

fn json(value: Vec<u8>) -> InvokeResponse {
    InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value,
        }),
        content_type: "application/json".into(),
    }
}

#[tonic::async_trait]
impl AppCallback for NotificationCallbacks {
    async fn on_invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let (verb, query) = request
            .http_extension
            .as_ref()
            .map(|ext| {
                (
                    Verb::try_from(ext.verb).unwrap_or(Verb::None),
                    ext.querystring.as_str(),
                )
            })
            .unwrap_or((Verb::None, ""));
        let body = request
            .data
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        match (request.method.trim_matches('/'), verb) {
            ("notify", Verb::Post | Verb::Put | Verb::None) => self.notify(&metadata, body).await,
            ("notifications", Verb::Get | Verb::None) => self.list(query).await,
            (method, verb) => Err(Status::not_found(format!(
                "notification-service has no method {} for verb {}: it serves POST notify and GET notifications?task_id=",
                crate::domain::text::echo(method),
                verb.as_str_name()
            ))),
        }
        .map(Response::new)
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse::default()))
    }

    /// Nothing is subscribed; an event here was misrouted: DROP sends it to a dead-letter
    /// topic if one is configured instead of losing it silently.
    async fn on_topic_event(
        &self,
        request: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        tracing::warn!(topic = %request.get_ref().topic, "unexpected topic event: DROP");
        Ok(Response::new(rt::TopicEventResponse {
            status: TopicEventResponseStatus::Drop as i32,
        }))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(rt::ListInputBindingsResponse::default()))
    }

    async fn on_binding_event(
        &self,
        request: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        Err(Status::not_found(format!(
            "notification-service has no input binding named {}",
            crate::domain::text::echo(&request.get_ref().name)
        )))
    }

    async fn on_bulk_topic_event(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        let statuses = request
            .into_inner()
            .entries
            .into_iter()
            .map(|entry| rt::TopicEventBulkResponseEntry {
                entry_id: entry.entry_id,
                status: TopicEventResponseStatus::Drop as i32,
            })
            .collect();
        Ok(Response::new(rt::TopicEventBulkResponse { statuses }))
    }

    /// NOT_FOUND counts as delivered for daprd: no retries of a job nobody handles.
    async fn on_job_event(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        Err(Status::not_found(format!(
            "notification-service has no job {}",
            crate::domain::text::echo(&request.get_ref().name)
        )))
    }
}

#[tonic::async_trait]
impl AppCallbackAlpha for NotificationCallbacks {
    async fn on_bulk_topic_event_alpha1(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        self.on_bulk_topic_event(request).await
    }

    async fn on_job_event_alpha1(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        self.on_job_event(request).await
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for NotificationCallbacks {
    async fn health_check(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::HealthCheckResponse>, Status> {
        crate::callback::health::check(&self.readiness).map(Response::new)
    }
}
