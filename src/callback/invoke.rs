//! Service invocation into task-api (`OnInvoke`): the task operations for other Dapr apps.
//!
//! HTTP callers (`/v1.0/invoke/task-api/method/<path>` on their sidecar) send and get JSON:
//!
//! | Verb and path | Does |
//! |---|---|
//! | `POST tasks` | create: `{"title", "description"?, "priority"?, "request_id"?, "due_at"?, "remind_at"?}` |
//! | `GET tasks?status=&priority=&overdue=&page_size=&page_token=` | list: `{"tasks": [...], "next_page_token"}` |
//! | `GET tasks/<id>` | get |
//! | `PATCH`/`PUT tasks/<id>` | update: `{"title"?, "description"?, "priority"?, "due_at"?, "remind_at"?, "etag"?}`; a time of `null` removes it |
//! | `PUT`/`POST`/`PATCH tasks/<id>/status?status=<s>` (or body `{"status", "etag"?}`) | change status |
//! | `DELETE tasks/<id>?etag=` | delete |
//! | `GET dead-letters` | events task-api could never handle: summaries, the first 512 bytes of each payload |
//! | `GET dead-letters/<event id>` | one of them, with its payload (the first 64 KiB) |
//! | `POST dead-letters/replay` | handle them again; those handled now are removed |
//!
//! Times (`due_at`, `remind_at`) are RFC 3339 strings, as `created_at` is.
//!
//! A write's ETag may come in the body (`etag`), as `If-Match`, or as `?etag=`; given in several
//! places, the values must agree. Without one a write applies to the current version.
//!
//! gRPC-style callers (`InvokeService` without an HTTP verb) use the TaskService method names
//! with protobuf payloads: method `CreateTask` with `Any(task.v1.CreateTaskRequest)` answers
//! `Any(task.v1.Task)`, and so on.
//!
//! Both are a translation only: every task operation is the TaskService handler itself, so the
//! rules, errors and codes are those of TaskService. Errors are gRPC statuses, which daprd turns
//! into 400, 404, 409, 501, 503 for HTTP callers.

use dapr_app::{Invocation, Reply, Verb};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::{
    api::{TaskApi, convert, status::invalid},
    domain::{
        TaskStatus, Violations,
        text::{echo, excerpt},
        time,
    },
    percent::{self, query_pairs},
    proto::task::v1::{self as pb, task_service_server::TaskService},
    service::EventHandler,
};

/// What an HTTP invocation asks for, parsed once from its verb and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    CreateTask,
    ListTasks,
    GetTask(String),
    UpdateTask(String),
    ChangeStatus(String),
    DeleteTask(String),
    DeadLetters,
    DeadLetter(String),
    ReplayDeadLetters,
}

impl Route {
    /// NOT_FOUND for a path task-api does not serve, UNIMPLEMENTED for a verb the path does not
    /// take (daprd answers HTTP callers 404 and 501).
    fn parse(verb: Verb, method: &str) -> Result<Self, Status> {
        let segments: Vec<&str> = method.trim_matches('/').split('/').collect();
        let id = |segment: &str| percent::decode(segment);
        let route = match (segments.as_slice(), verb) {
            (["tasks"], Verb::Post) => Route::CreateTask,
            (["tasks"], Verb::Get) => Route::ListTasks,
            (["tasks", task], Verb::Get) => Route::GetTask(id(task)),
            (["tasks", task], Verb::Patch | Verb::Put) => Route::UpdateTask(id(task)),
            (["tasks", task], Verb::Delete) => Route::DeleteTask(id(task)),
            (["tasks", task, "status"], Verb::Put | Verb::Post | Verb::Patch) => {
                Route::ChangeStatus(id(task))
            }
            (["dead-letters"], Verb::Get) => Route::DeadLetters,
            (["dead-letters", "replay"], Verb::Post) => Route::ReplayDeadLetters,
            (["dead-letters", letter], Verb::Get) if *letter != "replay" => {
                Route::DeadLetter(id(letter))
            }
            (["tasks"] | ["tasks", _] | ["tasks", _, "status"] | ["dead-letters", ..], _) => {
                return Err(Status::unimplemented(format!(
                    "method {} does not take {}",
                    echo(method),
                    verb.as_str()
                )));
            }
            _ => {
                return Err(Status::not_found(format!(
                    "task-api has no method {} (verb {}); see the README for the invocation routes",
                    echo(method),
                    verb.as_str()
                )));
            }
        };
        Ok(route)
    }
}

