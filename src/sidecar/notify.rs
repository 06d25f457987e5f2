//! Calling notification-service through Dapr service invocation.

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::{HttpExtension, InvokeRequest, http_extension::Verb},
    runtime::v1::InvokeServiceRequest,
};
use tonic::{Code, metadata::MetadataValue};

use super::{Call, Sidecar, timed};
use crate::{
    domain::{IDEMPOTENCY_KEY, Notification},
    service::ports::{Notifier, NotifyError},
};

/// The notification app on the other side of the sidecar.
#[derive(Debug, Clone)]
pub(crate) struct DaprNotifier {
    sidecar: Sidecar,
    app_id: String,
    timeout: Duration,
}

/// The notification app did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("{app_id} did not answer within {timeout:?}")]
struct TimedOut {
    app_id: String,
    timeout: Duration,
}

impl DaprNotifier {
    pub(crate) fn new(sidecar: Sidecar, app_id: &str, timeout: Duration) -> Self {
        Self {
            sidecar,
            app_id: app_id.to_string(),
            timeout,
        }
    }
}

impl Notifier for DaprNotifier {
    /// Invokes method `notify` of the notification app with the JSON body, as a POST (so an
    /// HTTP-protocol receiver works too), within the configured timeout. The callee's
    /// INVALID_ARGUMENT is a refusal; everything else may pass.
    async fn notify(&self, notification: &Notification, key: &str) -> Result<(), NotifyError> {
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
        if let Ok(key) = MetadataValue::try_from(key) {
            request.metadata_mut().insert(IDEMPOTENCY_KEY, key);
        }
        let mut grpc = self.sidecar.grpc();
        let target = Call::new("invoke", "invoke", "InvokeService").on(&self.app_id, "notify");
        let call = timed(target, grpc.invoke_service(request));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == Code::InvalidArgument => {
                Err(NotifyError::Refused {
                    source: Box::new(status),
                })
            }
            Ok(Err(status)) => Err(NotifyError::Unavailable {
                source: Box::new(status),
            }),
            Err(_) => Err(NotifyError::Unavailable {
                source: Box::new(TimedOut {
                    app_id: self.app_id.clone(),
                    timeout: self.timeout,
                }),
            }),
        }
    }
}
