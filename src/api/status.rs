//! The one place where errors become gRPC statuses.
//!
//! | Error | Status |
//! |---|---|
//! | invalid field | INVALID_ARGUMENT + google.rpc.BadRequest naming each field |
//! | unknown id | NOT_FOUND |
//! | stale ETag, or contention that outlasted the retries | ABORTED + ErrorInfo with the current ETag |
//! | request_id reused for a different task | INVALID_ARGUMENT + ErrorInfo (`REQUEST_ID_REUSED`) |
//! | sidecar, state store or broker unreachable | UNAVAILABLE + ErrorInfo (`SIDECAR_UNAVAILABLE`, or `OUTCOME_UNKNOWN` with the task id when the change may have been saved) |
//! | anything else (a bug) | INTERNAL with a generic message and the trace id; the cause goes to the log |
//!
//! Through Dapr service invocation these reach HTTP callers as 400, 404, 409, 500 and 503.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::{domain::Violations, service::Error, telemetry};

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
            } => Status::with_error_details(
                Code::Aborted,
                message,
                ErrorDetails::with_error_info(
                    "ETAG_MISMATCH",
                    DOMAIN,
                    HashMap::from([
                        ("task_id".to_string(), id.to_string()),
                        ("current_etag".to_string(), current_etag),
                        ("current_status".to_string(), current_status.to_string()),
                    ]),
                ),
            ),
            Error::Contended { .. } => Status::aborted(message),
            Error::RequestIdReused {
                request_id,
                task_id,
            } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_error_info(
                    "REQUEST_ID_REUSED",
                    DOMAIN,
                    HashMap::from([
                        ("request_id".to_string(), request_id.to_string()),
                        ("task_id".to_string(), task_id),
                    ]),
                ),
            ),
            Error::Unavailable {
                task_id,
                may_have_landed,
                ..
            } => {
                let reason = if may_have_landed {
                    "OUTCOME_UNKNOWN"
                } else {
                    "SIDECAR_UNAVAILABLE"
                };
                let metadata = task_id
                    .map(|id| HashMap::from([("task_id".to_string(), id.to_string())]))
                    .unwrap_or_default();
                Status::with_error_details(
                    Code::Unavailable,
                    message,
                    ErrorDetails::with_error_info(reason, DOMAIN, metadata),
                )
            }
            Error::Internal(source) => internal(&source),
        }
    }
}

/// INTERNAL, for what can only be a bug or a broken dependency: the caller learns nothing of
/// the cause (it may hold state keys or the sidecar's internals) but gets the trace id under
/// which the whole cause chain is logged.
pub fn internal(error: &(dyn std::error::Error + 'static)) -> Status {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
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
pub fn invalid(violations: &Violations) -> Status {
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