/// Routes one invocation.
pub async fn on_invoke(
    api: &TaskApi,
    events: &EventHandler,
    call: Invocation,
) -> Result<Reply, Status> {
    let Some(verb) = call.verb else {
        return rpc(api, &call).await;
    };
    let route = Route::parse(verb, &call.method)?;
    let query = query_pairs(&call.query);
    let body = call.data.as_slice();
    // The ETag a write is conditioned on; see `precondition`.
    let condition = |in_body: Option<String>| -> Result<String, Status> {
        let if_match = if_match(&call)?;
        Ok(precondition([
            ("etag", in_body.as_deref()),
            ("If-Match", if_match.as_deref()),
            ("?etag=", param(&query, "etag")),
        ])?
        .unwrap_or_default())
    };
    match route {
        Route::CreateTask => {
            let body: CreateBody = json_body(body)?;
            let request = pb::CreateTaskRequest {
                title: body.title,
                description: body.description,
                priority: body.priority.map(priority).transpose()?,
                request_id: body.request_id.unwrap_or_default(),
                due_at: timestamp("due_at", body.due_at.as_deref())?,
                remind_at: timestamp("remind_at", body.remind_at.as_deref())?,
            };
            task_reply(api.create_task(Request::new(request)).await?.into_inner())
        }
        Route::ListTasks => {
            let request = pb::ListTasksRequest {
                status: match param(&query, "status") {
                    Some(text) => convert::status(status(text)?) as i32,
                    None => pb::TaskStatus::Unspecified as i32,
                },
                priority: param(&query, "priority")
                    .map(|text| number("priority", text).and_then(priority))
                    .transpose()?,
                page_size: param(&query, "page_size")
                    .map(|text| {
                        number("page_size", text).and_then(|n| {
                            i32::try_from(n).map_err(|_| {
                                invalid(&Violations::single("page_size", "is out of range"))
                            })
                        })
                    })
                    .transpose()?
                    .unwrap_or(0),
                page_token: param(&query, "page_token").unwrap_or("").to_string(),
                overdue: param(&query, "overdue")
                    .map(|text| flag("overdue", text))
                    .transpose()?
                    .unwrap_or(false),
            };
            let page = api.list_tasks(Request::new(request)).await?.into_inner();
            json_reply(&ListJson {
                tasks: page.tasks.iter().map(TaskJson::from).collect(),
                next_page_token: page.next_page_token,
            })
        }
        Route::GetTask(id) => task_reply(
            api.get_task(Request::new(pb::GetTaskRequest { id }))
                .await?
                .into_inner(),
        ),
        Route::UpdateTask(id) => {
            let body: UpdateBody = json_body(body)?;
            let request = pb::UpdateTaskRequest {
                id,
                title: body.title,
                description: body.description,
                priority: body.priority.map(priority).transpose()?,
                etag: condition(body.etag)?,
                due_at: timestamp("due_at", body.due_at.as_ref().and_then(Option::as_deref))?,
                remind_at: timestamp(
                    "remind_at",
                    body.remind_at.as_ref().and_then(Option::as_deref),
                )?,
                clear_due_at: body.due_at == Some(None),
                clear_remind_at: body.remind_at == Some(None),
            };
            task_reply(api.update_task(Request::new(request)).await?.into_inner())
        }
        Route::ChangeStatus(id) => {
            let body: StatusBody = if body.is_empty() {
                StatusBody::default()
            } else {
                json_body(body)?
            };
            let text = body
                .status
                .or_else(|| param(&query, "status").map(str::to_string))
                .ok_or_else(|| {
                    invalid(&Violations::single(
                        "status",
                        "is required: pending, in_progress or completed",
                    ))
                })?;
            let request = pb::UpdateTaskStatusRequest {
                id,
                status: convert::status(status(&text)?) as i32,
                etag: condition(body.etag)?,
            };
            task_reply(
                api.update_task_status(Request::new(request))
                    .await?
                    .into_inner(),
            )
        }
        Route::DeleteTask(id) => {
            let request = pb::DeleteTaskRequest {
                id,
                etag: condition(None)?,
            };
            api.delete_task(Request::new(request)).await?;
            json_reply(&serde_json::json!({}))
        }
        Route::DeadLetters => json_reply(&events.dead_letters().await?),
        Route::DeadLetter(id) => match events.dead_letter(&id).await? {
            Some(letter) => json_reply(&letter),
            None => Err(Status::not_found(format!(
                "no dead letter has id {}",
                echo(&id)
            ))),
        },
        Route::ReplayDeadLetters => json_reply(&events.replay_dead_letters().await?),
    }
}

