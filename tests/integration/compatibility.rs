//! Wire compatibility with the Python original: a task it stored in Redis (through Dapr) is read
//! and updated here, and what is written back is read by Python again.

use std::process::Command;

use crate::common::{Options, TestApp};
use devstack::{ComponentSet, Stack};
use task_api::proto::task::v1::{self as pb, TaskStatus};

/// What the original stores: `Task.model_dump_json()` of a pydantic model with naive UTC
/// datetimes, saved by Dapr's Redis state store as hash fields `data` and `version`.
const PYTHON_TASK: &str = r#"{"id":"5b0c4d0e-8a57-4a43-9a7e-0d2d0cbe1f3a","title":"Learn Dapr","description":null,"status":"pending","priority":2,"created_at":"2025-01-15T10:30:00","updated_at":"2025-01-15T10:30:00.123456"}"#;
const ID: &str = "5b0c4d0e-8a57-4a43-9a7e-0d2d0cbe1f3a";

#[tokio::test]
async fn a_task_stored_by_the_python_original_is_read_and_updated() {
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let redis = stack.redis().unwrap();
    let key = format!("task-api||task-{ID}");
    redis
        .cli(&["HSET", &key, "data", PYTHON_TASK, "version", "1"])
        .unwrap();

    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let task = client
        .get_task(pb::GetTaskRequest { id: ID.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.title, "Learn Dapr");
    assert_eq!(task.priority, 2);
    assert_eq!(task.description, None);
    assert_eq!(
        task.etag, "0",
        "revision 0: stored by another implementation"
    );
    let created = task.created_at.unwrap();
    assert_eq!(
        (created.seconds, created.nanos),
        (1_736_937_000, 0),
        "a zone-less timestamp is UTC"
    );
    assert_eq!(task.updated_at.unwrap().nanos, 123_456_000);

    let completed = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: ID.into(),
            status: TaskStatus::Completed as i32,
            etag: "0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completed.etag, "1", "task-api's first change");

    let stored = redis.cli(&["HGET", &key, "data"]).unwrap();
    let document: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let keys: Vec<&str> = document
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let original = [
        "id",
        "title",
        "description",
        "status",
        "priority",
        "created_at",
        "updated_at",
    ];
    let mut expected: Vec<&str> = original
        .iter()
        .copied()
        .chain(["revision", "changes"])
        .collect();
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted, expected,
        "the original's fields, plus revision and changes"
    );
    let offsets: Vec<usize> = original
        .iter()
        .chain(&["revision", "changes"])
        .map(|field| stored.find(&format!("\"{field}\":")).unwrap())
        .collect();
    assert!(
        offsets.is_sorted(),
        "the original's fields first, in its order: {stored}"
    );
    assert_eq!(document["revision"], 1, "the first change task-api made");
    assert_eq!(document["status"], "completed");
    assert_eq!(document["description"], serde_json::Value::Null);
    assert_eq!(document["created_at"], "2025-01-15T10:30:00.000000Z");

    // The original reads it back: Python's own ISO parser takes every timestamp written here.
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys,datetime\n\
             t=json.loads(sys.argv[1])\n\
             for f in ('created_at','updated_at'): datetime.datetime.fromisoformat(t[f])\n\
             assert t['status'] in ('pending','in_progress','completed')\n\
             assert isinstance(t['priority'], int)\n\
             print('ok')",
        )
        .arg(&stored)
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
