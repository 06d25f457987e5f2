//! Job events from the Dapr scheduler.
//!
//! task-api schedules no jobs yet (due-date reminders will). A job it does not know is answered
//! NOT_FOUND, which daprd counts as delivered: no retries for a job nobody will ever handle.

use dapr::dapr::proto::runtime::v1::{JobEventRequest, JobEventResponse};
use tonic::Status;

pub fn on_job(request: &JobEventRequest) -> Result<JobEventResponse, Status> {
    tracing::warn!(job = %request.name, method = %request.method, "job event for a job task-api does not schedule");
    Err(Status::not_found(format!(
        "task-api has no handler for job {}",
        crate::domain::text::echo(&request.name)
    )))
}
