//! Service invocation into task-api (`OnInvoke`): the task operations for other Dapr apps.
//!
//! HTTP callers (`/v1.0/invoke/task-api/method/<path>` on their sidecar) send and get
//! TaskService's messages in the protobuf JSON mapping (see `json`):
//!
//! | Verb and path | Body | Answer |
//! |---|---|---|
//! | `POST tasks` | `CreateTaskRequest` | `Task` |
//! | `GET tasks?status=&priority=&overdue=&page_size=&page_token=` | - | `ListTasksResponse` |
//! | `GET tasks/<id>` | - | `Task` |
//! | `PATCH`/`PUT tasks/<id>` | `UpdateTaskRequest` (its `id` is the path's) | `Task` |
//! | `PUT`/`POST`/`PATCH tasks/<id>/status` | `UpdateTaskStatusRequest`, or `?status=completed` | `Task` |
//! | `DELETE tasks/<id>?etag=` | - | `{}` |
//! | `GET dead-letters` | - | events task-api could never handle: summaries, the first 512 bytes of each payload |
//! | `GET dead-letters/<event id>` | - | one of them, with its payload (the first 64 KiB) |
//! | `POST dead-letters/replay` | - | handle them again; those handled now are removed |
//!
//! A status in a query may be given as the original spelled it (`completed`, `in_progress`) or
//! by its enum name. A write's ETag may come in the body (`etag`), as `If-Match`, or as
//! `?etag=`; given in several places, the values must agree. Without one a write applies to the
//! current version.
//!
//! gRPC-style callers (`InvokeService` without an HTTP verb) use the TaskService method names
//! with protobuf payloads: method `CreateTask` with `Any(task.v1.CreateTaskRequest)` answers
//! `Any(task.v1.Task)`, and so on.
//!
//! Both are a translation only: every task operation is the TaskService handler itself, so the
//! rules, errors and codes are those of TaskService. Errors are gRPC statuses, which daprd turns
//! into 400, 404, 409, 501, 503 for HTTP callers.

mod json;

use dapr_app::{Invocation, Reply, Verb};
use prost::Message;
use serde::Serialize;
use tonic::{Request, Status};

