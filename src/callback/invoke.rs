//! Service invocation into task-api (`OnInvoke`): the task operations for other Dapr apps.
//!
//! HTTP callers (`/v1.0/invoke/task-api/method/<path>` on their sidecar) send JSON; the verb
//! comes in `http_extension`:
//!
//! | Verb and method | Does |
//! |---|---|
//! | `POST tasks` | create: `{"title", "description"?, "priority"?, "request_id"?}` |
//! | `GET tasks?status=&priority=&page_size=&page_token=` | list: `{"tasks": [...], "next_page_token"}` |
//! | `GET tasks/<id>` | get |
//! | `PATCH`/`PUT tasks/<id>` | update: `{"title"?, "description"?, "priority"?, "etag"?}` |
//! | `PUT tasks/<id>/status?status=<s>` (or body `{"status", "etag"?}`) | change status |
//! | `DELETE tasks/<id>?etag=` | delete |
//! | `GET dead-letters` | events task-api could never handle: summaries, the first 512 bytes of each payload |
//! | `GET dead-letters/<event id>` | one of them, with its payload (the first 64 KiB) |
//! | `POST dead-letters/replay` | handle them again; those handled now are removed |
//!
//! A write's ETag may come in the body (`etag`), as `If-Match`, or as `?etag=`; given in several
//! places, the values must agree. Without one a write applies to the current version. gRPC callers (`InvokeService` without an
//! HTTP verb) use the TaskService method names with protobuf payloads: method `CreateTask` with
//! `Any(task.v1.CreateTaskRequest)` answers `Any(task.v1.Task)`, and so on.
//!
//! Errors are gRPC statuses, which daprd turns into 400, 404, 409, 503 for HTTP callers.

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse, http_extension::Verb};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status, metadata::MetadataMap};

use crate::{
    api::{
        convert,
        status::{internal, invalid},
    },
    domain::text::{echo, excerpt},
    domain::{
        NewTask, Priority, RequestId, Task, TaskChanges, TaskStatus, Versioned, Violations, time,
    },
    percent::query_pairs,
    proto::task::v1 as pb,
    service::{EventHandler, ListQuery, Tasks},
};

const JSON: &str = "application/json";
const TYPE_PREFIX: &str = "type.googleapis.com/";

