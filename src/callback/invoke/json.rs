//! TaskService's messages in the protobuf JSON mapping, for HTTP callers: field names as in the
//! proto (`due_at`; `dueAt` is read too), enums by name (`TASK_STATUS_COMPLETED`), timestamps as
//! RFC 3339, 64-bit numbers as strings. The mapping is protobuf's own, applied through the
//! descriptors the server reflection serves, so the JSON can never drift from the proto.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::Status;

use crate::{
    domain::text::{echo, excerpt},
    proto,
};

/// The descriptors of task.v1 (and the well-known types it imports).
static POOL: LazyLock<Result<DescriptorPool, prost_reflect::DescriptorError>> =
    LazyLock::new(|| DescriptorPool::decode(proto::TASK_DESCRIPTORS));

fn descriptor(name: &str) -> Result<MessageDescriptor, Status> {
    let pool = POOL
        .as_ref()
        .map_err(|error| crate::api::status::internal(error))?;
    pool.get_message_by_name(name)
        .ok_or_else(|| crate::api::status::internal(&MissingDescriptor(name.to_string())))
}

/// A message the descriptors do not have (a build defect).
#[derive(Debug, thiserror::Error)]
#[error("no descriptor for message {0}")]
struct MissingDescriptor(String);

/// Reads `body` as the JSON of message `name` (`task.v1.CreateTaskRequest`, ...).
pub(super) fn read<M: Message + Default>(name: &str, body: &[u8]) -> Result<M, Status> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let mut json = serde_json::Deserializer::from_slice(body);
    let dynamic = DynamicMessage::deserialize(descriptor(name)?, &mut json)
        .and_then(|message| json.end().map(|()| message))
        .map_err(|error| {
            Status::invalid_argument(format!(
                "the body is not a {} in JSON: {}",
                short(name),
                excerpt(&error.to_string(), 200)
            ))
        })?;
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|error| crate::api::status::internal(&error))
}

/// The JSON of `message`, of type `name`, with every field (defaults included).
pub(super) fn write<M: Message>(name: &str, message: &M) -> Result<Vec<u8>, Status> {
    let dynamic = DynamicMessage::decode(descriptor(name)?, message.encode_to_vec().as_slice())
        .map_err(|error| crate::api::status::internal(&error))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &options)
        .map_err(|error| crate::api::status::internal(&error))?;
    Ok(out.into_inner())
}

fn short(name: &str) -> String {
    echo(name.rsplit('.').next().unwrap_or(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::task::v1 as pb;

    #[test]
    fn requests_read_with_proto_or_json_names_enums_by_name_and_times_in_rfc3339() {
        let request: pb::CreateTaskRequest = read(
            "task.v1.CreateTaskRequest",
            br#"{"title":"t","priority":2,"request_id":"r-1","dueAt":"2030-01-01T09:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(request.title, "t");
        assert_eq!(request.priority, Some(2));
        assert_eq!(request.request_id, "r-1");
        assert_eq!(request.due_at.unwrap().seconds, 1_893_488_400);
        let status: pb::UpdateTaskStatusRequest = read(
            "task.v1.UpdateTaskStatusRequest",
            br#"{"status":"TASK_STATUS_COMPLETED"}"#,
        )
        .unwrap();
        assert_eq!(status.status, pb::TaskStatus::Completed as i32);
        let empty: pb::UpdateTaskStatusRequest =
            read("task.v1.UpdateTaskStatusRequest", b"  ").unwrap();
        assert_eq!(empty.status, 0);
    }

    #[test]
    fn a_body_that_is_not_the_message_is_invalid_argument_naming_it() {
        for body in [
            br#"{"title":5}"#.as_slice(),
            br#"{"nonsense":true}"#,
            b"not json",
            br#"{"title":"t"} trailing"#,
        ] {
            let error =
                read::<pb::CreateTaskRequest>("task.v1.CreateTaskRequest", body).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{body:?}");
            assert!(
                error.message().contains("CreateTaskRequest"),
                "{}",
                error.message()
            );
        }
    }

    #[test]
    fn tasks_are_written_with_proto_field_names_and_every_field() {
        let task = pb::Task {
            id: "t1".into(),
            title: "Learn Dapr".into(),
            status: pb::TaskStatus::InProgress as i32,
            priority: 2,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_736_937_000,
                nanos: 0,
            }),
            etag: "3".into(),
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&write("task.v1.Task", &task).unwrap()).unwrap();
        assert_eq!(json["status"], "TASK_STATUS_IN_PROGRESS");
        assert_eq!(json["created_at"], "2025-01-15T10:30:00Z");
        assert_eq!(json["etag"], "3");
        assert_eq!(json["priority"], 2);
    }
}
