//! Wire compatibility with the Python original: a task it stored in Redis (through Dapr) is read
//! and updated here, and what is written back is read by Python again.

use std::{process::Command, time::Duration};

use crate::common::{Options, TestApp};
use devstack::{ComponentSet, Stack};
use task_api::proto::{
    notification::v1::ListNotificationsRequest,
    task::v1::{self as pb, TaskStatus},
};

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
        task.etag, "1736937000123456",
        "written by the original: its revision is the time of its last update, in µs"
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
            etag: "1736937000123456".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        completed.etag, "1736937000123457",
        "task-api's first change"
    );

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
    let ours = ["due_at", "remind_at", "revision", "unpublished"];
    let mut expected: Vec<&str> = original.iter().copied().chain(ours).collect();
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted, expected,
        "the original's fields, plus the deadline, revision and unpublished changes"
    );
    let offsets: Vec<usize> = original
        .iter()
        .chain(&ours)
        .map(|field| stored.find(&format!("\"{field}\":")).unwrap())
        .collect();
    assert!(
        offsets.is_sorted(),
        "the original's fields first, in its order: {stored}"
    );
    assert_eq!(
        document["revision"], 1_736_937_000_123_457_u64,
        "the first change task-api made"
    );
    assert_eq!(document["due_at"], serde_json::Value::Null, "no due date");
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

/// A document as the original stores it, for a task with these fields.
fn original_document(id: &str, title: &str, status: &str, description: &str) -> String {
    serde_json::json!({
        "id": id,
        "title": title,
        "description": if description.is_empty() { serde_json::Value::Null } else { description.into() },
        "status": status,
        "priority": 3,
        "created_at": "2025-01-15T10:30:00",
        "updated_at": "2025-01-15T10:30:00",
    })
    .to_string()
}

fn listed(tasks: &[pb::Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.id.as_str()).collect()
}