/// Routes one invocation.
pub async fn on_invoke(
    tasks: &Tasks,
    events: &EventHandler,
    metadata: &MetadataMap,
    request: InvokeRequest,
) -> Result<InvokeResponse, Status> {
    let verb = request
        .http_extension
        .as_ref()
        .and_then(|ext| Verb::try_from(ext.verb).ok())
        .unwrap_or(Verb::None);
    if verb == Verb::None {
        return rpc(tasks, &request).await;
    }
    let query = request
        .http_extension
        .as_ref()
        .map(|ext| query_pairs(&ext.querystring))
        .unwrap_or_default();
    let body = request
        .data
        .as_ref()
        .map(|any| any.value.as_slice())
        .unwrap_or_default();
    let if_match = if_match(metadata)?;
    let etag_query = param(&query, "etag");
    // The ETag a write is conditioned on; see `precondition`.
    let condition = |in_body: Option<String>| {
        precondition([
            ("etag", in_body.as_deref()),
            ("If-Match", if_match.as_deref()),
            ("?etag=", etag_query),
        ])
    };
    let segments: Vec<&str> = request.method.trim_matches('/').split('/').collect();
    let not_allowed = || {
        Status::unimplemented(format!(
            "method {} does not support {}",
            echo(&request.method),
            verb.as_str_name()
        ))
    };

    match segments.as_slice() {
        ["tasks"] => match verb {
            Verb::Post => {
                let body: CreateBody = json_body(body)?;
                let new = NewTask::parse(&body.title, body.description.as_deref(), body.priority)
                    .map_err(|v| invalid(&v))?;
                let request_id = RequestId::parse(body.request_id.as_deref().unwrap_or(""))
                    .map_err(|v| invalid(&v.into()))?;
                json_response(&TaskJson::from(
                    &tasks.create(new, request_id.as_ref()).await?,
                ))
            }
            Verb::Get => {
                let status = match param(&query, "status") {
                    Some(text) => Some(
                        text.parse::<TaskStatus>()
                            .map_err(|e| invalid(&Violations::single("status", e.to_string())))?,
                    ),
                    None => None,
                };
                let priority = match param(&query, "priority") {
                    Some(text) => Some(
                        text.parse::<i64>()
                            .map_err(|_| {
                                Violations::single(
                                    "priority",
                                    format!("{} is not a number", echo(text)),
                                )
                            })
                            .and_then(|p| Priority::parse(p).map_err(Violations::from))
                            .map_err(|v| invalid(&v))?,
                    ),
                    None => None,
                };
                let page_size = match param(&query, "page_size") {
                    Some(text) => text.parse::<i64>().map_err(|_| {
                        invalid(&Violations::single(
                            "page_size",
                            format!("{} is not a number", echo(text)),
                        ))
                    })?,
                    None => 0,
                };
                let list = ListQuery::parse(
                    status,
                    priority,
                    page_size,
                    param(&query, "page_token").unwrap_or(""),
                )
                .map_err(|v| invalid(&v))?;
                let page = tasks.list(&list).await?;
                json_response(&ListJson {
                    tasks: page.tasks.iter().map(TaskJson::from).collect(),
                    next_page_token: page.next_page_token.map(|t| t.encode()).unwrap_or_default(),
                })
            }
            _ => Err(not_allowed()),
        },
        ["tasks", id] => {
            let id = convert::task_id(&percent_id(id)).map_err(|v| invalid(&v))?;
            match verb {
                Verb::Get => json_response(&TaskJson::from(&tasks.get(&id).await?)),
                Verb::Patch | Verb::Put => {
                    let body: UpdateBody = json_body(body)?;
                    let changes = TaskChanges::parse(
                        body.title.as_deref(),
                        body.description.as_deref(),
                        body.priority,
                    )
                    .map_err(|v| invalid(&v))?;
                    if changes.is_empty() {
                        return Err(invalid(&Violations::single(
                            "title",
                            "nothing to update: set at least one of title, description, priority",
                        )));
                    }
                    let etag = condition(body.etag)?;
                    let task = tasks.update(&id, &changes, etag.as_deref()).await?;
                    json_response(&TaskJson::from(&task))
                }
                Verb::Delete => {
                    let etag = condition(None)?;
                    tasks.delete(&id, etag.as_deref()).await?;
                    json_response(&serde_json::json!({}))
                }
                _ => Err(not_allowed()),
            }
        }
        ["tasks", id, "status"] => {
            let id = convert::task_id(&percent_id(id)).map_err(|v| invalid(&v))?;
            if !matches!(verb, Verb::Put | Verb::Post | Verb::Patch) {
                return Err(not_allowed());
            }
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
            let status = text
                .parse::<TaskStatus>()
                .map_err(|e| invalid(&Violations::single("status", e.to_string())))?;
            let etag = condition(body.etag)?;
            let task = tasks.change_status(&id, status, etag.as_deref()).await?;
            json_response(&TaskJson::from(&task))
        }
        ["dead-letters"] if verb == Verb::Get => json_response(&events.dead_letters().await?),
        ["dead-letters", "replay"] if verb == Verb::Get => Err(not_allowed()),
        ["dead-letters", id] if verb == Verb::Get => {
            match events.dead_letter(&percent_id(id)).await? {
                Some(letter) => json_response(&letter),
                None => Err(Status::not_found(format!(
                    "no dead letter has id {}",
                    echo(&percent_id(id))
                ))),
            }
        }
        ["dead-letters", "replay"] if verb == Verb::Post => {
            json_response(&events.replay_dead_letters().await?)
        }
        _ => Err(Status::not_found(format!(
            "task-api has no method {} (verb {}); see the README for the invocation routes",
            echo(&request.method),
            verb.as_str_name()
        ))),
    }
}

/// gRPC-style invocation: TaskService method names with protobuf payloads.
async fn rpc(tasks: &Tasks, request: &InvokeRequest) -> Result<InvokeResponse, Status> {
    let any = request.data.clone().unwrap_or_default();
    match request.method.as_str() {
        "CreateTask" => {
            let message: pb::CreateTaskRequest = decode(&any, "task.v1.CreateTaskRequest")?;
            let (new, request_id) = convert::new_task(&message).map_err(|v| invalid(&v))?;
            proto_response(
                &convert::task(&tasks.create(new, request_id.as_ref()).await?),
                "task.v1.Task",
            )
        }
        "GetTask" => {
            let message: pb::GetTaskRequest = decode(&any, "task.v1.GetTaskRequest")?;
            let id = convert::task_id(&message.id).map_err(|v| invalid(&v))?;
            proto_response(&convert::task(&tasks.get(&id).await?), "task.v1.Task")
        }
        "ListTasks" => {
            let message: pb::ListTasksRequest = decode(&any, "task.v1.ListTasksRequest")?;
            let query = convert::list_query(&message).map_err(|v| invalid(&v))?;
            let page = tasks.list(&query).await?;
            let response = pb::ListTasksResponse {
                tasks: page.tasks.iter().map(convert::task).collect(),
                next_page_token: page.next_page_token.map(|t| t.encode()).unwrap_or_default(),
            };
            proto_response(&response, "task.v1.ListTasksResponse")
        }
        "UpdateTask" => {
            let message: pb::UpdateTaskRequest = decode(&any, "task.v1.UpdateTaskRequest")?;
            let (id, changes) = convert::changes(&message).map_err(|v| invalid(&v))?;
            let task = tasks
                .update(&id, &changes, convert::etag(&message.etag))
                .await?;
            proto_response(&convert::task(&task), "task.v1.Task")
        }
        "UpdateTaskStatus" => {
            let message: pb::UpdateTaskStatusRequest =
                decode(&any, "task.v1.UpdateTaskStatusRequest")?;
            let id = convert::task_id(&message.id).map_err(|v| invalid(&v))?;
            let status = convert::target_status(message.status).map_err(|v| invalid(&v))?;
            let task = tasks
                .change_status(&id, status, convert::etag(&message.etag))
                .await?;
            proto_response(&convert::task(&task), "task.v1.Task")
        }
        "DeleteTask" => {
            let message: pb::DeleteTaskRequest = decode(&any, "task.v1.DeleteTaskRequest")?;
            let id = convert::task_id(&message.id).map_err(|v| invalid(&v))?;
            tasks.delete(&id, convert::etag(&message.etag)).await?;
            proto_response(&pb::DeleteTaskResponse {}, "task.v1.DeleteTaskResponse")
        }
        other => Err(Status::new(
            if other.starts_with("tasks") || other == "dead-letters" {
                Code::InvalidArgument
            } else {
                Code::NotFound
            },
            format!(
                "task-api has no gRPC-style method {}: use CreateTask, GetTask, ListTasks, UpdateTask, UpdateTaskStatus or DeleteTask, or call the HTTP routes with an HTTP verb",
                echo(other)
            ),
        )),
    }
}

