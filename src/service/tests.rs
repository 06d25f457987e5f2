//! The use cases end to end over the fakes: every change crashed after each of its side
//! effects, every decision of the relay, every outcome of a notification.

use std::time::Duration;

use chrono::Utc;

use super::{
    Delivery, Error, Outcome, Route,
    fakes::World,
    observer,
    outbox::{OutboxMessage, StagedEvent},
    pacing::Waits,
    ports::{AlarmJob, Message, Topic},
    relay::{self, event_id},
    testing::{Process, after_the_confirmation_window, audit, key, past_the_quarantine},
};
use crate::domain::{
    Alarm, Deadline, DeadlineChange, NewTask, Nonce, Notification, TaskChanges, TaskEvent,
    TaskEventType, TaskId, TaskStatus, time,
};

/// The kinds of change a task goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Rename,
    /// A status change that is not a completion: the task's list changes, its jobs stay.
    Start,
    Complete,
    Delete,
    Announce,
    /// A due date set on a task that had none: a job to schedule.
    SetDue,
    /// A due date cleared: a job to cancel.
    ClearDue,
}

const CHANGES: [Change; 8] = [
    Change::Create,
    Change::Rename,
    Change::Start,
    Change::Complete,
    Change::Delete,
    Change::Announce,
    Change::SetDue,
    Change::ClearDue,
];

fn due_in_an_hour() -> chrono::DateTime<Utc> {
    time::now() + chrono::Duration::hours(1)
}

/// Creates a task with a due date, so completing and deleting it also cancel its job.
async fn try_create_due(process: &Process) -> Result<TaskId, Error> {
    let new = NewTask::parse("with a due date", None, Some(3))
        .unwrap()
        .with_deadline(Deadline::parse_new(Some(due_in_an_hour()), None, time::now()).unwrap());
    Ok(process.tasks.create(new, None).await?.value.id)
}

async fn create_due(process: &Process) -> TaskId {
    try_create_due(process).await.unwrap()
}

/// What exists before the change (nothing for a create, a task without a due date for setting
/// one).
async fn before(process: &Process, world: &World, change: Change) -> Option<TaskId> {
    let id = match change {
        Change::Create => return None,
        Change::SetDue => process.create("without a due date").await,
        _ => create_due(process).await,
    };
    process.deliver(world).await;
    Some(id)
}

async fn apply(process: &Process, change: Change, id: Option<&TaskId>) -> Result<TaskId, Error> {
    let tasks = &process.tasks;
    let id = match (change, id) {
        (Change::Create, _) => return try_create_due(process).await,
        (_, Some(id)) => id.clone(),
        (_, None) => unreachable!("a change of an existing task"),
    };
    match change {
        Change::Rename => {
            let rename = TaskChanges::parse(Some("renamed"), None, None).unwrap();
            tasks.update(&id, &rename, None).await.map(|_| ())
        }
        Change::SetDue => set_due(process, &id, Some(due_in_an_hour())).await,
        Change::ClearDue => set_due(process, &id, None).await,
        Change::Start => tasks
            .change_status(&id, TaskStatus::InProgress, None)
            .await
            .map(|_| ()),
        Change::Complete => tasks
            .change_status(&id, TaskStatus::Completed, None)
            .await
            .map(|_| ()),
        Change::Delete => tasks.delete(&id, None).await,
        Change::Announce => {
            let job = AlarmJob {
                task_id: id.clone(),
                alarm: Alarm::Due,
                at: tasks.get(&id).await?.value.deadline.due_at.unwrap(),
            };
            fire(process, &job).await
        }
        Change::Create => unreachable!(),
    }?;
    Ok(id)
}

/// Sets the due date of `id` (`None`: clears it, and its reminder).
async fn set_due(
    process: &Process,
    id: &TaskId,
    due_at: Option<chrono::DateTime<Utc>>,
) -> Result<(), Error> {
    let deadline = DeadlineChange {
        due_at: Some(due_at),
        remind_at: None,
    };
    let changes = TaskChanges::parse(None, None, None)
        .unwrap()
        .with_deadline(deadline);
    process.tasks.update(id, &changes, None).await.map(|_| ())
}

/// The scheduler delivers a job until the app takes it, then forgets it (a one-shot job).
async fn fire(process: &Process, job: &AlarmJob) -> Result<(), Error> {
    process.scheduler.firing(&job.task_id, job.alarm);
    process.tasks.announce(job).await?;
    process.scheduler.forget(&job.task_id, job.alarm);
    Ok(())
}

/// Jobs still held are delivered again, as the scheduler does after a failure.
async fn fire_what_is_due(process: &Process, world: &World, tasks: &[TaskId]) {
    for id in tasks {
        if let Some(job) = world.scheduler.job(id, Alarm::Due)
            && world.scheduler.was_fired(id, Alarm::Due)
        {
            fire(process, &job).await.unwrap();
        }
    }
}

/// Lets the background work of a process (index removals, staging) run to its end.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The ids of every task the store holds.
fn stored_tasks(world: &World) -> Vec<TaskId> {
    world
        .store
        .keys()
        .into_iter()
        .filter_map(|k| k.strip_prefix("task-").map(str::to_string))
        .filter_map(|id| TaskId::parse(&id).ok())
        .collect()
}

/// Changes that their writers publish themselves (they move no job), made one after another.
const ONE_AFTER_ANOTHER: [Change; 4] =
    [Change::Rename, Change::Start, Change::Rename, Change::Start];

/// What a crash test changes: one change; every kind at once, each to a task of its own (their
/// events staged together); or changes a millisecond apart on a broker whose direct publishes
/// are spaced (their events published together).
#[derive(Debug, Clone, Copy)]
enum Work {
    One(Change),
    AllAtOnce,
    OneAfterAnother,
}

impl Work {
    /// The process that makes the work.
    fn start(self, world: &World) -> Process {
        match self {
            Work::OneAfterAnother => Process::start_paced(world, Waits::GATHERING),
            Work::One(_) | Work::AllAtOnce => Process::start(world),
        }
    }

    fn changes(self) -> Vec<Change> {
        match self {
            Work::One(change) => vec![change],
            Work::AllAtOnce => CHANGES.to_vec(),
            Work::OneAfterAnother => ONE_AFTER_ANOTHER.to_vec(),
        }
    }

    /// What exists before the work: the task each change is made to (`None` for a create).
    async fn before(self, process: &Process, world: &World) -> Vec<Option<TaskId>> {
        let changes = self.changes();
        let mut tasks = Vec::new();
        for change in changes {
            tasks.push(before(process, world, change).await);
        }
        tasks
    }