/// Tasks the original stored are listed once task-api reads one, receives the original's event
/// for another, or runs `task-api adopt` for the rest; including tasks the original accepted
/// but callers may not send now (a title of spaces, a description over 2,000 characters).
#[tokio::test]
async fn tasks_the_original_stored_become_listable() {
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let redis = stack.redis().unwrap();
    let long = "d".repeat(2500);
    let originals = [
        (
            "00000000-0000-4000-8000-000000000001",
            "Read by id",
            "pending",
            "",
        ),
        (
            "00000000-0000-4000-8000-000000000002",
            "From its event",
            "completed",
            "",
        ),
        (
            "00000000-0000-4000-8000-000000000003",
            "   ",
            "in_progress",
            long.as_str(),
        ),
        (
            "00000000-0000-4000-8000-000000000004",
            "Adopted",
            "pending",
            "",
        ),
    ];
    for (id, title, status, description) in originals {
        let document = original_document(id, title, status, description);
        redis
            .cli(&[
                "HSET",
                &format!("task-api||task-{id}"),
                "data",
                &document,
                "version",
                "1",
            ])
            .unwrap();
    }
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;
    let all = |client: &mut crate::common::Client| {
        let mut client = client.clone();
        async move {
            client
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .unwrap()
                .into_inner()
                .tasks
        }
    };
    assert!(all(&mut client).await.is_empty(), "nothing indexed yet");

    // Read by id.
    client
        .get_task(pb::GetTaskRequest {
            id: originals[0].0.into(),
        })
        .await
        .unwrap();
    assert_eq!(listed(&all(&mut client).await), [originals[0].0]);

    // The original's event for it, as the original publishes it (no revision): its task is
    // indexed, and, being completed, notified once.
    let mut dapr = dapr::dapr::proto::runtime::v1::dapr_client::DaprClient::new(
        app.sidecar.channel().await.unwrap(),
    );
    dapr.publish_event(dapr::dapr::proto::runtime::v1::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "task-events".into(),
        data: format!(r#"{{"event_type":"task.completed","task_id":"{}","title":"From its event","status":"completed","timestamp":"2025-01-15T10:30:00"}}"#, originals[1].0).into_bytes(),
        data_content_type: "application/json".into(),
        metadata: Default::default(),
    })
    .await
    .unwrap();
    crate::common::wait_until_handled(&stack, &["task-events", "task-events-retry"]).await;
    assert_eq!(
        listed(&all(&mut client).await),
        [originals[0].0, originals[1].0]
    );

    // The rest with `task-api adopt`, fed the keys as `redis-cli --scan` lists them (twice:
    // adopting again changes nothing).
    let keys = redis
        .cli(&["--scan", "--pattern", "task-api||task-*"])
        .unwrap();
    for _ in 0..2 {
        let mut adopt = Command::new(env!("CARGO_BIN_EXE_task-api"))
            .arg("adopt")
            .env_clear()
            .env("DAPR_GRPC_PORT", app.sidecar.grpc_port().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        adopt
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{keys}\nnot a key\n").as_bytes())
            .unwrap();
        let output = adopt.wait_with_output().unwrap();
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "4 tasks listable; 0 ids named no live task; 1 lines skipped"
        );
    }
    let every = all(&mut client).await;
    let mut ids: Vec<&str> = listed(&every);
    ids.sort();
    assert_eq!(ids, originals.map(|o| o.0));
    let spaces = every.iter().find(|t| t.id == originals[2].0).unwrap();
    assert_eq!(spaces.title, "   ");
    assert_eq!(spaces.description.as_deref().map(str::len), Some(2500));
    let in_progress = client
        .list_tasks(pb::ListTasksRequest {
            status: TaskStatus::InProgress as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(&in_progress.tasks), [originals[2].0]);

    // And they update like any other: the one with a title of spaces gets a priority.
    let updated = client
        .update_task(pb::UpdateTaskRequest {
            id: originals[2].0.into(),
            priority: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.title.as_str(), updated.priority), ("   ", 5));
    let of_priority_5 = client
        .list_tasks(pb::ListTasksRequest {
            priority: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(&of_priority_5.tasks), [originals[2].0]);
    let received = notifications
        .notifications_client()
        .await
        .list_notifications(
            task_api::proto::notification::v1::ListNotificationsRequest {
                task_id: originals[1].0.into(),
            },
        )
        .await
        .unwrap()
        .into_inner()
        .notifications;
    assert_eq!(received.len(), 1);
}

/// Lenient reads, strict writes: every kind of task the original could store (its only rules:
/// a title of 1 to 200 characters, a priority of 1 to 5) reads back as stored, lists, and takes
/// an update that keeps what it did not change. Callers may no longer send some of these titles
/// and descriptions; they are kept until a caller replaces them.
#[tokio::test]
async fn every_task_the_original_can_store_reads_lists_and_updates() {
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let redis = stack.redis().unwrap();
    let long_description = "line\u{7}\n".repeat(2_000);
    // (name, title, description, status, priority, timestamp)
    type Case = (
        &'static str,
        String,
        Option<String>,
        &'static str,
        i64,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "whitespace-title",
            "   ".into(),
            None,
            "pending",
            1,
            "2025-01-15T10:30:00",
        ),
        (
            "control-title",
            "a\u{0}b\u{1b}[31m".into(),
            Some("".into()),
            "in_progress",
            5,
            "2025-01-15T10:30:00.5",
        ),
        (
            "invisible-title",
            "\u{200b}\u{200b}".into(),
            None,
            "completed",
            3,
            "2025-01-15T10:30:00.123456",
        ),
        (
            "longest-title",
            "é🦀".repeat(100),
            None,
            "pending",
            2,
            "2025-01-15T10:30:00+00:00",
        ),
        (
            "long-description",
            "Read".into(),
            Some(long_description.clone()),
            "pending",
            4,
            "2025-01-15T10:30:00",
        ),
        (
            "empty-description",
            "Empty".into(),
            Some("".into()),
            "completed",
            1,
            "2025-01-15T10:30:00",
        ),
    ];
    let id = |name: &str| {
        let n = cases.iter().position(|c| c.0 == name).unwrap();
        format!("00000000-0000-4000-8000-{n:0>12}")
    };
    let ids: Vec<String> = cases.iter().map(|c| id(c.0)).collect();
    for (name, title, description, status, priority, timestamp) in &cases {
        let document = serde_json::json!({
            "id": id(name),
            "title": title,
            "description": description,
            "status": status,
            "priority": priority,
            "created_at": timestamp,
            "updated_at": timestamp,
        });
        redis
            .cli(&[
                "HSET",
                &format!("task-api||task-{}", id(name)),
                "data",
                &document.to_string(),
                "version",
                "1",
            ])
            .unwrap();
    }
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    for (name, title, description, status, priority, _) in &cases {
        let task = client
            .get_task(pb::GetTaskRequest { id: id(name) })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .into_inner();
        assert_eq!(&task.title, title, "{name}");
        let expected_description = description.as_deref().filter(|d| !d.is_empty());
        assert_eq!(task.description.as_deref(), expected_description, "{name}");
        assert_eq!(
            TaskStatus::try_from(task.status).unwrap().as_str_name(),
            format!("TASK_STATUS_{}", status.to_uppercase()),
            "{name}"
        );
        assert_eq!(i64::from(task.priority), *priority, "{name}");
    }
    let listed_now = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let mut listed_ids: Vec<String> = listed_now.iter().map(|t| t.id.clone()).collect();
    listed_ids.sort();
    assert_eq!(
        listed_ids, ids,
        "every one was read, so every one is listed"
    );

    for (name, title, description, _, _, _) in &cases {
        let updated = client
            .update_task(pb::UpdateTaskRequest {
                id: id(name),
                priority: Some(if name.len() % 2 == 0 { 4 } else { 2 }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .into_inner();
        assert_eq!(&updated.title, title, "{name}: the title is kept");
        assert_eq!(
            updated.description.as_deref(),
            description.as_deref().filter(|d| !d.is_empty()),
            "{name}: the description is kept"
        );
        let of_priority = client
            .list_tasks(pb::ListTasksRequest {
                priority: Some(updated.priority),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            of_priority.tasks.iter().any(|t| t.id == id(name)),
            "{name}: listed under its new priority"
        );
    }
    // Strict writes: the same title sent by a caller is refused, naming the field.
    let refused = client
        .update_task(pb::UpdateTaskRequest {
            id: id("control-title"),
            title: Some("a\u{0}b".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("title"), "{refused:?}");
}

/// The original rewrites task `id` as it would through Dapr: its own fields only (task-api's
/// revision and unpublished changes gone), `updated_at` stamped with its clock, the Redis
/// version moved on.
fn original_rewrites(redis: &devstack::Redis, id: &str, status: &str) {
    let key = format!("task-api||task-{id}");
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let stored = redis.cli(&["HGET", &key, "data"]).unwrap();
    let before: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let document = serde_json::json!({
        "id": id,
        "title": before["title"],
        "description": before["description"],
        "status": status,
        "priority": before["priority"],
        "created_at": before["created_at"],
        "updated_at": now,
    })
    .to_string();
    redis.cli(&["HSET", &key, "data", &document]).unwrap();
    redis.cli(&["HINCRBY", &key, "version", "1"]).unwrap();
}

/// task-api → the original → task-api on one task, twice: revisions keep growing, every change
/// is published once under an id never used before, every completion is notified once under a
/// key never used before, and an ETag read before a rewrite is stale after it.
#[tokio::test]
async fn history_never_rewinds_when_the_original_rewrites_a_task() {
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let mut probe = crate::common::EventProbe::start("pubsub", &["task-events"]).await;
    let _probe_sidecar = stack
        .sidecar("event-probe")
        .unwrap()
        .app_port(probe.port)
        .start()
        .await
        .unwrap();
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;
    let redis = stack.redis().unwrap();
    let complete = |id: &str, etag: &str| pb::UpdateTaskStatusRequest {
        id: id.into(),
        status: TaskStatus::Completed as i32,
        etag: etag.into(),
    };
    let task = client
        .create_task(pb::CreateTaskRequest {
            title: "Kept by two programs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = task.id.clone();
    let mut etags = vec![task.etag.clone()];
    let done = client
        .update_task_status(complete(&id, &task.etag))
        .await
        .unwrap()
        .into_inner();
    etags.push(done.etag.clone());
    let mut ids = Vec::new();
    // One program at a time: task-api's events are out before the original writes.
    for _ in 0..2 {
        ids.push(probe.next(Duration::from_secs(30)).await.id);
    }
    for round in 0..2 {
        let read_before = client
            .get_task(pb::GetTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .etag;
        original_rewrites(redis, &id, "pending");
        let stale = client
            .update_task(pb::UpdateTaskRequest {
                id: id.clone(),
                title: Some("overwrites the rewrite".into()),
                etag: read_before.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            stale.code(),
            tonic::Code::Aborted,
            "round {round}: {stale:?}"
        );
        let now = client
            .get_task(pb::GetTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            now.status,
            TaskStatus::Pending as i32,
            "the rewrite is seen"
        );
        etags.push(now.etag.clone());
        let done = client
            .update_task_status(complete(&id, &now.etag))
            .await
            .unwrap()
            .into_inner();
        etags.push(done.etag.clone());
        ids.push(probe.next(Duration::from_secs(30)).await.id);
    }
    let revisions: Vec<u64> = etags.iter().map(|e| e.parse().unwrap()).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions only grow: {revisions:?}"
    );
    // Every change task-api made is published once, under an id of its own.
    let ours = [revisions[0], revisions[1], revisions[3], revisions[5]];
    let mut expected: Vec<String> = ours.iter().map(|r| format!("{id}.{r}")).collect();
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected, "each change once, each id new");
    probe.expect_none(Duration::from_secs(3)).await;
    // Three completions, three notifications, three keys.
    let received = crate::common::eventually(Duration::from_secs(30), || async {
        let received = notifications
            .notifications_client()
            .await
            .list_notifications(ListNotificationsRequest {
                task_id: id.clone(),
            })
            .await
            .ok()?
            .into_inner()
            .notifications;
        (received.len() >= 3).then_some(received)
    })
    .await;
    let keys: Vec<String> = received.iter().map(|n| n.id.clone()).collect();
    let expected: Vec<String> = [1, 3, 5]
        .iter()
        .map(|i| format!("{id}.{}", revisions[*i]))
        .collect();
    assert_eq!(
        keys, expected,
        "each completion once, under a key never used before"
    );
}