use crate::{
    api::{TaskApi, convert, status::invalid},
    domain::{
        TaskStatus, Violations,
        text::{echo, excerpt},
    },
    percent::{self, query_pairs},
    proto::task::v1::{self as pb, task_service_server::TaskService},
    service::{EventHandler, ports::Ports},
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
pub(super) async fn on_invoke<P: Ports>(
    api: &TaskApi<P>,
    events: &EventHandler<P>,
    call: Invocation,
) -> Result<Reply, Status> {
    let Some(verb) = call.verb else {
        return rpc(api, &call).await;
    };
    match Route::parse(verb, &call.method)? {
        Route::CreateTask => {
            let request: pb::CreateTaskRequest =
                json::read("task.v1.CreateTaskRequest", &call.data)?;
            task_reply(api.create_task(Request::new(request)).await?.into_inner())
        }
        Route::ListTasks => {
            let request = list_request(&query_pairs(&call.query))?;
            let page = api.list_tasks(Request::new(request)).await?.into_inner();
            Ok(Reply::json(json::write(
                "task.v1.ListTasksResponse",
                &page,
            )?))
        }
        Route::GetTask(id) => task_reply(
            api.get_task(Request::new(pb::GetTaskRequest { id }))
                .await?
                .into_inner(),
        ),
        Route::UpdateTask(id) => update_task(api, id, &call).await,
        Route::ChangeStatus(id) => change_status(api, id, &call).await,
        Route::DeleteTask(id) => {
            let request = pb::DeleteTaskRequest {
                id,
                etag: condition(&call, "")?,
            };
            let answer = api.delete_task(Request::new(request)).await?.into_inner();
            Ok(Reply::json(json::write(
                "task.v1.DeleteTaskResponse",
                &answer,
            )?))
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

/// `PATCH`/`PUT tasks/<id>`: the body's changes, under the path's id and the call's condition.
async fn update_task<P: Ports>(
    api: &TaskApi<P>,
    id: String,
    call: &Invocation,
) -> Result<Reply, Status> {
    let mut request: pb::UpdateTaskRequest = json::read("task.v1.UpdateTaskRequest", &call.data)?;
    request.id = path_id(id, &request.id)?;
    request.etag = condition(call, &request.etag)?;
    task_reply(api.update_task(Request::new(request)).await?.into_inner())
}

/// `PUT`/`POST`/`PATCH tasks/<id>/status`: the status from the body or the query, under the
/// path's id and the call's condition.
async fn change_status<P: Ports>(
    api: &TaskApi<P>,
    id: String,
    call: &Invocation,
) -> Result<Reply, Status> {
    let body = with_enum_status(&call.data)?;
    let mut request: pb::UpdateTaskStatusRequest =
        json::read("task.v1.UpdateTaskStatusRequest", &body)?;
    request.id = path_id(id, &request.id)?;
    if let Some(text) = param(&query_pairs(&call.query), "status") {
        request.status = status(text)? as i32;
    }
    request.etag = condition(call, &request.etag)?;
    task_reply(
        api.update_task_status(Request::new(request))
            .await?
            .into_inner(),
    )
}

/// The task id of a route: the path's; a body naming another one is refused.
fn path_id(path: String, body: &str) -> Result<String, Status> {
    if !body.is_empty() && body != path {
        return Err(invalid(&Violations::single(
            "id",
            format!(
                "is {} in the body but {} in the path",
                echo(body),
                echo(&path)
            ),
        )));
    }
    Ok(path)
}

/// The ETag a write is conditioned on, from the body, `If-Match` or `?etag=` (see
/// `precondition`).
fn condition(call: &Invocation, in_body: &str) -> Result<String, Status> {
    let query = query_pairs(&call.query);
    let if_match = if_match(call)?;
    Ok(precondition([
        ("etag", Some(in_body)),
        ("If-Match", if_match.as_deref()),
        ("?etag=", param(&query, "etag")),
    ])?
    .unwrap_or_default())
}

/// A list request from the query string.
fn list_request(query: &[(String, String)]) -> Result<pb::ListTasksRequest, Status> {
    Ok(pb::ListTasksRequest {
        status: match param(query, "status") {
            Some(text) => status(text)? as i32,
            None => pb::TaskStatus::Unspecified as i32,
        },
        priority: param(query, "priority")
            .map(|text| number("priority", text).and_then(priority))
            .transpose()?,
        page_size: param(query, "page_size")
            .map(|text| {
                number("page_size", text).and_then(|n| {
                    i32::try_from(n)
                        .map_err(|_| invalid(&Violations::single("page_size", "is out of range")))
                })
            })
            .transpose()?
            .unwrap_or(0),
        page_token: param(query, "page_token").unwrap_or("").to_string(),
        overdue: param(query, "overdue")
            .map(|text| flag("overdue", text))
            .transpose()?
            .unwrap_or(false),
    })
}

/// gRPC-style invocation: the TaskService method of that name, with its protobuf messages.
async fn rpc<P: Ports>(api: &TaskApi<P>, call: &Invocation) -> Result<Reply, Status> {
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

/// The one JSON answer builder of the HTTP routes.
fn json_reply<T: Serialize>(value: &T) -> Result<Reply, Status> {
    let body = serde_json::to_vec(value).map_err(|e| crate::api::status::internal(&e))?;
    Ok(Reply::json(body))
}

fn task_reply(task: pb::Task) -> Result<Reply, Status> {
    Ok(Reply::json(json::write("task.v1.Task", &task)?))
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

/// A status-change body with its `status` by enum name, as the JSON mapping reads it, when the
/// caller spelled it as the original did (`{"status": "completed"}`).
fn with_enum_status(body: &[u8]) -> Result<Vec<u8>, Status> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) else {
        // Not a JSON object: the JSON mapping says what is wrong with it.
        return Ok(body.to_vec());
    };
    if let Some(serde_json::Value::String(text)) = fields.get("status") {
        let named = status(text)?.as_str_name();
        fields.insert("status".into(), serde_json::Value::from(named));
    }
    serde_json::to_vec(&fields).map_err(|e| crate::api::status::internal(&e))
}

/// A status from a query: as the original spelled it (`in_progress`) or by its enum name.
fn status(text: &str) -> Result<pb::TaskStatus, Status> {
    if let Some(by_name) = pb::TaskStatus::from_str_name(text) {
        return Ok(by_name);
    }
    text.parse::<TaskStatus>()
        .map(convert::status)
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

#[cfg(test)]
mod tests {
    use tonic::{Code, metadata::MetadataMap};

    use super::*;

    #[test]
    fn a_status_body_may_spell_the_status_as_the_original_did() {
        let body = with_enum_status(br#"{"status":"in_progress","etag":"1"}"#).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "TASK_STATUS_IN_PROGRESS");
        assert_eq!(body["etag"], "1");
        let named = with_enum_status(br#"{"status":"TASK_STATUS_COMPLETED"}"#).unwrap();
        assert!(
            String::from_utf8(named)
                .unwrap()
                .contains("TASK_STATUS_COMPLETED")
        );
        let refused = with_enum_status(br#"{"status":"finished"}"#).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(with_enum_status(b"not json").unwrap(), b"not json");
    }

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
}
