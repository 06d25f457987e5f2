//! Calling notification-service through Dapr service invocation.

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::{HttpExtension, InvokeRequest, http_extension::Verb},
    runtime::v1::InvokeServiceRequest,
};
use tonic::metadata::MetadataValue;

use super::{Sidecar, SidecarError};
use crate::domain::Notification;

/// Metadata that makes a repeated notification a no-op at the receiver.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Clone)]
pub struct Notifier {
    sidecar: Sidecar,
    app_id: String,
    timeout: Duration,
}

impl Notifier {
    pub fn new(sidecar: Sidecar, app_id: &str, timeout: Duration) -> Self {
        Self {
            sidecar,
            app_id: app_id.to_string(),
            timeout,
        }
    }

    /// Invokes method `notify` of the notification app with the JSON body, as a POST (so an
    /// HTTP-protocol receiver works too), within the configured timeout.
    pub async fn notify(
        &self,
        notification: &Notification,
        idempotency_key: &str,
    ) -> Result<(), SidecarError> {
        let mut request = tonic::Request::new(InvokeServiceRequest {
            id: self.app_id.clone(),
            message: Some(InvokeRequest {
                method: "notify".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: notification.to_json(),
                }),
                content_type: "application/json".into(),
                http_extension: Some(HttpExtension {
                    verb: Verb::Post as i32,
                    querystring: String::new(),
                }),
            }),
        });
        request.set_timeout(self.timeout);
        if let Ok(key) = MetadataValue::try_from(idempotency_key) {
            request.metadata_mut().insert(IDEMPOTENCY_KEY, key);
        }
        let mut grpc = self.sidecar.grpc();
        match tokio::time::timeout(self.timeout, grpc.invoke_service(request)).await {
            Ok(result) => result.map(|_| ()).map_err(SidecarError::from_invoke),
            Err(_) => Err(SidecarError::Unavailable(format!(
                "{} did not answer within {:?}",
                self.app_id, self.timeout
            ))),
        }
    }
}