/// gRPC-style invocation: the TaskService method of that name, with its protobuf messages.
async fn rpc(api: &TaskApi, call: &Invocation) -> Result<Reply, Status> {
    match call.method.as_str() {
        "CreateTask" => {
            let request = decode(call, "task.v1.CreateTaskRequest")?;
            proto_reply(api.create_task(request).await?.get_ref(), "task.v1.Task")
        }
        "GetTask" => {
            let request = decode(call, "task.v1.GetTaskRequest")?;
            proto_reply(api.get_task(request).await?.get_ref(), "task.v1.Task")
        }
        "ListTasks" => {
            let request = decode(call, "task.v1.ListTasksRequest")?;
            proto_reply(
                api.list_tasks(request).await?.get_ref(),
                "task.v1.ListTasksResponse",
            )
        }
        "UpdateTask" => {
            let request = decode(call, "task.v1.UpdateTaskRequest")?;
            proto_reply(api.update_task(request).await?.get_ref(), "task.v1.Task")
        }
        "UpdateTaskStatus" => {
            let request = decode(call, "task.v1.UpdateTaskStatusRequest")?;
            proto_reply(
                api.update_task_status(request).await?.get_ref(),
                "task.v1.Task",
            )
        }
        "DeleteTask" => {
            let request = decode(call, "task.v1.DeleteTaskRequest")?;
            proto_reply(
                api.delete_task(request).await?.get_ref(),
                "task.v1.DeleteTaskResponse",
            )
        }
        other => Err(Status::new(
            // A route sent without its HTTP verb is a mistake of the caller's, not a typo.
            if other.starts_with("tasks") || other.starts_with("dead-letters") {
                tonic::Code::InvalidArgument
            } else {
                tonic::Code::NotFound
            },
            format!(
                "task-api has no gRPC-style method {}: use CreateTask, GetTask, ListTasks, UpdateTask, UpdateTaskStatus or DeleteTask, or call the HTTP routes with an HTTP verb",
                echo(other)
            ),
        )),
    }
}

/// The invocation's payload as the request message `name`, carrying the caller's metadata.
fn decode<M: Message + Default>(call: &Invocation, name: &str) -> Result<Request<M>, Status> {
    let type_name = call.type_url.rsplit('/').next().unwrap_or("");
    if !type_name.is_empty() && type_name != name {
        return Err(Status::invalid_argument(format!(
            "expected a {name} payload, got {}",
            echo(type_name)
        )));
    }
    let message = M::decode(call.data.as_slice()).map_err(|e| {
        Status::invalid_argument(format!(
            "the payload is not a valid {name}: {}",
            excerpt(&e.to_string(), 200)
        ))
    })?;
    Ok(Request::from_parts(
        call.metadata.clone(),
        Default::default(),
        message,
    ))
}

fn proto_reply<M: Message>(message: &M, name: &str) -> Result<Reply, Status> {
    Ok(Reply::proto(name, message.encode_to_vec()))
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "the body is not the expected JSON: {}",
            excerpt(&e.to_string(), 200)
        ))
    })
}

/// The one JSON answer builder of the HTTP routes.
fn json_reply<T: Serialize>(value: &T) -> Result<Reply, Status> {
    let body = serde_json::to_vec(value).map_err(|e| crate::api::status::internal(&e))?;
    Ok(Reply::json(body))
}

