//! Calling notification-service through Dapr service invocation.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;

use dapr::dapr::proto::{
    common::v1::{HttpExtension, InvokeRequest, http_extension::Verb},
    runtime::v1::InvokeServiceRequest,
};
use tonic::{Code, metadata::MetadataValue};

use super::{Call, Sidecar, timed};
use crate::{
    domain::{
        BatchReceipts, IDEMPOTENCY_KEY, KeyedNotification, NOTIFY_BATCH_MAX, NOTIFY_BATCH_METHOD,
        NotificationBatch, Receipt,
    },
    service::{
        ports::{Notifier, NotifyError},
        shared_causes,
    },
};

/// How long task-api sends notifications one at a time after the receiver said it has no
/// `notify-batch` (an older or other receiver); then it asks again.
const WITHOUT_BATCHES_FOR: Duration = Duration::from_secs(300);

/// The notification app on the other side of the sidecar.
#[derive(Debug, Clone)]
pub(crate) struct DaprNotifier {
    sidecar: Sidecar,
    app_id: String,
    timeout: Duration,
    /// Until when the receiver is taken to have no `notify-batch` (`None`: it has).
    without_batches_until: Arc<Mutex<Option<Instant>>>,
}

/// The notification app did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("{app_id} did not answer within {timeout:?}")]
struct TimedOut {
    app_id: String,
    timeout: Duration,
}

/// The receiver's answer to a batch was not a receipt for each notification.
#[derive(Debug, thiserror::Error)]
enum BadReceipts {
    #[error("the answer to notify-batch is not a list of receipts")]
    Malformed(#[source] serde_json::Error),
    #[error("notify-batch answered {got} receipts for {sent} notifications")]
    Miscounted { sent: usize, got: usize },
}

/// The receiver kept none of a batch's notifications, for this reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotKept(String);

impl DaprNotifier {
    pub(crate) fn new(sidecar: Sidecar, app_id: &str, timeout: Duration) -> Self {
        Self {
            sidecar,
            app_id: app_id.to_string(),
            timeout,
            without_batches_until: Arc::default(),
        }
    }

    /// Invokes `method` of the notification app with a JSON body, as a POST (so an
    /// HTTP-protocol receiver works too), within the configured timeout.
    async fn invoke(
        &self,
        method: &str,
        body: Vec<u8>,
        key: Option<&str>,
    ) -> Result<Vec<u8>, Outcome> {
        let mut request = tonic::Request::new(InvokeServiceRequest {
            id: self.app_id.clone(),
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
        });
        request.set_timeout(self.timeout);
        if let Some(Ok(key)) = key.map(MetadataValue::try_from) {
            request.metadata_mut().insert(IDEMPOTENCY_KEY, key);
        }
        let mut grpc = self.sidecar.grpc();
        let target = Call::new("invoke", "invoke", "InvokeService").on(&self.app_id, method);
        let call = timed(target, grpc.invoke_service(request));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response
                .into_inner()
                .data
                .map(|any| any.value)
                .unwrap_or_default()),
            Ok(Err(status)) => Err(Outcome::Status(status)),
            Err(_) => Err(Outcome::TimedOut),
        }
    }

    fn failed(&self, outcome: Outcome) -> NotifyError {
        match outcome {
            // The callee's INVALID_ARGUMENT is a refusal; everything else may pass.
            Outcome::Status(status) if status.code() == Code::InvalidArgument => {
                NotifyError::Refused {
                    source: Box::new(status),
                }
            }
            Outcome::Status(status) => NotifyError::Unavailable {
                source: Box::new(status),
            },
            Outcome::TimedOut => NotifyError::Unavailable {
                source: Box::new(TimedOut {
                    app_id: self.app_id.clone(),
                    timeout: self.timeout,
                }),
            },
        }
    }

    /// Method `notify`: one notification, its key in the `idempotency-key` metadata.
    async fn notify_one(&self, item: &KeyedNotification) -> Result<(), NotifyError> {
        self.invoke("notify", item.notification.to_json(), Some(&item.key))
            .await
            .map(drop)
            .map_err(|outcome| self.failed(outcome))
    }

    /// Method `notify-batch`: the notifications in one call, a receipt for each. `None` if the
    /// receiver has no such method.
    async fn notify_batch(
        &self,
        items: &[KeyedNotification],
    ) -> Option<Vec<Result<(), NotifyError>>> {
        let batch = NotificationBatch {
            notifications: items.to_vec(),
        };
        // Strings: serialising cannot fail.
        let body = serde_json::to_vec(&batch).expect("a batch serialises to JSON");
        let answer = match self.invoke(NOTIFY_BATCH_METHOD, body, None).await {
            Ok(answer) => answer,
            Err(Outcome::Status(status)) if batches_not_taken(&status) => {
                tracing::info!(
                    app_id = %self.app_id, status = %status.message(),
                    "the notification app does not take notify-batch (no such method, or its access control allows only notify): notifying one at a time for 5 minutes"
                );
                *self
                    .without_batches_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + WITHOUT_BATCHES_FOR);
                return None;
            }
            Err(outcome) => return Some(for_all(self.failed(outcome), items.len())),
        };
        let receipts = match serde_json::from_slice::<BatchReceipts>(&answer) {
            Ok(answer) if answer.receipts.len() == items.len() => answer.receipts,
            Ok(answer) => {
                let miscounted = BadReceipts::Miscounted {
                    sent: items.len(),
                    got: answer.receipts.len(),
                };
                return Some(unavailable_for_all(miscounted, items.len()));
            }
            Err(error) => {
                return Some(unavailable_for_all(
                    BadReceipts::Malformed(error),
                    items.len(),
                ));
            }
        };
        Some(receipts.into_iter().map(receipt_result).collect())
    }

    fn batches_taken(&self) -> bool {
        let mut until = self
            .without_batches_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(instant) if Instant::now() < instant => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }
}