    /// Makes the changes (all at once, for [`Work::AllAtOnce`]).
    async fn apply(
        self,
        process: &Process,
        tasks: &[Option<TaskId>],
    ) -> Vec<Result<TaskId, Error>> {
        let changes = self.changes();
        if let Work::OneAfterAnother = self {
            let mut results = Vec::new();
            for (change, id) in changes.iter().zip(tasks) {
                results.push(apply(process, *change, id.as_ref()).await);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return results;
        }
        let applied = changes
            .iter()
            .zip(tasks)
            .map(|(change, id)| apply(process, *change, id.as_ref()));
        futures::future::join_all(applied).await
    }

    /// Runs the work crash-free; returns how many side effects it made.
    async fn run_cleanly(self, process: &Process, world: &World) -> usize {
        let tasks = self.before(process, world).await;
        let start = world.faults.side_effects();
        let publishes_before = world.broker.call_sizes(Topic::Events).len();
        for result in self.apply(process, &tasks).await {
            result.unwrap();
        }
        settle().await;
        if let Work::AllAtOnce = self {
            let together = largest_staging(world);
            assert!(
                together > 1,
                "at most {together} event staged in one message"
            );
        }
        if let Work::OneAfterAnother = self {
            // The first publishes at once; those within the spacing after it, together.
            let publishes = world.broker.call_sizes(Topic::Events);
            assert_eq!(
                publishes[publishes_before..],
                [1, 3],
                "events per direct publish"
            );
        }
        world.faults.side_effects() - start
    }
}

/// The most events one message on the outbox topic staged.
fn largest_staging(world: &World) -> usize {
    world
        .broker
        .published(Topic::Outbox)
        .iter()
        .map(|m| match OutboxMessage::from_json(&m.data) {
            Ok(OutboxMessage::Batch(batch)) => batch.len(),
            Ok(OutboxMessage::Staged(_)) => 1,
            Ok(OutboxMessage::Probe) | Err(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Plans a crash after `k` side effects (letting the k+1-th land first if `lands`).
fn crash_after(world: &World, k: usize, lands: bool) {
    if lands {
        world.faults.crash_after_landing(k);
    } else {
        world.faults.crash_after(k);
    }
}

/// Runs `work`, crashing after `k` side effects (letting the k+1-th land first if `lands`),
/// then restarts the process and lets it recover; nothing may be lost, invented, duplicated,
/// resurrected or misfiled, and the jobs must match the tasks.
async fn crash_and_recover(work: Work, k: usize, lands: bool) {
    let world = World::new();
    let first = work.start(&world);
    let tasks = work.before(&first, &world).await;
    crash_after(&world, k, lands);
    let _ = work.apply(&first, &tasks).await;
    settle().await;
    drop(first);
    world.faults.heal();
    let second = Process::start(&world);
    let tasks = stored_tasks(&world);
    fire_what_is_due(&second, &world, &tasks).await;
    second.deliver(&world).await;
    after_the_confirmation_window();
    second.deliver(&world).await;
    let context = format!("{work:?} crashed after {k} side effects (lands: {lands})");
    recovered_cleanly(&world, &second, &tasks, &context).await;
}

/// Nothing lost, invented, duplicated, resurrected or misfiled, and the jobs match the tasks.
async fn recovered_cleanly(world: &World, process: &Process, tasks: &[TaskId], context: &str) {
    audit(world, process, tasks).await.assert_clean(context);
    for id in tasks {
        let record = process
            .tasks
            .records()
            .get(id)
            .await
            .unwrap()
            .unwrap()
            .value;
        let pending = record.pending_alarms();
        for alarm in Alarm::ALL {
            let job = world.scheduler.job(id, alarm).map(|j| (j.alarm, j.at));
            let expected = pending.iter().find(|(a, _)| *a == alarm).copied();
            assert_eq!(job, expected, "{context}: the {alarm} job of {id}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_change_survives_a_crash_after_any_of_its_side_effects() {
    for change in CHANGES {
        let world = World::new();
        let effects = Work::One(change)
            .run_cleanly(&Process::start(&world), &world)
            .await;
        assert!(effects >= 2, "{change:?} makes {effects} side effects");
        for k in 0..=effects {
            crash_and_recover(Work::One(change), k, false).await;
            crash_and_recover(Work::One(change), k, true).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn changes_staged_together_survive_a_crash_after_any_of_their_side_effects() {
    let world = World::new();
    let effects = Work::AllAtOnce
        .run_cleanly(&Process::start(&world), &world)
        .await;
    for k in 0..=effects {
        crash_and_recover(Work::AllAtOnce, k, false).await;
        crash_and_recover(Work::AllAtOnce, k, true).await;
    }
}

#[tokio::test(start_paused = true)]
async fn changes_published_together_survive_a_crash_after_any_of_their_side_effects() {
    let world = World::new();
    let work = Work::OneAfterAnother;
    let effects = work.run_cleanly(&work.start(&world), &world).await;
    for k in 0..=effects {
        crash_and_recover(work, k, false).await;
        crash_and_recover(work, k, true).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_clean_run_publishes_each_change_once_and_notifies_each_completion_once() {
    let world = World::new();
    let process = Process::start(&world);
    let mut ids = Vec::new();
    for change in CHANGES {
        let id = before(&process, &world, change).await;
        ids.push(apply(&process, change, id.as_ref()).await.unwrap());
    }
    process.deliver(&world).await;
    let audit = audit(&world, &process, &stored_tasks(&world)).await;
    audit.assert_clean("clean run");
    assert_eq!(audit.committed, audit.published);
    assert!(audit.committed >= 9, "{audit:?}");
    assert_eq!(
        world.notifier.received().len(),
        2,
        "one completion, one due date"
    );
}

/// Stages a change's event as its writer would, without the write.
fn staged(id: &TaskId, revision: u64, event_type: TaskEventType, age: Duration) -> StagedEvent {
    StagedEvent {
        event: TaskEvent {
            event_type,
            task_id: id.to_string(),
            title: "t".into(),
            status: TaskStatus::Completed,
            timestamp: time::now(),
            revision: Some(revision),
            signature: None,
        },
        nonce: Nonce::random(),
        staged_at: time::now() - chrono::Duration::from_std(age).unwrap(),
        reschedules: false,
        attempt: 0,
        not_before: None,
        grace_until: None,
        traceparent: None,
    }
}

fn data(staged: &StagedEvent) -> Vec<u8> {
    OutboxMessage::Staged(staged.clone()).to_json()
}

/// `data` delivered on the outbox subscription, published just now.
fn outbox_delivery(data: &[u8]) -> Delivery<'_> {
    Delivery {
        id: "s",
        topic: "outbox",
        route: Route::Outbox,
        data,
        data_content_type: "application/json",
        published_at: Some(time::now()),
        traceparent: None,
        partition: None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_relay_decides_each_staged_event_on_its_own() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("decisions").await;
    process.deliver(&world).await;
    // The committed creation, delivered again: published already.
    let record = process
        .tasks
        .records()
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .value;
    let creation = record.unpublished.at(1).copied();
    let young_ghost = staged(&id, 5, TaskEventType::Updated, Duration::ZERO);
    let old_ghost = staged(&id, 5, TaskEventType::Updated, Duration::from_secs(40));
    let loser = staged(&id, 1, TaskEventType::Created, Duration::ZERO);
    let relay = &process.events;
    let batch = [
        data(&young_ghost),
        data(&old_ghost),
        data(&loser),
        b"not json".to_vec(),
    ];
    let deliveries: Vec<Delivery> = batch.iter().map(|d| outbox_delivery(d)).collect();
    let outcomes = relay.handle(&deliveries).await;
    assert_eq!(outcomes[0], Outcome::Success("not decided yet: put off"));
    assert_eq!(outcomes[1], Outcome::Success("the change was never saved"));
    let settled_or_superseded = [
        Outcome::Success("published already"),
        Outcome::Success("published by this process"),
        Outcome::Success("another change took that revision"),
    ];
    assert!(
        settled_or_superseded.contains(&outcomes[2]),
        "{:?}",
        outcomes[2]
    );
    assert!(matches!(outcomes[3], Outcome::Dead(_)), "{:?}", outcomes[3]);
    assert_eq!(
        world.broker.published(Topic::OutboxRetry).len(),
        1,
        "put off"
    );
    assert_eq!(
        world.broker.published(Topic::Events).len(),
        1,
        "only the creation"
    );
    assert!(creation.is_some());
    assert_eq!(process.events.dead_letters().await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_message_of_events_staged_together_answers_for_the_least_settled_of_them() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("together").await;
    let ghost = staged(&id, 5, TaskEventType::Updated, Duration::ZERO);
    let mut bad_id = staged(&id, 6, TaskEventType::Updated, Duration::ZERO);
    bad_id.event.task_id = "not an id".into();
    let together = |events: Vec<StagedEvent>| OutboxMessage::Batch(events).to_json();
    let batches = [
        together(vec![ghost.clone(), ghost.clone()]),
        together(vec![ghost.clone(), bad_id.clone()]),
        br#"{"batch":[{"nonce":"0badc0de"}]}"#.to_vec(),
    ];
    let deliveries: Vec<Delivery> = batches.iter().map(|d| outbox_delivery(d)).collect();
    let outcomes = process.events.handle(&deliveries).await;
    assert_eq!(outcomes[0], Outcome::Success("not decided yet: put off"));
    assert!(
        matches!(&outcomes[1], Outcome::Dead(why) if why.contains("bad task id")),
        "{:?}",
        outcomes[1]
    );
    assert!(matches!(outcomes[2], Outcome::Dead(_)), "{:?}", outcomes[2]);
    // Each undecided event is put off on its own, the creation (staged alone) published.
    assert_eq!(world.broker.published(Topic::OutboxRetry).len(), 3);
    // With the store down, every event waits, and so does each whole message.
    world.faults.take_down("store");
    let outcomes = process.events.handle(&deliveries[..2]).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Retry(_))),
        "{outcomes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_staged_event_is_published_once_however_often_it_is_delivered() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("redelivered").await;
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    assert_eq!(staged.len(), 1);
    let deliveries = vec![outbox_delivery(&staged[0].message.data); 2];
    // Twice in one batch, then again later (a redelivery after a timeout).
    process.events.handle(&deliveries).await;
    process.events.handle(&deliveries[..1]).await;
    let restarted = Process::start(&world);
    restarted.events.handle(&deliveries[..1]).await;
    let ids: Vec<_> = world
        .broker
        .published(Topic::Events)
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![Some(event_id(id.as_str(), 1))]);
}

#[tokio::test(start_paused = true)]
async fn a_change_confirmed_after_any_number_of_later_changes_is_still_published() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("churn").await;
    // 300 changes while no staged event is delivered: far more than any window of history.
    for n in 0..300 {
        let status = if n % 2 == 0 {
            TaskStatus::Completed
        } else {
            TaskStatus::Pending
        };
        process
            .tasks
            .change_status(&id, status, None)
            .await
            .unwrap();
    }
    process.deliver(&world).await;
    let audit = audit(&world, &process, &[id]).await;
    audit.assert_clean("churn");
    assert_eq!(audit.published, 301);
    assert_eq!(world.notifier.received().len(), 150, "each completion once");
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_events_are_far_behind_takes_no_more_changes() {
    let world = World::new();
    let mut process = Process::start_relaying_only(&world);
    process.tasks = process.tasks.with_max_unpublished(40);
    let id = process.create("backlog").await;
    let mut refused = None;
    for n in 0..50 {
        let title = format!("title {n}");
        let rename = TaskChanges::parse(Some(&title), None, None).unwrap();
        if let Err(error) = process.tasks.update(&id, &rename, None).await {
            refused = Some(error);
            break;
        }
    }
    assert!(
        matches!(refused, Some(Error::Backlogged { .. })),
        "{refused:?}"
    );
    process.deliver(&world).await;
    let rename = TaskChanges::parse(Some("after"), None, None).unwrap();
    process.tasks.update(&id, &rename, None).await.unwrap();
    process.deliver(&world).await;
    audit(&world, &process, &[id]).await.assert_clean("backlog");
}

/// A completion event as published to `task-events`.
fn completion(id: &TaskId, revision: Option<u64>, signed: bool) -> TaskEvent {
    let mut event = TaskEvent {
        event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
        task_id: id.to_string(),
        title: "t".into(),
        status: TaskStatus::Completed,
        timestamp: time::now(),
        revision,
        signature: None,
    };
    if signed {
        event.signature = Some(key().sign(&event));
    }
    event
}

async fn on_task_events(process: &Process, route: Route, events: &[TaskEvent]) -> Vec<Outcome> {
    let data: Vec<Vec<u8>> = events.iter().map(TaskEvent::to_json).collect();
    let deliveries: Vec<Delivery> = data
        .iter()
        .map(|d| Delivery {
            id: "event",
            topic: "task-events",
            route,
            data: d,
            data_content_type: "application/json",
            published_at: Some(time::now()),
            traceparent: None,
            partition: None,
        })
        .collect();
    process.events.handle(&deliveries).await
}

#[tokio::test(start_paused = true)]
async fn only_completions_task_api_published_or_the_store_confirms_are_notified() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("forgeries").await;
    process.deliver(&world).await;
    let mut relabelled = completion(&id, Some(1), false);
    relabelled.event_type = TaskEventType::Created;
    relabelled.signature = Some(key().sign(&relabelled));
    relabelled.event_type = TaskEventType::StatusChanged(TaskStatus::Completed);
    let forged = [
        completion(&id, Some(7), false),
        completion(&id, Some(7), true).with_signature_of(b"another token"),
        relabelled,
        // The original's shape, for a task task-api wrote: nothing to confirm it.
        completion(&id, None, false),
    ];
    for outcome in on_task_events(&process, Route::Notify, &forged).await {
        assert_eq!(outcome, Outcome::Success("unconfirmed event ignored"));
    }
    assert!(world.notifier.received().is_empty());
    let real = completion(&id, Some(9), true);
    on_task_events(&process, Route::Notify, &[real.clone(), real.clone()]).await;
    on_task_events(&process, Route::Retry, &[real]).await;
    let received = world.notifier.received();
    assert_eq!(received.len(), 1, "a replay keeps its key: {received:?}");
    assert_eq!(received[0].0, event_id(id.as_str(), 9));
    assert_eq!(received[0].1, Notification::task_completed(id.as_str()));
}

trait Resign {
    fn with_signature_of(self, token: &[u8]) -> Self;
}

impl Resign for TaskEvent {
    fn with_signature_of(mut self, token: &[u8]) -> Self {
        self.signature = None;
        self.signature = Some(crate::domain::EventKey::derive(token).sign(&self));
        self
    }
}

#[tokio::test(start_paused = true)]
async fn a_completion_of_the_original_is_notified_once_if_the_task_confirms_it() {
    let world = World::new();
    let process = Process::start(&world);
    let id = TaskId::parse("written-by-the-original").unwrap();
    let done_at = "2025-01-15T10:31:00.250000";
    let document = format!(
        r#"{{"id":"{id}","title":"x","description":null,"status":"completed","priority":1,"created_at":"2025-01-15T10:30:00","updated_at":"{done_at}"}}"#
    );
    world
        .store
        .put_raw(&super::store::records::task_key(&id), document.as_bytes());
    let mut event = completion(&id, None, false);
    event.timestamp = time::parse(done_at).unwrap();
    let mut other_time = event.clone();
    other_time.timestamp = time::parse("2025-01-15T10:40:00").unwrap();
    let outcomes =
        on_task_events(&process, Route::Notify, &[event.clone(), other_time, event]).await;
    assert_eq!(outcomes[1], Outcome::Success("unconfirmed event ignored"));
    let received = world.notifier.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, format!("{id}.1736937060250000"));
    assert_eq!(
        process.listed().await.get(&id),
        Some(&1),
        "and the task is adopted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_notification_that_fails_moves_to_the_retry_topic_and_is_sent_from_there() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("notification-service down").await;
    world.faults.take_down("notifier");
    let real = completion(&id, Some(2), true);
    let outcomes = on_task_events(&process, Route::Notify, std::slice::from_ref(&real)).await;
    assert_eq!(
        outcomes[0],
        Outcome::Success("notification not delivered yet: moved to the retry topic")
    );
    let outcomes = on_task_events(&process, Route::Retry, std::slice::from_ref(&real)).await;
    assert!(matches!(outcomes[0], Outcome::Retry(_)), "{outcomes:?}");
    world.faults.bring_up("notifier");
    process.deliver(&world).await;
    assert_eq!(world.notifier.received().len(), 1);
    let key = event_id(id.as_str(), 2);
    assert_eq!(world.notifier.attempts(&key), 3, "two failed, one sent");
}

#[tokio::test(start_paused = true)]
async fn completions_delivered_together_are_notified_in_one_call_each_with_its_own_outcome() {
    let world = World::new();
    let process = Process::start(&world);
    let mut events = Vec::new();
    for n in 0..5 {
        let id = process.create(&format!("task {n}")).await;
        events.push(completion(&id, Some(2), true));
    }
    let refused = event_id(&events[3].task_id, 2);
    world.notifier.refuse(&refused);
    let calls = world.notifier.calls();
    let outcomes = on_task_events(&process, Route::Notify, &events).await;
    assert_eq!(world.notifier.calls() - calls, 1, "one call for the batch");
    for (n, outcome) in outcomes.iter().enumerate() {
        if n == 3 {
            assert!(
                matches!(outcome, Outcome::Dead(reason) if reason.contains("refused as invalid")),
                "{outcome:?}"
            );
        } else {
            assert_eq!(*outcome, Outcome::Success("notification sent"));
        }
    }
    let received: Vec<String> = world
        .notifier
        .received()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(received.len(), 4);
    assert!(!received.contains(&refused));
    let letters = process.events.dead_letters().await.unwrap();
    assert_eq!(
        letters.len(),
        1,
        "only the refused one is kept: {letters:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_notifications_that_fails_moves_to_the_retry_topic_together_and_goes_out_from_there()
 {
    let world = World::new();
    let process = Process::start(&world);
    let mut events = Vec::new();
    for n in 0..4 {
        let id = process.create(&format!("task {n}")).await;
        events.push(completion(&id, Some(2), true));
    }
    world.faults.take_down("notifier");
    let outcomes = on_task_events(&process, Route::Notify, &events).await;
    assert!(
        outcomes
            .iter()
            .all(|o| *o
                == Outcome::Success("notification not delivered yet: moved to the retry topic")),
        "{outcomes:?}"
    );
    let moved = world.broker.published(Topic::Retry);
    assert_eq!(moved.len(), 4, "each event moved once");
    world.faults.bring_up("notifier");
    process.deliver(&world).await;
    let received = world.notifier.received();
    assert_eq!(received.len(), 4);
    for event in &events {
        let key = event_id(&event.task_id, 2);
        assert!(received.iter().any(|(k, _)| *k == key), "{key} notified");
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_publish_partly_fails_retries_only_what_failed() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let ids = [process.create("a").await, process.create("b").await];
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    assert_eq!(staged.len(), 2);
    // The two claims land and the first event, then the broker stops taking messages.
    world.faults.crash_after(3);
    let deliveries: Vec<Delivery> = staged
        .iter()
        .map(|s| outbox_delivery(&s.message.data))
        .collect();
    let outcomes = process.events.handle(&deliveries).await;
    assert_eq!(outcomes[0], Outcome::Success("event published"));
    assert!(matches!(outcomes[1], Outcome::Retry(_)), "{outcomes:?}");
    world.faults.heal();
    world.broker.ack(Topic::Outbox, staged[0].seq);
    process.deliver(&world).await;
    assert_eq!(
        world.broker.published(Topic::Events).len(),
        1,
        "claimed: waits"
    );
    past_the_quarantine();
    process.deliver(&world).await;
    audit(&world, &process, &ids)
        .await
        .assert_clean("partial publish");
}

#[tokio::test(start_paused = true)]
async fn a_change_that_moves_the_alarms_waits_for_the_scheduler() {
    let world = World::new();
    let process = Process::start(&world);
    world.faults.take_down("scheduler");
    let id = create_due(&process).await;
    process.deliver(&world).await;
    assert!(
        world.broker.published(Topic::Events).is_empty(),
        "not before its job"
    );
    assert!(
        !world
            .broker
            .unacknowledged(Topic::OutboxRetry, 10)
            .is_empty()
    );
    world.faults.bring_up("scheduler");
    process.deliver(&world).await;
    assert!(world.scheduler.job(&id, Alarm::Due).is_some());
    audit(&world, &process, &[id])
        .await
        .assert_clean("scheduler down");
}

#[tokio::test(start_paused = true)]
async fn the_store_down_leaves_staged_events_for_later() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("store down").await;
    world.faults.take_down("store");
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    let delivery = outbox_delivery(&staged[0].message.data);
    let outcomes = process.events.handle(&[delivery]).await;
    assert!(matches!(outcomes[0], Outcome::Retry(_)), "{outcomes:?}");
    world.faults.bring_up("store");
    process.deliver(&world).await;
    audit(&world, &process, &[id])
        .await
        .assert_clean("store down");
}

#[tokio::test(start_paused = true)]
async fn malformed_events_are_kept_as_dead_letters_and_can_be_replayed() {
    let world = World::new();
    let process = Process::start(&world);
    let garbage = Message {
        id: Some("junk".into()),
        data: b"{\"event_type\":\"task.completed\"}".to_vec(),
        traceparent: None,
    };
    let delivery = Delivery {
        id: "junk",
        topic: "task-events",
        route: Route::Notify,
        data: &garbage.data,
        data_content_type: "application/json",
        published_at: Some(time::now()),
        traceparent: None,
        partition: None,
    };
    let outcomes = process.events.handle(&[delivery]).await;
    assert!(matches!(outcomes[0], Outcome::Dead(_)));
    assert_eq!(process.events.dead_letters().await.unwrap().len(), 1);
    let report = process.events.replay_dead_letters().await.unwrap();
    assert_eq!((report.handled, report.kept), (0, 1));
}

/// Runs `work` cleanly, then delivers its events crashing after `k` side effects of the
/// delivery (letting the k+1-th land first if `lands`), restarts and lets the new process
/// deliver: every event published exactly once, whatever the crash point.
async fn crash_while_delivering(work: Work, k: usize, lands: bool) {
    let world = World::new();
    let first = Process::start_relaying_only(&world);
    work.run_cleanly(&first, &world).await;
    crash_after(&world, k, lands);
    first.deliver(&world).await;
    drop(first);
    world.faults.heal();
    let second = Process::start_relaying_only(&world);
    second.deliver(&world).await;
    past_the_quarantine();
    second.deliver(&world).await;
    after_the_confirmation_window();
    second.deliver(&world).await;
    let context = format!("delivering {work:?}, crashed after {k} side effects (lands: {lands})");
    recovered_cleanly(&world, &second, &stored_tasks(&world), &context).await;
}

/// Side effects of delivering what `work` staged and published, crash-free.
async fn side_effects_of_delivering(work: Work) -> usize {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    work.run_cleanly(&process, &world).await;
    let start = world.faults.side_effects();
    process.deliver(&world).await;
    world.faults.side_effects() - start
}

#[tokio::test(start_paused = true)]
async fn every_event_is_published_once_whatever_point_its_relay_crashes_at() {
    for change in CHANGES {
        let effects = side_effects_of_delivering(Work::One(change)).await;
        assert!(
            effects >= 3,
            "delivering {change:?} makes {effects} side effects"
        );
        for k in 0..=effects {
            crash_while_delivering(Work::One(change), k, false).await;
            crash_while_delivering(Work::One(change), k, true).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn events_staged_together_are_published_once_whatever_point_their_relay_crashes_at() {
    let effects = side_effects_of_delivering(Work::AllAtOnce).await;
    assert!(
        effects >= 3 * CHANGES.len(),
        "delivering makes {effects} side effects"
    );
    for k in 0..=effects {
        crash_while_delivering(Work::AllAtOnce, k, false).await;
        crash_while_delivering(Work::AllAtOnce, k, true).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_landed_but_reported_failure_is_observed_not_repeated() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("lands, fails").await;
    // The claim lands, then the publish lands and reports failure.
    world.faults.crash_after_landing(2);
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    let deliveries: Vec<Delivery> = staged
        .iter()
        .map(|s| outbox_delivery(&s.message.data))
        .collect();
    let outcomes = process.events.handle(&deliveries).await;
    assert!(matches!(outcomes[0], Outcome::Retry(_)), "{outcomes:?}");
    world.faults.heal();
    // Seen on task-events, then the staged event comes back after the quarantine.
    process.deliver(&world).await;
    past_the_quarantine();
    process.deliver(&world).await;
    let audit = audit(&world, &process, &[id]).await;
    audit.assert_clean("landed, reported failed");
    assert_eq!(world.broker.published(Topic::Events).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_publish_that_failed_is_tried_again_after_the_quarantine() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("fails").await;
    world.faults.take_down("broker");
    process.deliver(&world).await;
    world.faults.bring_up("broker");
    process.deliver(&world).await;
    assert!(
        world.broker.published(Topic::Events).is_empty(),
        "in quarantine"
    );
    past_the_quarantine();
    process.deliver(&world).await;
    audit(&world, &process, &[id])
        .await
        .assert_clean("failed, then tried again");
}

#[tokio::test(start_paused = true)]
async fn two_processes_relaying_one_event_publish_it_once() {
    let world = World::new();
    let first = Process::start_relaying_only(&world);
    let second = Process::start_relaying_only(&world);
    let id = first.create("raced").await;
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    let delivery = outbox_delivery(&staged[0].message.data);
    let batch = [delivery];
    let (a, b) = tokio::join!(first.events.handle(&batch), second.events.handle(&batch));
    assert_eq!(
        world.broker.published(Topic::Events).len(),
        1,
        "{a:?} {b:?}"
    );
    world.broker.ack(Topic::Outbox, staged[0].seq);
    first.deliver(&world).await;
    past_the_quarantine();
    second.deliver(&world).await;
    audit(&world, &second, &[id])
        .await
        .assert_clean("two relays");
}

/// Hands `topic`'s waiting messages to the process in one batch, delivered `published_ago` after
/// they were published; acknowledges what was not answered RETRY.
async fn deliver_once(process: &Process, world: &World, topic: Topic, route: Route, ago: i64) {
    deliver_picked(process, world, (topic, route, None), ago, |_| true).await;
}

/// [`deliver_once`] for the waiting messages `pick` chooses, from one partition of `topic`.
async fn deliver_picked(
    process: &Process,
    world: &World,
    (topic, route, partition): (Topic, Route, Option<&str>),
    ago: i64,
    pick: impl Fn(&Message) -> bool,
) {
    let waiting: Vec<_> = world
        .broker
        .unacknowledged(topic, 100)
        .into_iter()
        .filter(|w| pick(&w.message))
        .collect();
    let deliveries: Vec<Delivery> = waiting
        .iter()
        .map(|w| Delivery {
            id: "w",
            topic: "t",
            route,
            data: &w.message.data,
            data_content_type: "application/json",
            published_at: Some(time::now() - chrono::Duration::seconds(ago)),
            traceparent: None,
            partition,
        })
        .collect();
    let outcomes = process.events.handle(&deliveries).await;
    for (w, outcome) in waiting.iter().zip(outcomes) {
        if !matches!(outcome, Outcome::Retry(_)) {
            world.broker.ack(topic, w.seq);
        }
    }
}

/// How often the event of `id`'s `revision` was published to task-events.
fn times_published(world: &World, id: &TaskId, revision: u64) -> usize {
    let event = event_id(id.as_str(), revision);
    world
        .broker
        .published(Topic::Events)
        .iter()
        .filter(|m| m.id.as_deref() == Some(event.as_str()))
        .count()
}

/// A task whose relay claimed and published its event, the publish landing as the sidecar died
/// (its answer lost): the restarted sidecar has listed the subscriptions again and handed the
/// staged copy back once, leaving the claim open.
async fn a_publish_lands_as_the_sidecar_dies(world: &World, process: &Process) -> TaskId {
    let id = process.create("landed, then the sidecar died").await;
    // The claim lands, then the publish lands and its answer is lost with the sidecar.
    world.faults.crash_after_landing(2);
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    let delivery = outbox_delivery(&staged[0].message.data);
    process.events.handle(&[delivery]).await;
    world.faults.heal();
    process.events.subscriptions_listed();
    deliver_once(process, world, Topic::Outbox, Route::Outbox, 0).await;
    id
}

/// Past the hold of an open claim and the grace after it, but within the time a restarted
/// consumer of `task-events` gets to rejoin.
fn advance_past_the_claim() {
    let past_the_claim = relay::CLAIM_HOLDS.max(relay::GRACE) + Duration::from_secs(1);
    assert!(past_the_claim < observer::REJOIN);
    time::test_clock::advance(past_the_claim);
}

/// kill -9 of the sidecar just after a publish landed: the restarted sidecar hands the staged
/// event back at once, while its `task-events` consumer may still be rejoining its group
/// (Kafka). Its silence is not taken for an empty topic: the open claim waits for `task-events`
/// to deliver, and the landed copy, delivered late, settles it.
#[tokio::test(start_paused = true)]
async fn an_open_claim_waits_while_a_restarted_sidecar_has_not_delivered_task_events() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = a_publish_lands_as_the_sidecar_dies(&world, &process).await;
    let published = || times_published(&world, &id, 1);
    advance_past_the_claim();
    deliver_once(&process, &world, Topic::OutboxRetry, Route::OutboxRetry, 0).await;
    assert_eq!(
        published(),
        1,
        "task-events has said nothing since the restart"
    );
    // The consumer is back: the landed copy arrives, late.
    deliver_once(&process, &world, Topic::Events, Route::Noted, 14).await;
    past_the_quarantine();
    process.deliver(&world).await;
    assert_eq!(published(), 1, "observed, not published again");
    audit(&world, &process, &[id])
        .await
        .assert_clean("landed before the sidecar died");
}

/// A batch of `task-events` counts as delivered only once what it observed is in the ledgers.
/// The landed copy arrives fresh while the store takes no writes: its batch is retried, and
/// until it comes again `task-events` is not taken as caught up, so the open claim keeps
/// waiting. (Counted as delivered before its observations were written, a relay deciding in
/// between published it a second time: after a sidecar restart, the put-off staged copies and
/// the first batch of `task-events` arrive together.)
#[tokio::test(start_paused = true)]
async fn a_batch_of_task_events_counts_as_delivered_once_its_observations_are_recorded() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = a_publish_lands_as_the_sidecar_dies(&world, &process).await;
    let published = || times_published(&world, &id, 1);
    // The landed copy arrives at once, but its ledger write fails.
    world.faults.crash_after(0);
    deliver_once(&process, &world, Topic::Events, Route::Noted, 0).await;
    world.faults.heal();
    advance_past_the_claim();
    deliver_once(&process, &world, Topic::OutboxRetry, Route::OutboxRetry, 0).await;
    assert_eq!(
        published(),
        1,
        "the landed copy is not in its ledger yet: task-events has not caught up"
    );
    // Delivered again, it is recorded.
    deliver_once(&process, &world, Topic::Events, Route::Noted, 0).await;
    past_the_quarantine();
    process.deliver(&world).await;
    assert_eq!(published(), 1, "observed, not published again");
    audit(&world, &process, &[id])
        .await
        .assert_clean("landed, observed once the store took writes again");
}

/// The same, on Kafka: the restarted sidecar's `task-events` delivers a fresh event from one
/// partition while the landed copy still waits in another's backlog. One partition caught up
/// says nothing of the other: the open claim waits for every partition to deliver again.
#[tokio::test(start_paused = true)]
async fn an_open_claim_waits_for_every_partition_of_task_events_to_deliver_again() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let on = |partition| (Topic::Events, Route::Noted, Some(partition));
    // Both partitions have delivered before the crash.
    let earlier = [process.create("on 0").await, process.create("on 1").await];
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    let first = event_id(earlier[0].as_str(), 1);
    let is_first = |m: &Message| m.id.as_deref() == Some(first.as_str());
    deliver_picked(&process, &world, on("0"), 0, is_first).await;
    deliver_picked(&process, &world, on("1"), 0, |_| true).await;
    let id = process.create("landed on 1, then the sidecar died").await;
    world.faults.crash_after_landing(2);
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    process
        .events
        .handle(&[outbox_delivery(&staged[0].message.data)])
        .await;
    world.faults.heal();
    process.events.subscriptions_listed();
    let landed = event_id(id.as_str(), 1);
    let is_landed = |m: &Message| m.id.as_deref() == Some(landed.as_str());
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    // Partition 0 is back and fresh; partition 1 has not delivered yet.
    let fresh = process.create("after the restart, on 0").await;
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    deliver_picked(&process, &world, on("0"), 0, |m| !is_landed(m)).await;
    advance_past_the_claim();
    deliver_once(&process, &world, Topic::OutboxRetry, Route::OutboxRetry, 0).await;
    let published = || times_published(&world, &id, 1);
    assert_eq!(
        published(),
        1,
        "partition 1 has said nothing since the restart"
    );
    // Partition 1 is back: the landed copy arrives, late.
    deliver_picked(&process, &world, on("1"), 14, is_landed).await;
    past_the_quarantine();
    process.deliver(&world).await;
    assert_eq!(published(), 1, "observed, not published again");
    let mut tasks = earlier.to_vec();
    tasks.extend([id, fresh]);
    audit(&world, &process, &tasks)
        .await
        .assert_clean("landed on a partition that came back late");
}

/// The same wait ends: a restarted sidecar whose `task-events` delivers nothing (no copy
/// landed, nothing else published) does not hold an open claim for longer than
/// [`observer::REJOIN`].
#[tokio::test(start_paused = true)]
async fn an_open_claim_is_published_once_a_silent_restarted_sidecar_has_had_time_to_rejoin() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("claimed, then the sidecar died").await;
    // The claim lands; the publish does not.
    world.faults.crash_after(1);
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    world.faults.heal();
    process.events.subscriptions_listed();
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    advance_past_the_claim();
    deliver_once(&process, &world, Topic::OutboxRetry, Route::OutboxRetry, 0).await;
    assert_eq!(times_published(&world, &id, 1), 0);
    time::test_clock::advance(observer::REJOIN);
    deliver_once(&process, &world, Topic::OutboxRetry, Route::OutboxRetry, 0).await;
    assert_eq!(times_published(&world, &id, 1), 1);
    process.deliver(&world).await;
    audit(&world, &process, &[id])
        .await
        .assert_clean("claimed before the sidecar died");
}

#[tokio::test(start_paused = true)]
async fn an_old_open_claim_waits_for_its_grace_and_for_task_events_to_catch_up() {
    let world = World::new();
    let process = Process::start_relaying_only(&world);
    let id = process.create("claimed, then the relay died").await;
    // The claim lands; the publish does not.
    world.faults.crash_after(1);
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    world.faults.heal();
    time::test_clock::advance(Duration::from_secs(3600));
    let restarted = Process::start_relaying_only(&world);
    let published = || times_published(&world, &id, 1);
    deliver_once(&restarted, &world, Topic::Outbox, Route::Outbox, 0).await;
    assert_eq!(published(), 0, "first found: its grace begins");
    time::test_clock::advance(relay::GRACE + Duration::from_secs(1));
    // task-events is 10 s behind.
    let unrelated = restarted.create("unrelated").await;
    deliver_once(&restarted, &world, Topic::Outbox, Route::Outbox, 0).await;
    deliver_once(&restarted, &world, Topic::Events, Route::Noted, 10).await;
    deliver_once(
        &restarted,
        &world,
        Topic::OutboxRetry,
        Route::OutboxRetry,
        0,
    )
    .await;
    assert_eq!(published(), 0, "task-events is behind");
    let another = restarted.create("another").await;
    deliver_once(&restarted, &world, Topic::Outbox, Route::Outbox, 0).await;
    deliver_once(&restarted, &world, Topic::Events, Route::Noted, 0).await;
    time::test_clock::advance(relay::GRACE + Duration::from_secs(1));
    deliver_once(
        &restarted,
        &world,
        Topic::OutboxRetry,
        Route::OutboxRetry,
        0,
    )
    .await;
    assert_eq!(published(), 1, "caught up, grace over: published");
    restarted.deliver(&world).await;
    audit(&world, &restarted, &[id, unrelated, another])
        .await
        .assert_clean("old claim");
}

#[tokio::test(start_paused = true)]
async fn a_writer_publishes_its_change_at_once_and_its_relay_then_reads_nothing() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("direct").await;
    settle().await;
    assert_eq!(
        world.broker.published(Topic::Events).len(),
        1,
        "published before any delivery"
    );
    let reads = world.store.reads();
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    deliver_once(&process, &world, Topic::Events, Route::Noted, 0).await;
    assert_eq!(
        world.store.reads(),
        reads,
        "the relay and the observer read nothing"
    );
    process.deliver(&world).await;
    audit(&world, &process, &[id]).await.assert_clean("direct");
}

#[tokio::test(start_paused = true)]
async fn a_change_reads_its_record_and_ledger_once_and_records_its_event_without_reading() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("changed twice").await;
    settle().await;
    // The list index reads its leaves on its own; the record and the ledger are read together.
    let reads = || world.store.reads_of(&["task-", "published-"]);
    for status in [TaskStatus::InProgress, TaskStatus::Completed] {
        let before = reads();
        process
            .tasks
            .change_status(&id, status, None)
            .await
            .unwrap();
        settle().await;
        assert_eq!(
            reads() - before,
            1,
            "one read for the change and its ledger ({status:?})"
        );
    }
    assert_eq!(world.broker.published(Topic::Events).len(), 3);
    process.deliver(&world).await;
    audit(&world, &process, &[id])
        .await
        .assert_clean("read once");
}

#[tokio::test(start_paused = true)]
async fn changes_in_flight_together_read_and_write_their_records_together() {
    const CHANGED: usize = 24;
    let world = World::new();
    let process = Process::start(&world);
    let mut ids = Vec::new();
    for n in 0..CHANGED {
        ids.push(process.create(&format!("task {n}")).await);
    }
    settle().await;
    let reads = world.store.reads_of(&["task-"]);
    let writes = world.store.write_calls_of("task-").len();
    let completions = ids
        .iter()
        .map(|id| process.tasks.change_status(id, TaskStatus::Completed, None));
    for completed in futures::future::join_all(completions).await {
        assert_eq!(completed.unwrap().value.status, TaskStatus::Completed);
    }
    settle().await;
    // The first few go alone, at once; those that came while they were out go together.
    let record_reads = world.store.reads_of(&["task-"]) - reads;
    assert!(
        record_reads < CHANGED,
        "{record_reads} reads of the records"
    );
    let record_writes: Vec<Vec<String>> = world.store.write_calls_of("task-")[writes..].to_vec();
    let written: usize = record_writes.iter().map(Vec::len).sum();
    assert_eq!(written, CHANGED, "writes of the records: {record_writes:?}");
    assert!(
        record_writes.len() < CHANGED && record_writes.iter().any(|keys| keys.len() > 1),
        "writes of the records: {record_writes:?}"
    );
    process.deliver(&world).await;
    audit(&world, &process, &ids)
        .await
        .assert_clean("changes in flight together");
    assert_eq!(
        world.notifier.received().len(),
        CHANGED,
        "every completion notified"
    );
}

#[tokio::test(start_paused = true)]
async fn changes_one_after_another_write_their_ledger_without_losing_a_race_to_their_own() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("started and completed at once").await;
    // Each change reads the ledger while the last one's write of it may still be under way.
    for status in [TaskStatus::InProgress, TaskStatus::Completed] {
        process
            .tasks
            .change_status(&id, status, None)
            .await
            .unwrap();
    }
    settle().await;
    assert_eq!(world.broker.published(Topic::Events).len(), 3);
    assert_eq!(
        world.store.refused("published-"),
        0,
        "a ledger write refused: it was read before this process's own last write of it"
    );
    process.deliver(&world).await;
    audit(&world, &process, &[id])
        .await
        .assert_clean("one after another");
}

#[tokio::test(start_paused = true)]
async fn another_process_leaves_a_fresh_change_to_its_writer() {
    let world = World::new();
    let writer = Process::start(&world);
    let other = Process::start(&world);
    let id = writer.create("written here, relayed there").await;
    settle().await;
    deliver_once(&other, &world, Topic::Outbox, Route::Outbox, 0).await;
    deliver_once(&other, &world, Topic::Events, Route::Noted, 0).await;
    other.deliver(&world).await;
    past_the_quarantine();
    other.deliver(&world).await;
    assert_eq!(world.broker.published(Topic::Events).len(), 1);
    audit(&world, &other, &[id])
        .await
        .assert_clean("relayed by another process");
}

#[tokio::test(start_paused = true)]
async fn a_direct_publish_the_store_could_not_record_is_recorded_from_task_events() {
    let world = World::new();
    let process = Process::start(&world);
    let id = process.create("published, not recorded").await;
    world.faults.take_down("store");
    settle().await;
    assert_eq!(world.broker.published(Topic::Events).len(), 1);
    // Its staged copy needs nothing more: nothing is put off to be published again.
    deliver_once(&process, &world, Topic::Outbox, Route::Outbox, 0).await;
    assert!(
        world
            .broker
            .unacknowledged(Topic::OutboxRetry, 10)
            .is_empty()
    );
    // task-events cannot record it while the store is down; daprd moves it to the retry
    // topic, where it is recorded once the store is back.
    deliver_once(&process, &world, Topic::Events, Route::Noted, 0).await;
    world.faults.bring_up("store");
    past_the_quarantine();
    deliver_once(&process, &world, Topic::Events, Route::Retry, 0).await;
    process.deliver(&world).await;
    audit(&world, &process, std::slice::from_ref(&id))
        .await
        .assert_clean("recorded late");
    let ledger = world.store.peek(&format!("published-{id}")).unwrap();
    assert!(
        String::from_utf8(ledger).unwrap().contains("[1]"),
        "recorded in the ledger"
    );
}

/// A page of every task, of size 2, read while a task moves from `from` to `to`: the task is in
/// both lists at the same place (the new entry is written before the record), after an entry of
/// a create in flight that makes the page read a second batch, and the move lands right after
/// the page first reads the task's record. The page's tasks.
async fn page_read_while_a_task_moves(
    from: TaskStatus,
    to: TaskStatus,
) -> Vec<crate::domain::Versioned<crate::domain::Task>> {
    use super::{
        index::{ListId, Position},
        listing::ListQuery,
        store::records::{from_json, task_key},
        tasks::position_of,
    };
    use crate::domain::Priority;

    let world = World::new();
    let process = Process::start(&world);
    let list = |status| ListId {
        status,
        priority: Priority::parse(2).unwrap(),
    };
    let in_flight = Position {
        micros: (time::now() - chrono::Duration::seconds(1)).timestamp_micros(),
        id: TaskId::parse("a-create-in-flight").unwrap(),
    };
    let index = &process.tasks.index;
    index
        .insert(list(TaskStatus::Pending), in_flight, 1)
        .await
        .unwrap();
    let id = process.create("moving").await;
    let change = |status| process.tasks.change_status(&id, status, None);
    if from != TaskStatus::Pending {
        change(from).await.unwrap();
    }
    let key = task_key(&id);
    let before = world.store.peek(&key).unwrap();
    change(to).await.unwrap();
    settle().await;
    let after = world.store.peek(&key).unwrap();
    let before_record = from_json(&key, &before).unwrap();
    index
        .insert(
            list(from),
            position_of(&before_record),
            before_record.revision,
        )
        .await
        .unwrap();
    world.store.put_raw(&key, &before);
    world.store.put_raw_after_next_read(&key, &after);

    let query = ListQuery::parse(None, None, false, 2, "").unwrap();
    let page = process.tasks.list(&query).await.unwrap();
    assert!(page.next_page_token.is_none(), "one page");
    page.tasks
}

/// Whichever way a task moves while a page is read, and whichever of its two entries comes
/// first, the page names it once, as its record was first read.
#[tokio::test(start_paused = true)]
async fn a_task_moving_between_lists_while_a_page_is_read_is_listed_once() {
    for (from, to) in [
        // The entry read first matches the first read, the second the later one.
        (TaskStatus::Pending, TaskStatus::InProgress),
        // The entry read first is the new one, the second one matches only the first read.
        (TaskStatus::InProgress, TaskStatus::Pending),
    ] {
        let tasks = page_read_while_a_task_moves(from, to).await;
        let statuses: Vec<_> = tasks.iter().map(|t| t.value.status).collect();
        assert_eq!(statuses, [from], "moving from {from:?} to {to:?}");
    }
}
