//! Due dates and reminders on the Dapr Jobs API: the real scheduler, daprd, Redis.
//!
//! Each test counts what it sees on `task-events` (an auditor app subscribed through its own
//! sidecar) and what notification-service stored, per task and per type.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use crate::common::{BinaryApp, Client, EventProbe, Options, TestApp, WithHeader, eventually};
use chrono::{DateTime, Utc};
use dapr::dapr::proto::runtime::v1::{self as rt, app_callback_client::AppCallbackClient};
use devstack::{ComponentSet, Sidecar, Stack};
use task_api::{
    domain::time,
    proto::{
        notification::v1::ListNotificationsRequest,
        task::v1::{self as pb, task_service_client::TaskServiceClient},
    },
};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

/// A time as the proto carries it.
fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Redis for state and broker, and the scheduler.
async fn stack() -> Stack {
    Stack::builder()
        .components(ComponentSet::Redis)
        .scheduler(true)
        .start()
        .await
        .unwrap()
}

fn after(duration: Duration) -> DateTime<Utc> {
    time::now() + chrono::Duration::from_std(duration).unwrap()
}

/// An app on `task-events` that records every event with when it arrived.
async fn auditor(stack: &Stack) -> (EventProbe, Sidecar) {
    let probe = EventProbe::start("pubsub", &["task-events"]).await;
    let sidecar = stack
        .sidecar("auditor")
        .unwrap()
        .app_port(probe.port)
        .start()
        .await
        .unwrap();
    (probe, sidecar)
}

/// One event the auditor received.
#[derive(Debug)]
struct SeenEvent {
    event_type: String,
    arrived: SystemTime,
    /// The event's `timestamp`: when it happened (for an alarm, when it fired).
    stamped: DateTime<Utc>,
}

/// What the auditor has seen so far, per task, in arrival order.
#[derive(Default)]
struct Seen(HashMap<String, Vec<SeenEvent>>);

impl Seen {
    fn take(&mut self, probe: &mut EventProbe) {
        for (event, arrived) in probe.drain() {
            let json: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
            let task = json["task_id"].as_str().unwrap().to_string();
            self.0.entry(task).or_default().push(SeenEvent {
                event_type: json["event_type"].as_str().unwrap().to_string(),
                arrived,
                stamped: time::parse(json["timestamp"].as_str().unwrap()).unwrap(),
            });
        }
    }

    fn events<'a>(&'a self, task: &str, kind: &'a str) -> impl Iterator<Item = &'a SeenEvent> {
        self.0
            .get(task)
            .into_iter()
            .flatten()
            .filter(move |e| e.event_type == kind)
    }

    /// When `task`'s `kind` events arrived.
    fn of(&self, task: &str, kind: &str) -> Vec<SystemTime> {
        self.events(task, kind).map(|e| e.arrived).collect()
    }

    /// When `task`'s `kind` events say they happened.
    fn stamped(&self, task: &str, kind: &str) -> Vec<DateTime<Utc>> {
        self.events(task, kind).map(|e| e.stamped).collect()
    }
}

