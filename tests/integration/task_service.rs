//! TaskService through a real daprd, on Redis and on PostgreSQL.

use std::{collections::HashSet, time::Duration};

use crate::common::{EventProbe, Options, TestApp, create, page_through, per_store};
use devstack::{ComponentSet, Stack};
use task_api::proto::task::v1::{self as pb, TaskStatus};
use tonic::Code;
use tonic_types::StatusExt;

async fn stack(components: ComponentSet) -> Stack {
    Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap()
}

async fn crud(components: ComponentSet) {
    let stack = stack(components).await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;

    let created = client
        .create_task(pb::CreateTaskRequest {
            title: "Learn Dapr building blocks".into(),
            description: Some("state, pub/sub, invocation".into()),
            priority: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.title, "Learn Dapr building blocks");
    assert_eq!(created.status, TaskStatus::Pending as i32);
    assert_eq!(created.priority, 2);
    assert!(!created.etag.is_empty(), "a created task carries its ETag");
    assert_eq!(created.created_at, created.updated_at);
    uuid::Uuid::parse_str(&created.id).expect("ids are UUIDs, as in the original");

    let defaulted = create(&mut client, "defaults", None).await;
    assert_eq!(defaulted.priority, 1);
    assert_eq!(defaulted.description, None);

    let got = client
        .get_task(pb::GetTaskRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let updated = client
        .update_task(pb::UpdateTaskRequest {
            id: created.id.clone(),
            priority: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.priority, 5);
    assert_eq!(
        updated.title, created.title,
        "unset fields keep their value"
    );
    assert_eq!(updated.description, created.description);
    assert_ne!(updated.etag, created.etag);

    let cleared = client
        .update_task(pb::UpdateTaskRequest {
            id: created.id.clone(),
            description: Some(String::new()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.description, None, "an empty description removes it");

    let completed = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: created.id.clone(),
            status: TaskStatus::Completed as i32,
            etag: cleared.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completed.status, TaskStatus::Completed as i32);

    client
        .delete_task(pb::DeleteTaskRequest {
            id: created.id.clone(),
            etag: completed.etag.clone(),
        })
        .await
        .unwrap();
    for status in [
        client
            .get_task(pb::GetTaskRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap_err(),
        client
            .delete_task(pb::DeleteTaskRequest {
                id: created.id.clone(),
                etag: String::new(),
            })
            .await
            .unwrap_err(),
        client
            .update_task_status(pb::UpdateTaskStatusRequest {
                id: created.id.clone(),
                status: TaskStatus::Pending as i32,
                etag: String::new(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(&created.id));
    }
}

per_store!(crud: crud_on_redis => Redis, crud_on_postgres => Postgres);

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_field_and_rule() {
    let stack = stack(ComponentSet::Redis).await;
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;

    let cases: Vec<(pb::CreateTaskRequest, &[&str])> = vec![
        (
            pb::CreateTaskRequest {
                title: String::new(),
                ..Default::default()
            },
            &["title"],
        ),
        (
            pb::CreateTaskRequest {
                title: "x".repeat(201),
                ..Default::default()
            },
            &["title"],
        ),
        (
            pb::CreateTaskRequest {
                title: "ok".into(),
                priority: Some(0),
                ..Default::default()
            },
            &["priority"],
        ),
        (
            pb::CreateTaskRequest {
                title: "   ".into(),
                description: Some("d".repeat(2001)),
                priority: Some(6),
                ..Default::default()
            },
            &["title", "description", "priority"],
        ),
    ];
    for (request, fields) in cases {
        let status = client.create_task(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        let violations: Vec<&str> = details
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(violations, fields);
        for field in fields {
            assert!(status.message().contains(field), "{}", status.message());
        }
    }
    let long_title = client
        .create_task(pb::CreateTaskRequest {
            title: "x".repeat(201),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        long_title.message().contains("1 to 200 characters"),
        "{}",
        long_title.message()
    );

    let bad_id = client
        .get_task(pb::GetTaskRequest {
            id: "no/slashes".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let no_status = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: "abc".into(),
            status: 0,
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_status.code(), Code::InvalidArgument);
    assert!(no_status.message().contains("status"));
    let unknown_status = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: "abc".into(),
            status: 42,
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_status.code(), Code::InvalidArgument);
    let nothing_to_update = client
        .update_task(pb::UpdateTaskRequest {
            id: "abc".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(nothing_to_update.code(), Code::InvalidArgument);
    let bad_token = client
        .list_tasks(pb::ListTasksRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().contains("page_token"));
}

async fn stale_etag_is_aborted(components: ComponentSet) {
    let stack = stack(components).await;
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let task = create(&mut client, "contended", None).await;
    let moved = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: task.id.clone(),
            status: TaskStatus::InProgress as i32,
            etag: task.etag.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let stale_update = client
        .update_task(pb::UpdateTaskRequest {
            id: task.id.clone(),
            title: Some("lost".into()),
            etag: task.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale_update.code(), Code::Aborted, "{stale_update:?}");
    assert!(
        stale_update.message().contains(&moved.etag),
        "{}",
        stale_update.message()
    );
    assert!(stale_update.message().contains("in_progress"));
    let info = stale_update
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap();
    assert_eq!(info.reason, "ETAG_MISMATCH");
    assert_eq!(info.metadata["current_etag"], moved.etag);

    let stale_delete = client
        .delete_task(pb::DeleteTaskRequest {
            id: task.id.clone(),
            etag: task.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::Aborted);

    let current = client
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        current.title, "contended",
        "nothing was written by the stale calls"
    );
    assert_eq!(current.etag, moved.etag);
    assert_eq!(
        (task.etag.as_str(), moved.etag.as_str()),
        ("1", "2"),
        "ETags are revisions"
    );

    let malformed = client
        .delete_task(pb::DeleteTaskRequest {
            id: task.id.clone(),
            etag: "W/\"abc\"".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
}

per_store! {
    stale_etag_is_aborted:
    stale_etag_is_aborted_on_redis => Redis,
    stale_etag_is_aborted_on_postgres => Postgres,
}

/// Four writers per task change four different fields at the same moment, without ETags.
/// Each change must survive: a lost update would leave one field at its old value.
async fn concurrent_updates_lose_nothing(components: ComponentSet) {
    let stack = stack(components).await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;
    let mut ids = Vec::new();
    for n in 0..16 {
        ids.push(create(&mut client, &format!("task {n}"), Some(1)).await.id);
    }
    let mut writers = tokio::task::JoinSet::new();
    for id in &ids {
        let requests = [
            (Some("renamed".to_string()), None, None),
            (None, Some("described".to_string()), None),
            (None, None, Some(4)),
        ];
        for (title, description, priority) in requests {
            let mut client = client.clone();
            let id = id.clone();
            writers.spawn(async move {
                client
                    .update_task(pb::UpdateTaskRequest {
                        id,
                        title,
                        description,
                        priority,
                        etag: String::new(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            });
        }
        let mut client = client.clone();
        let id = id.clone();
        writers.spawn(async move {
            client
                .update_task_status(pb::UpdateTaskStatusRequest {
                    id,
                    status: TaskStatus::Completed as i32,
                    etag: String::new(),
                })
                .await
                .map(|_| ())
        });
    }
    let mut writes = 0;
    while let Some(result) = writers.join_next().await {
        result.unwrap().unwrap();
        writes += 1;
    }
    assert_eq!(writes, 64);
    for id in ids {
        let task = client
            .get_task(pb::GetTaskRequest { id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(task.title, "renamed");
        assert_eq!(task.description.as_deref(), Some("described"));
        assert_eq!(task.priority, 4);
        assert_eq!(task.status, TaskStatus::Completed as i32);
    }
}

per_store! {
    concurrent_updates_lose_nothing:
    concurrent_updates_lose_nothing_on_redis => Redis,
    concurrent_updates_lose_nothing_on_postgres => Postgres,
}

/// The call's answer, sent again (up to 5 times, 200 ms apart) while it is UNAVAILABLE.
async fn until_available<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..5 {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                eprintln!("UNAVAILABLE, sent again: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    call().await.unwrap().into_inner()
}

async fn list_filters_and_pages(components: ComponentSet) {
    let stack = stack(components).await;
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;

    // 300 tasks created concurrently, priorities 1 to 5 in turn (so every list is used), every
    // third completed. Each call is sent again on UNAVAILABLE, as the API asks of its clients
    // (a create under its request_id): 300 at once on two cores can outlast a read's deadline.
    let mut creators = tokio::task::JoinSet::new();
    for n in 0..300 {
        let client = client.clone();
        creators.spawn(async move {
            let task = until_available(|| {
                let mut client = client.clone();
                async move {
                    client
                        .create_task(pb::CreateTaskRequest {
                            title: format!("task {n:03}"),
                            priority: Some(n % 5 + 1),
                            request_id: format!("list-{n}"),
                            ..Default::default()
                        })
                        .await
                }
            })
            .await;
            if n % 3 == 0 {
                until_available(|| {
                    let mut client = client.clone();
                    let id = task.id.clone();
                    async move {
                        client
                            .update_task_status(pb::UpdateTaskStatusRequest {
                                id,
                                status: TaskStatus::Completed as i32,
                                etag: String::new(),
                            })
                            .await
                    }
                })
                .await;
            }
            task.id
        });
    }
    let mut all_ids = HashSet::new();
    while let Some(id) = creators.join_next().await {
        all_ids.insert(id.unwrap());
    }

    let listing =
        |status: TaskStatus, priority: Option<i32>, page_size: i32| pb::ListTasksRequest {
            status: status as i32,
            priority,
            page_size,
            ..Default::default()
        };
    let (listed, pages) =
        page_through(&mut client, listing(TaskStatus::Unspecified, None, 40)).await;
    assert_eq!(pages, 8, "300 tasks in pages of 40");
    let listed_ids: HashSet<String> = listed.iter().map(|t| t.id.clone()).collect();
    assert_eq!(listed.len(), 300, "no task repeated");
    assert_eq!(listed_ids, all_ids, "every task listed");
    let order: Vec<(i64, i32, String)> = listed
        .iter()
        .map(|t| {
            let at = t.created_at.unwrap();
            (at.seconds, at.nanos, t.id.clone())
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest first, then by id");

    let (completed, _) = page_through(&mut client, listing(TaskStatus::Completed, None, 7)).await;
    assert_eq!(completed.len(), 100);
    assert!(
        completed
            .iter()
            .all(|t| t.status == TaskStatus::Completed as i32)
    );
    let (pending, _) = page_through(&mut client, listing(TaskStatus::Pending, None, 100)).await;
    assert_eq!(pending.len(), 200);
    let (in_progress, _) =
        page_through(&mut client, listing(TaskStatus::InProgress, None, 10)).await;
    assert!(in_progress.is_empty());
    for priority in 1..=5 {
        let (of_priority, _) = page_through(
            &mut client,
            listing(TaskStatus::Unspecified, Some(priority), 13),
        )
        .await;
        assert_eq!(of_priority.len(), 60, "priority {priority}");
        assert!(of_priority.iter().all(|t| t.priority == priority));
    }
    let (completed_urgent, _) =
        page_through(&mut client, listing(TaskStatus::Completed, Some(5), 7)).await;
    assert_eq!(completed_urgent.len(), 20);
    let mismatched = client
        .list_tasks(pb::ListTasksRequest {
            status: TaskStatus::Completed as i32,
            page_size: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .list_tasks(pb::ListTasksRequest {
            status: TaskStatus::Pending as i32,
            page_token: mismatched.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "a token is for one filter"
    );

    let default_page = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.tasks.len(), 20, "default page size");
    let capped = client
        .list_tasks(pb::ListTasksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.tasks.len(), 100, "page size is capped at 100");

    // A task created while paging shows up on a later page, not in the middle.
    let first = client
        .list_tasks(pb::ListTasksRequest {
            page_size: 150,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let newcomer = create(&mut client, "newcomer", None).await;
    let (rest, _) = page_through(
        &mut client,
        pb::ListTasksRequest {
            page_size: 100,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.tasks.len() + rest.len(), 301);
    assert_eq!(rest.last().unwrap().id, newcomer.id);

    // Deleted tasks leave the list.
    client
        .delete_task(pb::DeleteTaskRequest {
            id: newcomer.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let (after_delete, _) =
        page_through(&mut client, listing(TaskStatus::Unspecified, None, 100)).await;
    assert_eq!(after_delete.len(), 300);
}

per_store! {
    list_filters_and_pages:
    list_filters_and_pages_on_redis => Redis,
    list_filters_and_pages_on_postgres => Postgres,
}

/// A second app subscribed to task-events (Redis streams: each app id is its own consumer
/// group) sees the original's event JSON, field for field, plus the revision, under a CloudEvent
/// id made of the task id and the revision.
#[tokio::test]
async fn events_have_the_originals_shape() {
    let stack = stack(ComponentSet::Redis).await;
    let mut probe = EventProbe::start("pubsub", &["task-events"]).await;
    let _probe_sidecar = stack
        .sidecar("event-probe")
        .unwrap()
        .app_port(probe.port)
        .start()
        .await
        .unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let wait = Duration::from_secs(20);

    let task = create(&mut client, "Watch the events", Some(3)).await;
    let delivered = probe.next(wait).await;
    assert_eq!(
        delivered.id,
        format!("{}.1", task.id),
        "stable CloudEvent id"
    );
    let created: serde_json::Value = serde_json::from_slice(&delivered.data).unwrap();
    let fields: HashSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        HashSet::from([
            "event_type",
            "task_id",
            "title",
            "status",
            "timestamp",
            "revision",
            "signature"
        ])
    );
    assert!(
        created["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("v1.")),
        "signed by task-api: {created}"
    );
    assert_eq!(created["event_type"], "task.created");
    assert_eq!(created["revision"], 1);
    assert_eq!(created["task_id"], task.id.as_str());
    assert_eq!(created["title"], "Watch the events");
    assert_eq!(created["status"], "pending");
    let timestamp = created["timestamp"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok() && timestamp.ends_with('Z'),
        "RFC 3339 UTC: {timestamp}"
    );

    let status_change = |status: TaskStatus| pb::UpdateTaskStatusRequest {
        id: task.id.clone(),
        status: status as i32,
        etag: String::new(),
    };
    client
        .update_task(pb::UpdateTaskRequest {
            id: task.id.clone(),
            title: Some("Watched".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(probe.next_json(wait).await["event_type"], "task.updated");
    client
        .update_task_status(status_change(TaskStatus::InProgress))
        .await
        .unwrap();
    let in_progress = probe.next_json(wait).await;
    assert_eq!(in_progress["event_type"], "task.in_progress");
    assert_eq!(in_progress["status"], "in_progress");
    assert_eq!(in_progress["title"], "Watched");

    // Same status again: nothing changes, nothing is published.
    let before = client
        .get_task(pb::GetTaskRequest {
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let again = client
        .update_task_status(status_change(TaskStatus::InProgress))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, before, "unchanged task, same ETag");
    client
        .update_task_status(status_change(TaskStatus::Completed))
        .await
        .unwrap();
    let completed = probe.next_json(wait).await;
    assert_eq!(
        completed["event_type"], "task.completed",
        "no event for the no-op in between"
    );

    client
        .delete_task(pb::DeleteTaskRequest {
            id: task.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let deleted = probe.next(wait).await;
    assert_eq!(deleted.data_content_type, "application/json");
    assert_eq!(deleted.id, format!("{}.5", task.id));
    let deleted: serde_json::Value = serde_json::from_slice(&deleted.data).unwrap();
    assert_eq!(deleted["event_type"], "task.deleted");
    assert_eq!(deleted["status"], "completed");
    assert_eq!(deleted["revision"], 5);
    probe.expect_none(Duration::from_millis(500)).await;
}

/// With its store down, a change to a task that exists answers UNAVAILABLE (retry), never
/// NOT_FOUND: a client told a task it just deleted is not there takes the delete as done.
/// Each task is touched once, so each request is the first on whatever connection daprd
/// holds to the stopped store.
async fn a_change_while_the_store_is_down_never_finds_the_task_missing(components: ComponentSet) {
    let mut stack = stack(components).await;
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let mut tasks = Vec::new();
    for n in 0..12 {
        tasks.push(create(&mut client, &format!("outage {n}"), None).await);
    }
    match components {
        ComponentSet::Postgres => stack.postgres_mut().unwrap().stop(),
        _ => stack.redis_mut().unwrap().shutdown().unwrap(),
    }
    let mut answers = Vec::new();
    for (n, task) in tasks.iter().enumerate() {
        let id = task.id.clone();
        let answer = match n % 3 {
            0 => client
                .delete_task(pb::DeleteTaskRequest {
                    id,
                    etag: String::new(),
                })
                .await
                .map(|_| ()),
            1 => client
                .update_task(pb::UpdateTaskRequest {
                    id,
                    title: Some("renamed".into()),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            _ => client
                .update_task_status(pb::UpdateTaskStatusRequest {
                    id,
                    status: TaskStatus::Completed as i32,
                    etag: String::new(),
                })
                .await
                .map(|_| ()),
        };
        answers.push(answer.map_err(|status| status.code()));
    }
    let page = client
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map(|page| page.into_inner().tasks.len())
        .map_err(|status| status.code());
    assert!(
        answers.iter().all(|a| *a == Err(Code::Unavailable)),
        "changes while the store is down: {answers:?}"
    );
    assert!(
        page == Err(Code::Unavailable) || page == Ok(tasks.len()),
        "a list while the store is down: {page:?} (of {} tasks)",
        tasks.len()
    );
}

per_store!(
    a_change_while_the_store_is_down_never_finds_the_task_missing:
    a_change_while_the_store_is_down_never_finds_the_task_missing_on_redis => Redis,
    a_change_while_the_store_is_down_never_finds_the_task_missing_on_postgres => Postgres,
);
