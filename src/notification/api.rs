//! `notification.v1.NotificationService`: read back what was received.

use tonic::{Request, Response, Status};

use crate::{
    api::convert::timestamp,
    domain::time,
    proto::notification::v1::{self as pb, notification_service_server::NotificationService},
    service::Error,
    sidecar::notifications::{NotificationStore, ReceivedNotification},
};

#[derive(Debug, Clone)]
pub struct NotificationApi {
    store: NotificationStore,
}

impl NotificationApi {
    pub fn new(store: NotificationStore) -> Self {
        Self { store }
    }
}

pub fn to_proto(n: &ReceivedNotification) -> pb::Notification {
    pb::Notification {
        id: n.id.clone(),
        r#type: n.kind.clone(),
        task_id: n.task_id.clone(),
        message: n.message.clone(),
        sender_app_id: n.sender_app_id.clone(),
        received_at: time::parse(&n.received_at).map(timestamp),
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let task_id = &request.get_ref().task_id;
        if task_id.is_empty() {
            return Err(Status::invalid_argument("task_id is required"));
        }
        let notifications = self.store.for_task(task_id).await.map_err(Error::from)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: notifications.iter().map(to_proto).collect(),
        }))
    }
}