/// The task as task-api has it now.
async fn get(client: &mut Client, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn create_due(
    client: &mut Client,
    title: &str,
    due_at: DateTime<Utc>,
    remind_at: Option<DateTime<Utc>>,
) -> pb::Task {
    client
        .create_task(pb::CreateTaskRequest {
            title: title.into(),
            due_at: Some(timestamp(due_at)),
            remind_at: remind_at.map(timestamp),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn set_status(client: &mut Client, id: &str, status: pb::TaskStatus) {
    client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: id.into(),
            status: status as i32,
            etag: String::new(),
        })
        .await
        .unwrap();
}

/// Notifications of `kind` notification-service stored for `task`.
async fn notified(notifications: &TestApp, task: &str, kind: &str) -> usize {
    notifications
        .notifications_client()
        .await
        .list_notifications(ListNotificationsRequest {
            task_id: task.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notifications
        .iter()
        .filter(|n| n.r#type == kind)
        .count()
}

/// Watches until `until`, then once more after `settle` (nothing more may arrive).
async fn watch(probe: &mut EventProbe, seen: &mut Seen, until: Instant, settle: Duration) {
    while Instant::now() < until {
        // Poll interval of a loop with a deadline, not synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.take(probe);
    }
    // A quiet period for the negative check (no second announcement), not synchronisation:
    // anything that arrives in it fails the test.
    tokio::time::sleep(settle).await;
    seen.take(probe);
}

#[tokio::test]
async fn a_reminder_then_the_due_date_fire_once_each_and_are_notified() {
    let stack = stack().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let (mut probe, _auditor) = auditor(&stack).await;
    let mut client = app.client().await;

    let remind_at = after(Duration::from_secs(2));
    let due_at = after(Duration::from_secs(4));
    let task = create_due(&mut client, "file the report", due_at, Some(remind_at)).await;
    assert_eq!(task.due_at, Some(timestamp(due_at)));
    assert_eq!(task.remind_at, Some(timestamp(remind_at)));

    let mut seen = Seen::default();
    watch(
        &mut probe,
        &mut seen,
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .await;
    let reminders = seen.of(&task.id, "task.reminder");
    let dues = seen.of(&task.id, "task.due");
    assert_eq!((reminders.len(), dues.len()), (1, 1), "{:?}", seen.0);
    assert!(reminders[0] < dues[0], "the reminder comes first");
    let due_seen: DateTime<Utc> = dues[0].into();
    assert!(due_seen >= due_at, "not before its time");

    eventually(Duration::from_secs(15), || async {
        (notified(&notifications, &task.id, "task_due").await == 1
            && notified(&notifications, &task.id, "task_reminder").await == 1)
            .then_some(())
    })
    .await;
    // Announcing changed the task (a new revision), nothing else.
    let now = get(&mut client, &task.id).await;
    assert_eq!(now.etag, "3", "created, reminded, due");
    assert_eq!(now.due_at, task.due_at);
    // Overdue now, until completed.
    let overdue = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            client
                .list_tasks(pb::ListTasksRequest {
                    overdue: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tasks
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(overdue(&mut client).await, std::slice::from_ref(&task.id));
    set_status(&mut client, &task.id, pb::TaskStatus::Completed).await;
    assert!(overdue(&mut client).await.is_empty());
}

#[tokio::test]
async fn moving_completing_deleting_and_reopening_reschedule_or_cancel() {
    let stack = stack().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let (mut probe, _auditor) = auditor(&stack).await;
    let mut client = app.client().await;
    let due_at = after(Duration::from_secs(3));

    let moved = create_due(&mut client, "moved", due_at, None).await;
    let later = after(Duration::from_secs(6));
    client
        .update_task(pb::UpdateTaskRequest {
            id: moved.id.clone(),
            due_at: Some(timestamp(later)),
            ..Default::default()
        })
        .await
        .unwrap();
    let completed = create_due(&mut client, "completed", due_at, None).await;
    set_status(&mut client, &completed.id, pb::TaskStatus::Completed).await;
    let deleted = create_due(&mut client, "deleted", due_at, None).await;
    client
        .delete_task(pb::DeleteTaskRequest {
            id: deleted.id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let reopened = create_due(&mut client, "reopened", due_at, None).await;
    set_status(&mut client, &reopened.id, pb::TaskStatus::Completed).await;
    set_status(&mut client, &reopened.id, pb::TaskStatus::Pending).await;
    let cleared = create_due(&mut client, "cleared", due_at, None).await;
    client
        .update_task(pb::UpdateTaskRequest {
            id: cleared.id.clone(),
            clear_due_at: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let mut seen = Seen::default();
    watch(
        &mut probe,
        &mut seen,
        Instant::now() + Duration::from_secs(9),
        Duration::from_secs(2),
    )
    .await;
    let dues = |task: &pb::Task| seen.of(&task.id, "task.due");
    assert_eq!(dues(&moved).len(), 1, "moved: fires once, at the new time");
    let moved_seen: DateTime<Utc> = dues(&moved)[0].into();
    assert!(moved_seen >= later, "not at the old time");
    assert!(dues(&completed).is_empty(), "completed: cancelled");
    assert!(dues(&deleted).is_empty(), "deleted: cancelled");
    assert!(dues(&cleared).is_empty(), "cleared: cancelled");
    assert_eq!(dues(&reopened).len(), 1, "reopened: scheduled again");
    for (task, expected) in [(&moved, 1), (&completed, 0), (&deleted, 0), (&reopened, 1)] {
        eventually(Duration::from_secs(10), || async {
            (notified(&notifications, &task.id, "task_due").await == expected).then_some(())
        })
        .await;
    }
    // Cancelled jobs are gone from the scheduler, not just ignored when they fire.
    let mut dapr = dapr::dapr::proto::runtime::v1::dapr_client::DaprClient::new(
        Channel::from_shared(format!("http://127.0.0.1:{}", app.sidecar.grpc_port()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for task in [&completed, &deleted, &cleared] {
        let name = format!("task-{}-due", task.id);
        let status = dapr
            .get_job(rt::GetJobRequest { name: name.clone() })
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok, "{name}");
    }
}

#[tokio::test]
async fn invalid_deadlines_are_refused_with_the_field_named() {
    let stack = Stack::builder().scheduler(true).start().await.unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    let mut client = app.client().await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.message().to_string()
    };
    let past = client
        .create_task(pb::CreateTaskRequest {
            title: "late".into(),
            due_at: Some(timestamp(
                after(Duration::ZERO) - chrono::Duration::minutes(1),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(past).contains("due_at: must be in the future"));
    let due = after(Duration::from_secs(600));
    let reminder_after = client
        .create_task(pb::CreateTaskRequest {
            title: "backwards".into(),
            due_at: Some(timestamp(due)),
            remind_at: Some(timestamp(due + chrono::Duration::minutes(1))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(reminder_after).contains("remind_at: must be before due_at"));
    let reminder_alone = client
        .create_task(pb::CreateTaskRequest {
            title: "no due".into(),
            remind_at: Some(timestamp(due)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(reminder_alone).contains("remind_at: needs a due date"));
    let nanos = client
        .create_task(pb::CreateTaskRequest {
            title: "bad time".into(),
            due_at: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -5,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(nanos).contains("due_at: is not a valid time"));
    // An update is checked against the task's current due date.
    let task = create_due(&mut client, "ok", due, None).await;
    let late_reminder = client
        .update_task(pb::UpdateTaskRequest {
            id: task.id.clone(),
            remind_at: Some(timestamp(due + chrono::Duration::minutes(5))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(late_reminder).contains("remind_at: must be before due_at"));
    let both = client
        .update_task(pb::UpdateTaskRequest {
            id: task.id.clone(),
            due_at: Some(timestamp(due)),
            clear_due_at: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(field(both).contains("cannot be set together with clear_due_at"));
}

#[tokio::test]
async fn stale_replayed_and_unauthenticated_jobs_announce_nothing() {
    let stack = stack().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let (mut probe, _auditor) = auditor(&stack).await;
    let mut client = app.client().await;
    let due_at = after(Duration::from_secs(2));
    let task = create_due(&mut client, "once", due_at, None).await;
    let mut seen = Seen::default();
    watch(
        &mut probe,
        &mut seen,
        Instant::now() + Duration::from_secs(5),
        Duration::ZERO,
    )
    .await;
    assert_eq!(seen.of(&task.id, "task.due").len(), 1);

    let job = |at: DateTime<Utc>| rt::JobEventRequest {
        name: format!("task-{}-due", task.id),
        method: format!("job/task-{}-due", task.id),
        data: Some(prost_types::Any {
            type_url: "application/json".into(),
            value: serde_json::to_vec(&serde_json::json!({
                "task_id": task.id, "alarm": "due", "at": time::format(at)
            }))
            .unwrap(),
        }),
        ..Default::default()
    };
    let mut callback = AppCallbackClient::new(app.as_its_sidecar().await);
    // Replayed: the same job again, twice.
    for _ in 0..2 {
        callback.on_job_event(job(due_at)).await.unwrap();
    }
    // Stale: a job for a due date the task never had (or no longer has).
    callback
        .on_job_event(job(due_at - chrono::Duration::seconds(30)))
        .await
        .unwrap();
    // Not an alarm job: NOT_FOUND, which daprd counts as delivered.
    let garbage = callback
        .on_job_event(rt::JobEventRequest {
            name: "other".into(),
            data: Some(prost_types::Any {
                type_url: "application/json".into(),
                value: b"{".to_vec(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::NotFound);
    // Without the app token: refused before it reaches the handler.
    let mut stranger =
        AppCallbackClient::new(tonic::service::interceptor::InterceptedService::new(
            app.channel().await,
            WithHeader("dapr-api-token", "not-the-token".into()),
        ));
    let refused = stranger.on_job_event(job(due_at)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut anonymous = AppCallbackClient::new(app.channel().await);
    let refused = anonymous.on_job_event(job(due_at)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    watch(
        &mut probe,
        &mut seen,
        Instant::now(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(seen.of(&task.id, "task.due").len(), 1, "still once");
    eventually(Duration::from_secs(10), || async {
        (notified(&notifications, &task.id, "task_due").await == 1).then_some(())
    })
    .await;
    let task_now = get(&mut client, &task.id).await;
    assert_eq!(task_now.etag, "2", "only the real firing changed it");
}

#[tokio::test]
async fn restarting_task_api_or_the_scheduler_loses_no_alarm() {
    let mut stack = stack().await;
    let notifications = TestApp::notification_service(&stack, Options::default()).await;
    let mut task_api = BinaryApp::start(&stack, "task-api", &[]).await;
    let (mut probe, _auditor) = auditor(&stack).await;
    let client = |app: &BinaryApp| {
        let key = stack.api_key().to_string();
        let port = app.port;
        async move {
            TaskServiceClient::with_interceptor(
                Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
                WithHeader("x-api-key", key),
            )
        }
    };

    // Scheduled, then task-api is killed and started again before the time comes.
    let mut c = client(&task_api).await;
    let first = create_due(
        &mut c,
        "survives a crash",
        after(Duration::from_secs(6)),
        None,
    )
    .await;
    task_api.kill();
    task_api.start_again(&stack).await;

    // Scheduled, then the scheduler restarts (its data kept) before the time comes.
    let mut c = client(&task_api).await;
    let second = create_due(
        &mut c,
        "survives a scheduler restart",
        after(Duration::from_secs(8)),
        None,
    )
    .await;
    stack.scheduler_mut().unwrap().restart().await.unwrap();

    let mut seen = Seen::default();
    watch(
        &mut probe,
        &mut seen,
        Instant::now() + Duration::from_secs(20),
        Duration::from_secs(3),
    )
    .await;
    for task in [&first, &second] {
        assert_eq!(seen.of(&task.id, "task.due").len(), 1, "{}", task.title);
        eventually(Duration::from_secs(15), || async {
            (notified(&notifications, &task.id, "task_due").await == 1).then_some(())
        })
        .await;
    }
}

/// How many tasks share one due second: 1,000 (`DUE_DATES_LOAD` sets another number).
fn load() -> usize {
    std::env::var("DUE_DATES_LOAD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test]
async fn many_tasks_due_in_the_same_second_each_fire_once_within_ten_seconds() {
    const WRITERS: usize = 16;
    let tasks = load();
    let stack = stack().await;
    let (app, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let (mut probe, _auditor) = auditor(&stack).await;
    let client = app.client().await;

    // Far enough ahead for every create to land first (about 40 a second when the machine is
    // busy with other tests; 180 alone); all in the same second.
    let due_at = after(Duration::from_secs(20 + tasks as u64 / 40));
    let due_at = DateTime::from_timestamp(due_at.timestamp(), 0).unwrap();
    let writing = Instant::now();
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        writers.spawn(async move {
            let mut ids = Vec::new();
            for n in (writer..tasks).step_by(WRITERS) {
                let at = due_at + chrono::Duration::milliseconds((n % 1000) as i64);
                ids.push(
                    create_due(&mut client, &format!("due {n}"), at, None)
                        .await
                        .id,
                );
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(written) = writers.join_next().await {
        ids.extend(written.unwrap());
    }
    let written_in = writing.elapsed();
    assert!(
        time::now() < due_at,
        "the creates took too long for this load ({written_in:?})"
    );

    // Watched until every event is in (at most a minute after the due second).
    let mut seen = Seen::default();
    let all_in =
        Instant::now() + (due_at - time::now()).to_std().unwrap() + Duration::from_secs(60);
    while Instant::now() < all_in {
        // Poll interval of a loop with a deadline, not synchronisation.
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.take(&mut probe);
        if ids.iter().all(|id| !seen.of(id, "task.due").is_empty()) {
            break;
        }
    }
    watch(
        &mut probe,
        &mut seen,
        Instant::now(),
        Duration::from_secs(3),
    )
    .await;
    let mut counts: HashMap<usize, usize> = HashMap::new();
    let (mut fired_after, mut arrived_after) = (Duration::ZERO, Duration::ZERO);
    for id in &ids {
        *counts.entry(seen.of(id, "task.due").len()).or_default() += 1;
        for fired in seen.stamped(id, "task.due") {
            fired_after = fired_after.max((fired - due_at).to_std().unwrap_or_default());
        }
        for arrived in seen.of(id, "task.due") {
            let arrived: DateTime<Utc> = arrived.into();
            arrived_after = arrived_after.max((arrived - due_at).to_std().unwrap_or_default());
        }
    }
    println!(
        "{tasks} tasks due in one second: written in {written_in:.1?}; the last fired {fired_after:.1?} and its event arrived {arrived_after:.1?} after that second"
    );
    assert_eq!(
        counts,
        HashMap::from([(1, tasks)]),
        "tasks by how often task.due arrived"
    );
    assert!(
        fired_after <= Duration::from_secs(11),
        "every one fired within 10 s of its due time (the last {fired_after:?} after the second began)"
    );
    // One notification each.
    let mut wrong = Vec::new();
    for id in &ids {
        let count = eventually(Duration::from_secs(30), || async {
            let n = notified(&notifications, id, "task_due").await;
            (n >= 1).then_some(n)
        })
        .await;
        if count != 1 {
            wrong.push((id.clone(), count));
        }
    }
    assert!(wrong.is_empty(), "notified other than once: {wrong:?}");
}