fn task_reply(task: pb::Task) -> Result<Reply, Status> {
    json_reply(&TaskJson::from(&task))
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn number(field: &'static str, text: &str) -> Result<i64, Status> {
    text.parse::<i64>().map_err(|_| {
        invalid(&Violations::single(
            field,
            format!("{} is not a number", echo(text)),
        ))
    })
}

/// A priority from JSON or a query: TaskService's rules apply once it is in range of the field.
fn priority(value: i64) -> Result<i32, Status> {
    i32::try_from(value).map_err(|_| {
        invalid(&Violations::single(
            "priority",
            format!("must be between 1 and 5, got {value}"),
        ))
    })
}

fn status(text: &str) -> Result<TaskStatus, Status> {
    text.parse::<TaskStatus>()
        .map_err(|e| invalid(&Violations::single("status", e.to_string())))
}

/// The `If-Match` header of an HTTP caller (daprd hands it over as `dapr-if-match`). A weak
/// validator (`W/"2"`) is taken as its ETag; `*` (any current version) conditions nothing.
fn if_match(call: &Invocation) -> Result<Option<String>, Status> {
    let Some(value) = call.http_header("if-match") else {
        if call.metadata.contains_key("dapr-if-match") || call.metadata.contains_key("if-match") {
            return Err(invalid(&Violations::single(
                "If-Match",
                "must be an ETag such as \"3\"",
            )));
        }
        return Ok(None);
    };
    let value = value.trim();
    if value == "*" {
        return Ok(None);
    }
    if value.contains(',') {
        return Err(invalid(&Violations::single(
            "If-Match",
            "name one ETag: a task has one current version",
        )));
    }
    let value = value.strip_prefix("W/").unwrap_or(value);
    Ok(Some(value.trim_matches('"').to_string()))
}

/// The one ETag a write is conditioned on. Callers may put it in the body, in `If-Match`, or in
/// the query; where they put it in several places the values must agree, so a caller is never
/// surprised by which one won.
fn precondition<const N: usize>(
    sources: [(&'static str, Option<&str>); N],
) -> Result<Option<String>, Status> {
    let mut found: Option<(&'static str, &str)> = None;
    for (name, value) in sources {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        match found {
            Some((first, seen)) if seen != value => {
                return Err(invalid(&Violations::single(
                    name,
                    format!("disagrees with the ETag in {first}: send one ETag"),
                )));
            }
            Some(_) => {}
            None => found = Some((name, value)),
        }
    }
    Ok(found.map(|(_, value)| value.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    description: Option<String>,
    priority: Option<i64>,
    request_id: Option<String>,
    due_at: Option<String>,
    remind_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    title: Option<String>,
    description: Option<String>,
    priority: Option<i64>,
    etag: Option<String>,
    /// Absent: keep; `null`: remove; a time: set.
    #[serde(default, deserialize_with = "present")]
    due_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    remind_at: Option<Option<String>>,
}

/// A field that is present, `null` or not.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// An optional RFC 3339 time from JSON.
fn timestamp(
    field: &'static str,
    text: Option<&str>,
) -> Result<Option<prost_types::Timestamp>, Status> {
    text.map(|text| {
        time::parse(text).map(convert::timestamp).ok_or_else(|| {
            invalid(&Violations::single(
                field,
                format!("must be an RFC 3339 time, got {}", echo(text)),
            ))
        })
    })
    .transpose()
}

/// A boolean query parameter.
fn flag(field: &'static str, text: &str) -> Result<bool, Status> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(invalid(&Violations::single(
            field,
            format!("must be true or false, got {}", echo(text)),
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: Option<String>,
    etag: Option<String>,
}

/// A task as HTTP callers get it: the original's response shape plus its ETag.
#[derive(Serialize)]
struct TaskJson<'a> {
    id: &'a str,
    title: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    priority: i32,
    created_at: String,
    updated_at: String,
    due_at: Option<String>,
    remind_at: Option<String>,
    etag: &'a str,
}

impl<'a> From<&'a pb::Task> for TaskJson<'a> {
    fn from(task: &'a pb::Task) -> Self {
        let at = |timestamp: Option<&prost_types::Timestamp>| {
            timestamp
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                .map(time::format)
                .unwrap_or_default()
        };
        let status = convert::status_from("status", task.status)
            .ok()
            .flatten()
            .map_or("", TaskStatus::as_str);
        Self {
            id: &task.id,
            title: &task.title,
            description: task.description.as_deref(),
            status,
            priority: task.priority,
            created_at: at(task.created_at.as_ref()),
            updated_at: at(task.updated_at.as_ref()),
            due_at: task.due_at.as_ref().map(|t| at(Some(t))),
            remind_at: task.remind_at.as_ref().map(|t| at(Some(t))),
            etag: &task.etag,
        }
    }
}

#[derive(Serialize)]
struct ListJson<'a> {
    tasks: Vec<TaskJson<'a>>,
    next_page_token: String,
}

#[cfg(test)]
mod tests {
    use tonic::{Code, metadata::MetadataMap};

    use super::*;

    #[test]
    fn routes_are_parsed_once_by_verb_and_path() {
        use Route::*;
        let ok = |verb, method| Route::parse(verb, method).unwrap();
        assert_eq!(ok(Verb::Post, "tasks"), CreateTask);
        assert_eq!(ok(Verb::Get, "/tasks/"), ListTasks);
        assert_eq!(ok(Verb::Get, "tasks/a%2Fb"), GetTask("a/b".into()));
        assert_eq!(ok(Verb::Patch, "tasks/1"), UpdateTask("1".into()));
        assert_eq!(ok(Verb::Put, "tasks/1"), UpdateTask("1".into()));
        assert_eq!(ok(Verb::Delete, "tasks/1"), DeleteTask("1".into()));
        assert_eq!(ok(Verb::Put, "tasks/1/status"), ChangeStatus("1".into()));
        assert_eq!(ok(Verb::Get, "dead-letters"), DeadLetters);
        assert_eq!(ok(Verb::Get, "dead-letters/e1"), DeadLetter("e1".into()));
        assert_eq!(ok(Verb::Post, "dead-letters/replay"), ReplayDeadLetters);
        let code = |verb, method| Route::parse(verb, method).unwrap_err().code();
        assert_eq!(code(Verb::Post, "tasks/1"), Code::Unimplemented);
        assert_eq!(code(Verb::Get, "tasks/1/status"), Code::Unimplemented);
        assert_eq!(code(Verb::Get, "dead-letters/replay"), Code::Unimplemented);
        assert_eq!(code(Verb::Get, "reports"), Code::NotFound);
        assert_eq!(code(Verb::Get, "tasks/1/history"), Code::NotFound);
    }

    fn call(headers: &[(&'static str, &'static str)]) -> Invocation {
        let mut metadata = MetadataMap::new();
        for (name, value) in headers {
            metadata.insert(*name, value.parse().unwrap());
        }
        Invocation {
            metadata,
            ..Default::default()
        }
    }

    #[test]
    fn if_match_is_read_as_daprd_forwards_it() {
        let read = |headers| if_match(&call(headers)).unwrap();
        assert_eq!(read(&[("dapr-if-match", "\"3\"")]).as_deref(), Some("3"));
        assert_eq!(read(&[("if-match", "3")]).as_deref(), Some("3"));
        assert_eq!(read(&[("dapr-if-match", "W/\"4\"")]).as_deref(), Some("4"));
        assert_eq!(read(&[("dapr-if-match", "*")]), None);
        assert_eq!(read(&[]), None);
        let several = if_match(&call(&[("dapr-if-match", "\"1\", \"2\"")])).unwrap_err();
        assert_eq!(several.code(), Code::InvalidArgument);
    }

    #[test]
    fn an_etag_given_twice_must_agree() {
        assert_eq!(
            precondition([
                ("etag", Some("2")),
                ("If-Match", Some("2")),
                ("?etag=", None)
            ])
            .unwrap()
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            precondition([("etag", None), ("If-Match", Some(""))]).unwrap(),
            None
        );
        let error = precondition([("etag", Some("2")), ("If-Match", Some("3"))]).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("If-Match"), "{}", error.message());
    }

    #[test]
    fn update_bodies_tell_a_removed_time_from_an_absent_one() {
        let body: UpdateBody =
            serde_json::from_str(r#"{"due_at": null, "remind_at": "2030-01-01T09:00:00Z"}"#)
                .unwrap();
        assert_eq!(body.due_at, Some(None), "null removes");
        assert_eq!(
            timestamp(
                "remind_at",
                body.remind_at.as_ref().and_then(Option::as_deref)
            )
            .unwrap()
            .map(|t| t.seconds),
            Some(1_893_488_400)
        );
        let body: UpdateBody = serde_json::from_str(r#"{"title": "t"}"#).unwrap();
        assert_eq!(body.due_at, None, "absent keeps");
        let error = timestamp("due_at", Some("tomorrow")).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("due_at"), "{}", error.message());
    }

    #[test]
    fn tasks_keep_the_originals_json_shape() {
        let task = pb::Task {
            id: "t1".into(),
            title: "Learn Dapr".into(),
            description: None,
            status: pb::TaskStatus::InProgress as i32,
            priority: 2,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_736_937_000,
                nanos: 0,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_736_937_000,
                nanos: 5_000,
            }),
            etag: "3".into(),
            due_at: Some(prost_types::Timestamp {
                seconds: 1_737_000_000,
                nanos: 0,
            }),
            remind_at: None,
        };
        let json = serde_json::to_value(TaskJson::from(&task)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "t1", "title": "Learn Dapr", "description": null,
                "status": "in_progress", "priority": 2,
                "created_at": "2025-01-15T10:30:00.000000Z",
                "updated_at": "2025-01-15T10:30:00.000005Z",
                "due_at": "2025-01-16T04:00:00.000000Z", "remind_at": null,
                "etag": "3"
            })
        );
    }
}
