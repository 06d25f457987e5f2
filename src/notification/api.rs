//! `notification.v1.NotificationService`: read back what was received.

use tonic::{Request, Response, Status};

use super::{inbox::Inbox, store::ReceivedNotification};
use crate::{
    api::convert::timestamp,
    domain::time,
    proto::notification::v1::{self as pb, notification_service_server::NotificationService},
    service::ports::KeyValueStore,
};

#[derive(Debug, Clone)]
pub(super) struct NotificationApi<S> {
    inbox: Inbox<S>,
}

impl<S> NotificationApi<S> {
    pub(super) fn new(inbox: Inbox<S>) -> Self {
        Self { inbox }
    }
}

fn to_proto(n: &ReceivedNotification) -> pb::Notification {
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
impl<S: KeyValueStore> NotificationService for NotificationApi<S> {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let notifications = self.inbox.for_task(&request.get_ref().task_id).await?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: notifications.iter().map(to_proto).collect(),
        }))
    }
}