/// What one invocation came to when it did not succeed.
enum Outcome {
    Status(tonic::Status),
    TimedOut,
}

/// Whether the receiver's side answered that `notify-batch` is not there for task-api: a
/// receiver without the method answers NOT_FOUND (gRPC) or 404 (HTTP, which daprd hands on as
/// NOT_FOUND), or UNIMPLEMENTED; a receiver's sidecar whose access control allows `notify` but
/// not `notify-batch` (a Configuration from before the method) answers PERMISSION_DENIED, which
/// the caller's sidecar hands on wrapped in INTERNAL.
fn batches_not_taken(status: &tonic::Status) -> bool {
    match status.code() {
        Code::NotFound | Code::Unimplemented | Code::PermissionDenied => true,
        Code::Internal => status.message().contains("PermissionDenied"),
        _ => false,
    }
}

/// What every notification of a call that failed as a whole learns: `n` copies of `error`,
/// one source shared.
fn for_all(error: NotifyError, n: usize) -> Vec<Result<(), NotifyError>> {
    let (refused, source) = match error {
        NotifyError::Refused { source } => (true, source),
        NotifyError::Unavailable { source } => (false, source),
    };
    shared_causes(source, n)
        .map(|source| {
            Err(if refused {
                NotifyError::Refused { source }
            } else {
                NotifyError::Unavailable { source }
            })
        })
        .collect()
}

fn unavailable_for_all(error: BadReceipts, n: usize) -> Vec<Result<(), NotifyError>> {
    let source = Box::new(error);
    for_all(NotifyError::Unavailable { source }, n)
}

fn receipt_result(receipt: Receipt) -> Result<(), NotifyError> {
    match receipt {
        Receipt::Kept | Receipt::Duplicate => Ok(()),
        Receipt::Refused { reason } => Err(NotifyError::Refused {
            source: Box::new(NotKept(reason)),
        }),
        Receipt::Unavailable { reason } => Err(NotifyError::Unavailable {
            source: Box::new(NotKept(reason)),
        }),
    }
}

impl Notifier for DaprNotifier {
    /// One notification goes to method `notify`, as to the original's receiver; several go to
    /// `notify-batch` in calls of up to [`NOTIFY_BATCH_MAX`], or one at a time to a receiver
    /// without it.
    async fn notify(&self, items: &[KeyedNotification]) -> Vec<Result<(), NotifyError>> {
        if let [item] = items {
            return vec![self.notify_one(item).await];
        }
        if self.batches_taken() {
            let calls = items
                .chunks(NOTIFY_BATCH_MAX)
                .map(|chunk| self.notify_batch(chunk));
            let answered: Vec<_> = join_all(calls).await;
            if answered.iter().all(Option::is_some) {
                return answered.into_iter().flatten().flatten().collect();
            }
        }
        join_all(items.iter().map(|item| self.notify_one(item))).await
    }
}
