//! task.v1 messages to and from domain values.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        NewTask, Priority, RequestId, Task, TaskChanges, TaskId, TaskStatus, Versioned, Violations,
    },
    proto::task::v1 as pb,
    service::ListQuery,
};

pub fn task(task: &Versioned<Task>) -> pb::Task {
    let t = &task.value;
    pb::Task {
        id: t.id.to_string(),
        title: t.title.as_str().to_string(),
        description: t.description.as_ref().map(|d| d.as_str().to_string()),
        status: status(t.status) as i32,
        priority: i32::from(t.priority.value()),
        created_at: Some(timestamp(t.created_at)),
        updated_at: Some(timestamp(t.updated_at)),
        etag: task.etag.clone(),
    }
}

pub fn status(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::InProgress => pb::TaskStatus::InProgress,
        TaskStatus::Completed => pb::TaskStatus::Completed,
    }
}

/// `None` for TASK_STATUS_UNSPECIFIED.
pub fn status_from(field: &'static str, value: i32) -> Result<Option<TaskStatus>, Violations> {
    match pb::TaskStatus::try_from(value) {
        Ok(pb::TaskStatus::Unspecified) => Ok(None),
        Ok(pb::TaskStatus::Pending) => Ok(Some(TaskStatus::Pending)),
        Ok(pb::TaskStatus::InProgress) => Ok(Some(TaskStatus::InProgress)),
        Ok(pb::TaskStatus::Completed) => Ok(Some(TaskStatus::Completed)),
        Err(_) => Err(Violations::single(
            field,
            format!("{value} is not a TaskStatus"),
        )),
    }
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn task_id(id: &str) -> Result<TaskId, Violations> {
    TaskId::parse(id).map_err(Violations::from)
}

/// An ETag field: empty means "none sent".
pub fn etag(etag: &str) -> Option<&str> {
    (!etag.is_empty()).then_some(etag)
}

/// The task to create, and the request id if the caller sent one.
pub fn new_task(
    request: &pb::CreateTaskRequest,
) -> Result<(NewTask, Option<RequestId>), Violations> {
    let new = NewTask::parse(
        &request.title,
        request.description.as_deref(),
        request.priority.map(i64::from),
    );
    let request_id = RequestId::parse(&request.request_id);
    match (new, request_id) {
        (Ok(new), Ok(request_id)) => Ok((new, request_id)),
        (Err(mut violations), Err(violation)) => {
            violations.0.push(violation);
            Err(violations)
        }
        (Err(violations), _) => Err(violations),
        (_, Err(violation)) => Err(violation.into()),
    }
}

pub fn changes(request: &pb::UpdateTaskRequest) -> Result<(TaskId, TaskChanges), Violations> {
    let id = task_id(&request.id);
    let changes = TaskChanges::parse(
        request.title.as_deref(),
        request.description.as_deref(),
        request.priority.map(i64::from),
    );
    match (id, changes) {
        (Ok(id), Ok(changes)) if changes.is_empty() => Err(Violations::single(
            "title",
            format!(
                "nothing to update for task {id}: set at least one of title, description, priority"
            ),
        )),
        (Ok(id), Ok(changes)) => Ok((id, changes)),
        (Err(mut a), Err(b)) => {
            a.0.extend(b.0);
            Err(a)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// The status a task must move to; unspecified is an error here.
pub fn target_status(value: i32) -> Result<TaskStatus, Violations> {
    status_from("status", value)?.ok_or_else(|| {
        Violations::single(
            "status",
            "is required: one of PENDING, IN_PROGRESS, COMPLETED",
        )
    })
}

pub fn list_query(request: &pb::ListTasksRequest) -> Result<ListQuery, Violations> {
    let status = status_from("status", request.status)?;
    let priority = request
        .priority
        .map(|p| Priority::parse(i64::from(p)))
        .transpose()?;
    ListQuery::parse(
        status,
        priority,
        i64::from(request.page_size),
        &request.page_token,
    )
}
