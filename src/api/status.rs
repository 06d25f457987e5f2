//! The one place where errors become gRPC statuses.
//!
//! | Error | Status |
//! |---|---|
//! | invalid field | INVALID_ARGUMENT + google.rpc.BadRequest naming each field |
//! | unknown id | NOT_FOUND |
//! | stale ETag, or contention that outlasted the retries | ABORTED + ErrorInfo with the current ETag |
//! | request_id reused for a different task | INVALID_ARGUMENT + ErrorInfo (`REQUEST_ID_REUSED`) |
//! | too many changes of the task whose events are not published yet | UNAVAILABLE + ErrorInfo (`EVENTS_BACKLOGGED`) with the task id |
//! | sidecar, state store or broker unreachable | UNAVAILABLE + ErrorInfo (`SIDECAR_UNAVAILABLE`, or `OUTCOME_UNKNOWN` with the task id when the change may have been saved) |
//! | anything else (a bug) | INTERNAL with a generic message and the trace id; the cause goes to the log |
//!
//! Through Dapr service invocation these reach HTTP callers as 400, 404, 409, 500 and 503.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{
    domain::Violations,
    service::{Error, Landed},
    telemetry,
};

const DOMAIN: &str = "task-api";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::Invalid(violations) => invalid(&violations),
            Error::NotFound(_) => Status::not_found(message),
            Error::StaleEtag {
                id,
                current_etag,
                current_status,
            } => with_info(
                Code::Aborted,
                message,
                "ETAG_MISMATCH",
                [
                    ("task_id", id.to_string()),
                    ("current_etag", current_etag),
                    ("current_status", current_status.to_string()),
                ],
            ),
            Error::Contended { .. } | Error::RequestIdContended { .. } => Status::aborted(message),
            Error::Backlogged { task_id, .. } => with_info(
                Code::Unavailable,
                message,
                "EVENTS_BACKLOGGED",
                [("task_id", task_id.to_string())],
            ),
            Error::RequestIdReused {
                request_id,
                task_id,
            } => with_info(
                Code::InvalidArgument,
                message,
                "REQUEST_ID_REUSED",
                [("request_id", request_id.to_string()), ("task_id", task_id)],
            ),
            Error::Unavailable {
                task_id, landed, ..
            } => {
                let reason = match landed {
                    Landed::Maybe => "OUTCOME_UNKNOWN",
                    Landed::No => "SIDECAR_UNAVAILABLE",
                };
                let metadata = task_id.map(|id| ("task_id", id.to_string()));
                with_info(Code::Unavailable, message, reason, metadata)
            }
            Error::Internal(source) => internal(source.as_ref()),
        }
    }
}

/// `code` with `message`, and an ErrorInfo naming `reason` with `metadata`, so that clients
/// can tell the cases apart without reading the message.
fn with_info(
    code: Code,
    message: String,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

/// INTERNAL, for what can only be a bug or a broken dependency: the caller learns nothing of
/// the cause (it may hold state keys or the sidecar's internals) but gets the trace id under
/// which the whole cause chain is logged.
pub(crate) fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    let chain = crate::service::chain(error);
    let trace_id = telemetry::current_trace_id();
    tracing::error!(
        trace_id = trace_id.as_deref().unwrap_or("-"),
        error = %chain,
        "internal error"
    );
    Status::internal(match trace_id {
        Some(id) => format!("internal error; its cause is logged under trace id {id}"),
        None => "internal error; its cause is logged".to_string(),
    })
}

/// INVALID_ARGUMENT naming every broken field and rule.
pub(crate) fn invalid(violations: &Violations) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {violations}"),
        ErrorDetails::with_bad_request(
            violations
                .0
                .iter()
                .map(|v| FieldViolation::new(v.field, v.description.clone()))
                .collect::<Vec<_>>(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TaskId, TaskStatus};

    #[test]
    fn validation_errors_name_the_field() {
        let status: Status = Error::Invalid(Violations::single(
            "title",
            "must be 1 to 200 characters long, got 0",
        ))
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("title"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().unwrap();
        assert_eq!(bad_request.field_violations[0].field, "title");
    }

    #[test]
    fn a_stale_etag_is_aborted_with_the_current_one() {
        let status: Status = Error::StaleEtag {
            id: TaskId::parse("t").unwrap(),
            current_etag: "7".into(),
            current_status: TaskStatus::Completed,
        }
        .into();
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.message().contains("\"7\""), "{}", status.message());
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["current_etag"], "7");
        assert_eq!(info.metadata["current_status"], "completed");
    }
}