fn decode<M: Message + Default>(any: &prost_types::Any, name: &str) -> Result<M, Status> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or("");
    if !type_name.is_empty() && type_name != name {
        return Err(Status::invalid_argument(format!(
            "expected a {name} payload, got {}",
            echo(type_name)
        )));
    }
    M::decode(any.value.as_slice()).map_err(|e| {
        Status::invalid_argument(format!(
            "the payload is not a valid {name}: {}",
            excerpt(&e.to_string(), 200)
        ))
    })
}

fn proto_response<M: Message>(message: &M, name: &str) -> Result<InvokeResponse, Status> {
    Ok(InvokeResponse {
        data: Some(prost_types::Any {
            type_url: format!("{TYPE_PREFIX}{name}"),
            value: message.encode_to_vec(),
        }),
        content_type: "application/x-protobuf".into(),
    })
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "the body is not the expected JSON: {}",
            excerpt(&e.to_string(), 200)
        ))
    })
}

/// A JSON answer. The Any carries no type URL, so daprd hands HTTP callers the bytes as
/// `application/json` (with a type URL they would get `application/x-protobuf`).
fn json_response<T: Serialize>(value: &T) -> Result<InvokeResponse, Status> {
    let bytes = serde_json::to_vec(value).map_err(|e| internal(&e))?;
    Ok(InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: bytes,
        }),
        content_type: JSON.into(),
    })
}

/// The `If-Match` header of an HTTP caller. daprd renames standard HTTP headers for gRPC apps
/// (`If-Match` arrives as `dapr-if-match`); a gRPC caller may send `if-match` itself. A weak
/// validator (`W/"2"`) is taken as its ETag; `*` (any current version) conditions nothing.
fn if_match(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata
        .get("dapr-if-match")
        .or_else(|| metadata.get("if-match"))
    else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| {
        invalid(&Violations::single(
            "If-Match",
            "must be an ETag such as \"3\"",
        ))
    })?;
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

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn percent_id(segment: &str) -> String {
    crate::percent::decode(segment)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    description: Option<String>,
    priority: Option<i64>,
    request_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    title: Option<String>,
    description: Option<String>,
    priority: Option<i64>,
    etag: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: Option<String>,
    etag: Option<String>,
}

/// A task as JSON: the original's response shape plus its ETag.
#[derive(Serialize)]
struct TaskJson {
    id: String,
    title: String,
    description: Option<String>,
    status: &'static str,
    priority: u8,
    created_at: String,
    updated_at: String,
    etag: String,
}

impl From<&Versioned<Task>> for TaskJson {
    fn from(task: &Versioned<Task>) -> Self {
        let t = &task.value;
        Self {
            id: t.id.to_string(),
            title: t.title.as_str().to_string(),
            description: t.description.as_ref().map(|d| d.as_str().to_string()),
            status: t.status.as_str(),
            priority: t.priority.value(),
            created_at: time::format(t.created_at),
            updated_at: time::format(t.updated_at),
            etag: task.etag.clone(),
        }
    }
}

#[derive(Serialize)]
struct ListJson {
    tasks: Vec<TaskJson>,
    next_page_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        for (name, value) in pairs {
            metadata.insert(*name, value.parse().unwrap());
        }
        metadata
    }

    #[test]
    fn if_match_is_read_as_daprd_forwards_it() {
        let read = |pairs| if_match(&headers(pairs)).unwrap();
        assert_eq!(read(&[("dapr-if-match", "\"3\"")]).as_deref(), Some("3"));
        assert_eq!(read(&[("if-match", "3")]).as_deref(), Some("3"));
        assert_eq!(read(&[("dapr-if-match", "W/\"4\"")]).as_deref(), Some("4"));
        assert_eq!(read(&[("dapr-if-match", "*")]), None);
        assert_eq!(read(&[]), None);
        let several = if_match(&headers(&[("dapr-if-match", "\"1\", \"2\"")])).unwrap_err();
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
