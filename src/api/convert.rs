//! task.v1 messages to and from domain values.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        Deadline, DeadlineChange, FieldViolation, NewTask, Priority, RequestId, Task, TaskChanges,
        TaskId, TaskRecord, TaskStatus, Versioned, Violations, time,
    },
    proto::task::v1 as pb,
    service::ListQuery,
};

pub(crate) fn task(task: &Versioned<Task>) -> pb::Task {
    message(&task.value, task.etag.clone())
}

/// The message task-api answers for a stored record (`None` for a deleted task), for programs
/// that answer TaskService calls with task-api's messages (the benchmark's simple app).
pub fn record_message(record: &TaskRecord) -> Option<pb::Task> {
    record.live().map(|task| message(task, record.etag()))
}

fn message(t: &Task, etag: String) -> pb::Task {
    pb::Task {
        id: t.id.to_string(),
        title: t.title.as_str().to_string(),
        description: t.description.as_ref().map(|d| d.as_str().to_string()),
        status: status(t.status) as i32,
        priority: i32::from(t.priority.value()),
        created_at: Some(timestamp(t.created_at)),
        updated_at: Some(timestamp(t.updated_at)),
        etag,
        due_at: t.deadline.due_at.map(timestamp),
        remind_at: t.deadline.remind_at.map(timestamp),
    }
}

pub(crate) fn status(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::InProgress => pb::TaskStatus::InProgress,
        TaskStatus::Completed => pb::TaskStatus::Completed,
    }
}

/// `None` for TASK_STATUS_UNSPECIFIED.
pub(crate) fn status_from(
    field: &'static str,
    value: i32,
) -> Result<Option<TaskStatus>, Violations> {
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

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A Timestamp field as a time; out-of-range seconds or nanos are the caller's error.
pub(crate) fn time_from(
    field: &'static str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, FieldViolation> {
    let Some(value) = value else {
        return Ok(None);
    };
    u32::try_from(value.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        .map(Some)
        .ok_or_else(|| {
            FieldViolation::new(
                field,
                format!(
                    "is not a valid time (seconds {}, nanos {})",
                    value.seconds, value.nanos
                ),
            )
        })
}

pub(crate) fn task_id(id: &str) -> Result<TaskId, Violations> {
    TaskId::parse(id).map_err(Violations::from)
}

/// An ETag field: empty means "none sent".
pub(crate) fn etag(etag: &str) -> Option<&str> {
    (!etag.is_empty()).then_some(etag)
}

/// The task to create, and the request id if the caller sent one.
pub(crate) fn new_task(
    request: &pb::CreateTaskRequest,
) -> Result<(NewTask, Option<RequestId>), Violations> {
    let new = NewTask::parse(
        &request.title,
        request.description.as_deref(),
        request.priority.map(i64::from),
    );
    let mut violations = Violations::default();
    let request_id = violations.check(RequestId::parse(&request.request_id));
    let due_at = violations.check(time_from("due_at", request.due_at.as_ref()));
    let remind_at = violations.check(time_from("remind_at", request.remind_at.as_ref()));
    let deadline = match (due_at, remind_at) {
        (Some(due_at), Some(remind_at)) => {
            match Deadline::parse_new(due_at, remind_at, time::now()) {
                Ok(deadline) => Some(deadline),
                Err(more) => {
                    violations.0.extend(more.0);
                    None
                }
            }
        }
        _ => None,
    };
    match (new, request_id, deadline) {
        (Ok(new), Some(request_id), Some(deadline)) if violations.0.is_empty() => {
            Ok((new.with_deadline(deadline), request_id))
        }
        (Err(mut first), ..) => {
            first.0.extend(violations.0);
            Err(first)
        }
        _ => Err(violations),
    }
}

/// The deadline part of an update: a set time moves it, a `clear_*` flag removes it.
fn deadline_change(request: &pb::UpdateTaskRequest) -> Result<DeadlineChange, Violations> {
    let mut violations = Violations::default();
    let due_at = violations.check(time_from("due_at", request.due_at.as_ref()));
    let remind_at = violations.check(time_from("remind_at", request.remind_at.as_ref()));
    let both = |field: &'static str| {
        FieldViolation::new(field, format!("cannot be set together with clear_{field}"))
    };
    if request.clear_due_at && request.due_at.is_some() {
        violations.0.push(both("due_at"));
    }
    if request.clear_remind_at && request.remind_at.is_some() {
        violations.0.push(both("remind_at"));
    }
    violations.into_result()?;
    let change = |set: Option<Option<DateTime<Utc>>>, clear: bool| match (set.flatten(), clear) {
        (Some(at), _) => Some(Some(at)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    Ok(DeadlineChange {
        due_at: change(due_at, request.clear_due_at),
        remind_at: change(remind_at, request.clear_remind_at),
    })
}

pub(crate) fn changes(
    request: &pb::UpdateTaskRequest,
) -> Result<(TaskId, TaskChanges), Violations> {
    let id = task_id(&request.id);
    let changes = TaskChanges::parse(
        request.title.as_deref(),
        request.description.as_deref(),
        request.priority.map(i64::from),
    )
    .and_then(|changes| Ok(changes.with_deadline(deadline_change(request)?)));
    match (id, changes) {
        (Ok(id), Ok(changes)) if changes.is_empty() => Err(Violations::single(
            "title",
            format!(
                "nothing to update for task {id}: set at least one of title, description, priority, due_at, remind_at, clear_due_at, clear_remind_at"
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
pub(crate) fn target_status(value: i32) -> Result<TaskStatus, Violations> {
    status_from("status", value)?.ok_or_else(|| {
        Violations::single(
            "status",
            "is required: one of PENDING, IN_PROGRESS, COMPLETED",
        )
    })
}

pub(crate) fn list_query(request: &pb::ListTasksRequest) -> Result<ListQuery, Violations> {
    let status = status_from("status", request.status)?;
    let priority = request
        .priority
        .map(|p| Priority::parse(i64::from(p)))
        .transpose()?;
    ListQuery::parse(
        status,
        priority,
        request.overdue,
        i64::from(request.page_size),
        &request.page_token,
    )
}
