//! The fault suite: routine failures under load, and a count of what they did.
//!
//! Each scenario runs task-api and notification-service as their real binaries, each behind its
//! own daprd, on Redis (state and broker on separate servers), on PostgreSQL (broker on Redis)
//! and, for the faults that involve the broker, on Kafka (state on Redis), drives a workload of creates, updates, completions and deletes through clients that
//! retry what is retryable (creates with a `request_id`), breaks something in the middle, heals
//! it, waits until every event has been handled, and then counts from the stored records and
//! from the broker's own copy of `task-events` (the Redis stream or the Kafka topic), timing the
//! events by an independent subscriber ("auditor"):
//!
//! | count | what |
//! |---|---|
//! | retried | calls that failed retryably during the fault and were sent again |
//! | slowest event (s) | the longest from a change (or, for changes made before the fault healed, from the heal) to its event reaching a subscriber; at most 30 |
//! | committed | changes the stored records hold (each revision of each task) |
//! | published | distinct changes with an event on `task-events` |
//! | lost | committed changes without an event |
//! | invented | events for changes that did not commit |
//! | duplicated | changes whose event (one CloudEvent id) was published more than once |
//! | resurrected | tasks deleted (the client was told so, or a delete committed) that are alive |
//! | notif. missing / doubled | committed completions without a notification / with two |
//! | misfiled | live tasks ListTasks does not list once, or deleted ones it lists |
//! | internal | calls answered INTERNAL (faults must be UNAVAILABLE) |
//!
//! Every count but committed and published must be 0. `FAULTS=full` (scripts/faults) runs the
//! long version (minute-long outages, notification-service down for 10 minutes, more load);
//! without it the same scenarios run in seconds. With `FAULTS_REPORT=<file>` each scenario adds
//! its row to that file.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{
    BinaryApp, EventProbe, WithHeader, eventually, wait_until_consumed, wait_until_handled,
};
use devstack::{ComponentSet, Stack};
use task_api::{
    domain::{TaskEventType, TaskRecord, TaskStatus},
    proto::{
        notification::v1::{
            ListNotificationsRequest, notification_service_client::NotificationServiceClient,
        },
        task::v1::{self as pb, task_service_client::TaskServiceClient},
    },
    stored::read_task_document,
};
use tokio::task::JoinSet;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

type Client = TaskServiceClient<InterceptedService<Channel, WithHeader>>;

/// How long and how hard.
#[derive(Debug, Clone, Copy)]
struct Timing {
    workers: usize,
    tasks_per_worker: usize,
    outage: Duration,
    notification_outage: Duration,
    /// How long the fast-churn scenario changes its tasks.
    churn: Duration,
}

fn timing() -> Timing {
    if std::env::var("FAULTS").is_ok_and(|v| v == "full") {
        Timing {
            workers: 16,
            tasks_per_worker: 25,
            outage: Duration::from_secs(60),
            notification_outage: Duration::from_secs(600),
            churn: Duration::from_secs(60),
        }
    } else {
        Timing {
            workers: 8,
            tasks_per_worker: 5,
            outage: Duration::from_secs(6),
            notification_outage: Duration::from_secs(60),
            churn: Duration::from_secs(12),
        }
    }
}

/// Topics task-api consumes; all must be drained before counting.
const TOPICS: [&str; 4] = [
    "task-events",
    "task-events-outbox",
    "task-events-outbox-retry",
    "task-events-retry",
];
/// The longest a client keeps retrying one call.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);

/// The system under test.
struct Rig {
    stack: Stack,
    store: ComponentSet,
    task_api: BinaryApp,
    notifications: Option<BinaryApp>,
    auditor: EventProbe,
    _auditor_sidecar: devstack::Sidecar,
}

impl Rig {
    async fn start(store: ComponentSet) -> Rig {
        let stack = Stack::builder().components(store).start().await.unwrap();
        let mut auditor = EventProbe::start("pubsub", &["task-events"]).await;
        let auditor_sidecar = stack
            .sidecar("auditor")
            .unwrap()
            .app_port(auditor.port)
            .start()
            .await
            .unwrap();
        let _ = &mut auditor;
        let notifications = BinaryApp::start(&stack, "notification-service", &[]).await;
        let task_api = BinaryApp::start(&stack, "task-api", &[]).await;
        Rig {
            stack,
            store,
            task_api,
            notifications: Some(notifications),
            auditor,
            _auditor_sidecar: auditor_sidecar,
        }
    }

    async fn client(&self) -> Client {
        TaskServiceClient::with_interceptor(
            self.task_api.channel().await,
            WithHeader("x-api-key", self.stack.api_key().to_string()),
        )
    }

    fn store_name(&self) -> &'static str {
        match self.store {
            ComponentSet::Redis => "redis",
            ComponentSet::Postgres => "postgresql",
            ComponentSet::Kafka => "redis, kafka broker",
        }
    }

    /// Every task record in the state store, read from the store directly.
    fn records(&self) -> Vec<TaskRecord> {
        let documents: Vec<String> = match self.store {
            ComponentSet::Redis | ComponentSet::Kafka => {
                let redis = self.stack.redis().unwrap();
                redis
                    .cli(&["--scan", "--pattern", "task-api||task-*"])
                    .unwrap()
                    .lines()
                    .map(|key| redis.cli(&["HGET", key, "data"]).unwrap())
                    .collect()
            }
            ComponentSet::Postgres => self
                .stack
                .postgres()
                .unwrap()
                .psql("SELECT convert_from(value, 'UTF8') FROM state WHERE key LIKE 'task-api||task-%' AND (expires_at IS NULL OR expires_at > now())")
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect(),
        };
        documents
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| {
                read_task_document("task", d.as_bytes())
                    .unwrap_or_else(|e| panic!("unreadable record {d}: {e}"))
            })
            .collect()
    }

    /// The list-index documents (leaves) that mention task `id`, by key: what a misfiled task's
    /// entries look like (Redis-held stores only).
    fn index_entries_naming(&self, id: &str) -> Vec<String> {
        let Some(redis) = self.stack.redis() else {
            return Vec::new();
        };
        let Ok(keys) = redis.cli(&["--scan", "--pattern", "task-api||tasks-*"]) else {
            return Vec::new();
        };
        keys.lines()
            .filter_map(|key| {
                let data = redis.cli(&["HGET", key, "data"]).ok()?;
                data.contains(id).then(|| format!("{key}: {data}"))
            })
            .collect()
    }

    /// Every CloudEvent on task-events, once per publish, read from the broker: the Redis
    /// stream's entries, or the Kafka topic from its start.
    fn published_on_broker(&self) -> Vec<serde_json::Value> {
        let messages = match self.stack.kafka() {
            Some(kafka) => kafka.read_topic("task-events").unwrap(),
            None => {
                let broker = self.stack.broker().or(self.stack.redis()).unwrap();
                broker.stream_data("task-events").unwrap()
            }
        };
        messages
            .iter()
            .map(|message| {
                serde_json::from_str(message)
                    .unwrap_or_else(|e| panic!("not a CloudEvent on task-events ({e}): {message}"))
            })
            .collect()
    }

    /// Waits until task-api and the auditor have handled every event published so far.
    async fn quiesce(&self) {
        wait_until_handled(&self.stack, &TOPICS).await;
        wait_until_consumed(&self.stack, "auditor", &["task-events"]).await;
        // The outbox may have published while task-api drained the other topics.
        wait_until_handled(&self.stack, &TOPICS).await;
    }
}

/// What the clients were told.
#[derive(Default)]
struct Outcomes {
    created: Mutex<BTreeSet<String>>,
    deleted: Mutex<BTreeSet<String>>,
    internal: AtomicUsize,
    gave_up: AtomicUsize,
    /// Calls that failed retryably and were sent again: the fault was felt.
    retried: AtomicUsize,
    /// When the fault was healed.
    healed: Mutex<Option<std::time::SystemTime>>,
}

/// Calls `call` until it succeeds or fails for good; UNAVAILABLE and transport failures are
/// retried (the same request: a create keeps its request_id).
async fn retrying<T, F, Fut>(outcomes: &Outcomes, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) => {
                if status.code() == Code::Internal {
                    outcomes.internal.fetch_add(1, Ordering::Relaxed);
                    eprintln!("INTERNAL during a fault: {status:?}");
                }
                let retryable = matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::Cancelled
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::Internal
                );
                if !retryable || started.elapsed() > GIVE_UP_AFTER {
                    if retryable {
                        outcomes.gave_up.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(status);
                }
                outcomes.retried.fetch_add(1, Ordering::Relaxed);
                // A client's back-off before it retries, as a real client would.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Creates, renames, completes and (every third) deletes tasks, each call retried until it
/// goes through. Runs in the background on its own clients, so faults can be done meanwhile.
fn spawn_workload(client: Client, outcomes: Arc<Outcomes>, timing: Timing) -> JoinSet<()> {
    let mut workers = JoinSet::new();
    for worker in 0..timing.workers {
        let client = client.clone();
        let outcomes = outcomes.clone();
        workers.spawn(async move {
            for n in 0..timing.tasks_per_worker {
                run_task(&client, &outcomes, worker, n).await;
            }
        });
    }
    workers
}

async fn run_task(client: &Client, outcomes: &Outcomes, worker: usize, n: usize) {
    let request = pb::CreateTaskRequest {
        title: format!("worker {worker} task {n}"),
        priority: Some((n % 5) as i32 + 1),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let Ok(task) = retrying(outcomes, || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.create_task(request).await }
    })
    .await
    else {
        return;
    };
    let id = task.into_inner().id;
    outcomes.created.lock().unwrap().insert(id.clone());
    let _ = retrying(outcomes, || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            client
                .update_task(pb::UpdateTaskRequest {
                    id,
                    title: Some(format!("worker {worker} task {n}, renamed")),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    let _ = retrying(outcomes, || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            client
                .update_task_status(pb::UpdateTaskStatusRequest {
                    id,
                    status: pb::TaskStatus::Completed as i32,
                    etag: String::new(),
                })
                .await
        }
    })
    .await;
    if n.is_multiple_of(3) {
        let deleted = retrying(outcomes, || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                client
                    .delete_task(pb::DeleteTaskRequest {
                        id,
                        etag: String::new(),
                    })
                    .await
            }
        })
        .await;
        // A retried delete whose first attempt landed answers NOT_FOUND.
        if deleted.is_ok() || deleted.is_err_and(|s| s.code() == Code::NotFound) {
            outcomes.deleted.lock().unwrap().insert(id);
        }
    }
}

/// The counts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Audit {
    committed: usize,
    published: usize,
    lost: usize,
    invented: usize,
    duplicated: usize,
    resurrected: usize,
    notifications_missing: usize,
    notifications_doubled: usize,
    internal: usize,
    gave_up: usize,
    retried: usize,
    /// The longest an event took to arrive after its change, or after the heal for changes
    /// made before it.
    slowest: Duration,
    /// Live tasks ListTasks does not list once, or deleted ones it lists.
    misfiled: usize,
    /// Events on the broker that the auditor's sidecar never delivered to it (acknowledged
    /// without a successful delivery): not task-api's doing, but "slowest" misses them.
    undelivered: usize,
}

impl Audit {
    fn failures(&self) -> usize {
        self.lost
            + self.invented
            + self.duplicated
            + self.resurrected
            + self.notifications_missing
            + self.notifications_doubled
            + self.internal
            + self.gave_up
            + self.misfiled
    }
}

/// A CloudEvent's data: JSON in `data` (an object, or text holding one).
fn event_data(event: &serde_json::Value) -> serde_json::Value {
    match &event["data"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
        data => data.clone(),
    }
}

/// Whether an event of type `event_type` at `revision` fits the stored task: a change it took
/// (at or below its revision), a creation first, a deletion last.
fn consistent(record: Option<&TaskRecord>, revision: u64, event_type: TaskEventType) -> bool {
    let Some(record) = record else {
        return false;
    };
    let first = revision == 1;
    let last = revision == record.revision;
    revision <= record.revision
        && (event_type == TaskEventType::Created) == first
        && (event_type == TaskEventType::Deleted) == (last && record.is_deleted())
}

/// Counts what happened, once everything has settled.
async fn audit(rig: &mut Rig, outcomes: &Outcomes, scenario: &str) -> Audit {
    rig.quiesce().await;
    let records = rig.records();
    let mut audit = Audit {
        internal: outcomes.internal.load(Ordering::Relaxed),
        gave_up: outcomes.gave_up.load(Ordering::Relaxed),
        retried: outcomes.retried.load(Ordering::Relaxed),
        ..Audit::default()
    };

    // Committed changes: a task written only by task-api took revisions 1, 2, ... one per
    // change, so its record's revision says which changes committed.
    let mut by_id: HashMap<String, &TaskRecord> = HashMap::new();
    let mut committed: BTreeSet<(String, u64)> = BTreeSet::new();
    for record in &records {
        assert!(
            !record.foreign,
            "task {} was written by another program",
            record.id()
        );
        by_id.insert(record.id().to_string(), record);
        for revision in 1..=record.revision {
            committed.insert((record.id().to_string(), revision));
        }
    }
    for id in outcomes.deleted.lock().unwrap().iter() {
        if by_id.get(id).is_some_and(|r| !r.is_deleted()) {
            eprintln!("resurrected after an acknowledged delete: {id}");
            audit.resurrected += 1;
        }
    }
    for id in outcomes.created.lock().unwrap().iter() {
        assert!(
            by_id.contains_key(id),
            "an acknowledged create is missing: {id}"
        );
    }
    audit.committed = committed.len();

    // Published changes, from the broker itself (the Redis stream or the Kafka topic): each
    // CloudEvent id as often as it was published.
    let mut published: BTreeMap<(String, u64), (TaskEventType, usize)> = BTreeMap::new();
    for event in rig.published_on_broker() {
        let data = event_data(&event);
        let task = data["task_id"].as_str().unwrap_or_default().to_string();
        let (Some(revision), Ok(event_type)) = (
            data["revision"].as_u64(),
            data["event_type"]
                .as_str()
                .unwrap_or_default()
                .parse::<TaskEventType>(),
        ) else {
            eprintln!("not an event of task-api: {event}");
            audit.invented += 1;
            continue;
        };
        let id = event["id"].as_str().unwrap_or_default();
        if id != format!("{task}.{revision}") {
            eprintln!("published under id {id}: {data}");
            audit.invented += 1;
        }
        published
            .entry((task, revision))
            .or_insert((event_type, 0))
            .1 += 1;
    }
    audit.published = published.len();
    for key in &committed {
        if !published.contains_key(key) {
            eprintln!("lost: {key:?}");
            audit.lost += 1;
        }
    }
    for ((task, revision), (event_type, times)) in &published {
        if *times > 1 {
            eprintln!("published {times} times: {task}.{revision}");
            audit.duplicated += 1;
        }
        if !consistent(by_id.get(task).copied(), *revision, *event_type) {
            eprintln!("invented: {task}.{revision} ({event_type})");
            audit.invented += 1;
        }
    }
    // How long the events took to reach a subscriber: the auditor's deliveries.
    let healed = *outcomes.healed.lock().unwrap();
    let mut delivered: BTreeSet<String> = BTreeSet::new();
    let mut late = Vec::new();
    for (event, arrived) in rig.auditor.drain() {
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
        let changed = data["timestamp"]
            .as_str()
            .and_then(task_api::domain::time::parse)
            .map(std::time::SystemTime::from);
        if let Some(changed) = changed {
            let since = healed.map_or(changed, |healed| healed.max(changed));
            let delay = arrived.duration_since(since).unwrap_or_default();
            audit.slowest = audit.slowest.max(delay);
            if delay > SLOW_EVENT {
                late.push((delay, event.id.clone(), changed, arrived));
            }
        }
        delivered.insert(event.id);
    }
    report_late(late, healed);
    for (task, revision) in published.keys() {
        let id = format!("{task}.{revision}");
        if !delivered.contains(&id) {
            eprintln!("published, never delivered to the auditor: {id}");
            audit.undelivered += 1;
        }
    }
    for (task, record) in &by_id {
        let deleted_at = published
            .range((task.clone(), 0)..=(task.clone(), u64::MAX))
            .find(|(_, (t, _))| *t == TaskEventType::Deleted)
            .map(|((_, revision), _)| *revision);
        if deleted_at.is_some_and(|at| at != record.revision || !record.is_deleted()) {
            eprintln!("resurrected: {task}");
            audit.resurrected += 1;
        }
    }

    // Notifications: one per committed completion, under that completion's key.
    let notifications = rig
        .notifications
        .as_ref()
        .expect("notification-service runs");
    // As its sidecar calls it: notification-service takes no other callers.
    let client = NotificationServiceClient::with_interceptor(
        notifications.channel().await,
        WithHeader("dapr-api-token", rig.stack.app_token().to_string()),
    );
    let tasks: BTreeSet<&String> = committed.iter().map(|(task, _)| task).collect();
    for task in tasks {
        // The audit's own reads ride out a moment of a loaded machine (a state read timing
        // out); they count nothing towards the fault.
        let received = retrying(&Outcomes::default(), || {
            let mut client = client.clone();
            let request = ListNotificationsRequest {
                task_id: task.clone(),
            };
            async move { client.list_notifications(request).await }
        })
        .await
        .unwrap()
        .into_inner()
        .notifications;
        let mut keys: HashMap<String, usize> = HashMap::new();
        for notification in received {
            *keys.entry(notification.id).or_default() += 1;
        }
        for ((_, revision), (event_type, _)) in
            published.range((task.clone(), 0)..=(task.clone(), u64::MAX))
        {
            if *event_type != TaskEventType::StatusChanged(TaskStatus::Completed) {
                continue;
            }
            match keys.remove(&format!("{task}.{revision}")) {
                None => {
                    eprintln!("notification missing: {task}.{revision}");
                    audit.notifications_missing += 1;
                }
                Some(1) => {}
                Some(n) => {
                    eprintln!("notified {n} times: {task}.{revision}");
                    audit.notifications_doubled += 1;
                }
            }
        }
        if !keys.is_empty() {
            eprintln!("notifications for no completion: {keys:?}");
            audit.notifications_doubled += keys.len();
        }
    }

    // Every live task is listed, exactly once.
    let mut client = rig.client().await;
    let mut listed: HashMap<String, usize> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tasks(pb::ListTasksRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for task in page.tasks {
            *listed.entry(task.id).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for record in &records {
        let id = record.id().to_string();
        let times = listed.get(&id).copied().unwrap_or(0);
        if record.is_deleted() != (times == 0) || times > 1 {
            eprintln!(
                "listed {times} times: {id} (deleted: {}, revision {}, status {}, created {}); index entries naming it: {:?}",
                record.is_deleted(),
                record.revision,
                record.status(),
                record.created_at(),
                rig.index_entries_naming(&id)
            );
            audit.misfiled += 1;
        }
    }

    report(rig.store_name(), scenario, &audit);
    audit
}

fn report(store: &str, scenario: &str, audit: &Audit) {
    let row = format!(
        "| {store} | {scenario} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        audit.retried,
        audit.slowest.as_secs_f64(),
        audit.committed,
        audit.published,
        audit.lost,
        audit.invented,
        audit.duplicated,
        audit.resurrected,
        audit.notifications_missing,
        audit.notifications_doubled,
        audit.misfiled,
        audit.internal + audit.gave_up,
    );
    eprintln!("{row}");
    if let Some(path) = std::env::var_os("FAULTS_REPORT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{row}").unwrap();
    }
}

/// Polls readiness until it is `ready`; how long that took.
async fn readiness_becomes(app: &BinaryApp, ready: bool, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, || async {
        (app.ready().await == ready).then_some(())
    })
    .await;
    started.elapsed()
}

/// Runs the workload; once it is under way, `fault` breaks and heals something. Then counts.
async fn under_load<F>(rig: &mut Rig, scenario: &str, fault: F) -> Audit
where
    F: AsyncFnOnce(&mut Rig),
{
    let outcomes = Arc::new(Outcomes::default());
    let mut load = spawn_workload(rig.client().await, outcomes.clone(), timing());
    // Under way: some tasks exist.
    let started = outcomes.clone();
    eventually(Duration::from_secs(60), || async {
        (started.created.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    fault(rig).await;
    *outcomes.healed.lock().unwrap() = Some(std::time::SystemTime::now());
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
    audit(rig, &outcomes, scenario).await
}

/// How long an event may take to reach the auditor (see the table in the module docs).
const SLOW_EVENT: Duration = Duration::from_secs(30);

/// Names the events that took longer than [`SLOW_EVENT`] (the ten slowest), with when their
/// change was made and when they arrived, counted from the heal: what a failed bound needs.
fn report_late(
    mut late: Vec<(
        Duration,
        String,
        std::time::SystemTime,
        std::time::SystemTime,
    )>,
    healed: Option<std::time::SystemTime>,
) {
    if late.is_empty() {
        return;
    }
    late.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let offset = |at: std::time::SystemTime| match healed {
        Some(healed) => match at.duration_since(healed) {
            Ok(after) => format!("{:+.1} s", after.as_secs_f64()),
            Err(before) => format!("{:+.1} s", -before.duration().as_secs_f64()),
        },
        None => "-".to_string(),
    };
    eprintln!(
        "{} events took longer than {SLOW_EVENT:?}; from the heal:",
        late.len()
    );
    for (delay, id, changed, arrived) in late.iter().take(10) {
        eprintln!(
            "  {id}: changed at {}, arrived at {} ({:.1} s)",
            offset(*changed),
            offset(*arrived),
            delay.as_secs_f64()
        );
    }
}

fn assert_clean(audit: &Audit) {
    assert_eq!(audit.failures(), 0, "{audit:#?}");
    assert!(audit.slowest <= SLOW_EVENT, "{audit:#?}");
    assert!(
        audit.committed > 0 && audit.published == audit.committed,
        "{audit:#?}"
    );
}

/// A fault scenario that clients did not feel proves nothing.
fn assert_felt(audit: &Audit) {
    assert!(
        audit.retried > 0,
        "no call failed during the fault: {audit:#?}"
    );
}

async fn broker_outage(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let audit = under_load(&mut rig, "broker down, state up", async |rig: &mut Rig| {
        match rig.stack.kafka_mut() {
            Some(kafka) => kafka.shutdown(),
            None => rig.stack.broker_mut().unwrap().shutdown().unwrap(),
        }
        let took = readiness_becomes(&rig.task_api, false, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "NOT_SERVING after {took:?}");
        // The fault itself: how long the broker stays down.
        tokio::time::sleep(timing().outage).await;
        match rig.stack.kafka_mut() {
            Some(kafka) => kafka.start_again().await,
            None => rig.stack.broker_mut().unwrap().start_again().await,
        }
        .unwrap();
        // A restarted Kafka broker takes its clients longer to find again (metadata refresh,
        // reconnect back-off) than a restarted Redis.
        let limit = match rig.store {
            ComponentSet::Kafka => Duration::from_secs(15),
            _ => Duration::from_secs(5),
        };
        let took = readiness_becomes(&rig.task_api, true, limit * 2).await;
        assert!(took < limit, "SERVING again after {took:?}");
    })
    .await;
    assert_clean(&audit);
    assert_felt(&audit);
}

#[tokio::test]
async fn broker_outage_on_redis() {
    broker_outage(ComponentSet::Redis).await;
}

#[tokio::test]
async fn broker_outage_on_postgres() {
    broker_outage(ComponentSet::Postgres).await;
}

#[tokio::test]
async fn broker_outage_on_kafka() {
    broker_outage(ComponentSet::Kafka).await;
}

async fn store_outage(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let audit = under_load(&mut rig, "state store down", async |rig: &mut Rig| {
        match rig.store {
            ComponentSet::Postgres => rig.stack.postgres_mut().unwrap().stop(),
            _ => rig.stack.redis_mut().unwrap().shutdown().unwrap(),
        }
        // Reads fail fast, and as UNAVAILABLE, as writes do.
        let mut client = rig.client().await;
        let started = Instant::now();
        let refused = client
            .get_task(pb::GetTaskRequest {
                id: "00000000-0000-4000-8000-00000000cafe".into(),
            })
            .await
            .unwrap_err();
        let answered = started.elapsed();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            answered < Duration::from_secs(1),
            "GetTask answered UNAVAILABLE after {answered:?}"
        );
        let took = readiness_becomes(&rig.task_api, false, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "NOT_SERVING after {took:?}");
        // The fault itself: how long the store stays down.
        tokio::time::sleep(timing().outage).await;
        match rig.store {
            ComponentSet::Postgres => rig.stack.postgres_mut().unwrap().start_again().await,
            _ => rig.stack.redis_mut().unwrap().start_again().await,
        }
        .unwrap();
        let took = readiness_becomes(&rig.task_api, true, Duration::from_secs(30)).await;
        assert!(
            took < Duration::from_secs(5),
            "SERVING again after {took:?}"
        );
    })
    .await;
    assert_clean(&audit);
    assert_felt(&audit);
}

#[tokio::test]
async fn store_outage_on_redis() {
    store_outage(ComponentSet::Redis).await;
}

#[tokio::test]
async fn store_outage_on_postgres() {
    store_outage(ComponentSet::Postgres).await;
}

async fn sidecar_crash(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let audit = under_load(&mut rig, "kill -9 daprd", async |rig: &mut Rig| {
        rig.task_api.sidecar.kill();
        let took = readiness_becomes(&rig.task_api, false, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "NOT_SERVING after {took:?}");
        // Calls fail fast, and as UNAVAILABLE.
        let mut client = rig.client().await;
        let started = Instant::now();
        let refused = client
            .get_task(pb::GetTaskRequest { id: "any".into() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The fault itself: how long the sidecar stays down.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rig.task_api.sidecar.start_again().await.unwrap();
        let took = readiness_becomes(&rig.task_api, true, Duration::from_secs(10)).await;
        assert!(
            took < Duration::from_secs(5),
            "SERVING again after {took:?}"
        );
    })
    .await;
    assert_clean(&audit);
    assert_felt(&audit);
}

#[tokio::test]
async fn sidecar_crash_on_redis() {
    sidecar_crash(ComponentSet::Redis).await;
}

#[tokio::test]
async fn sidecar_crash_on_postgres() {
    sidecar_crash(ComponentSet::Postgres).await;
}

#[tokio::test]
async fn sidecar_crash_on_kafka() {
    sidecar_crash(ComponentSet::Kafka).await;
}

async fn app_crash(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let audit = under_load(&mut rig, "kill -9 task-api", async |rig: &mut Rig| {
        rig.task_api.kill();
        // The fault itself: how long task-api stays down.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stack = &rig.stack;
        rig.task_api.start_again(stack).await;
    })
    .await;
    assert_clean(&audit);
    assert_felt(&audit);
}

#[tokio::test]
async fn app_crash_on_redis() {
    app_crash(ComponentSet::Redis).await;
}

#[tokio::test]
async fn app_crash_on_postgres() {
    app_crash(ComponentSet::Postgres).await;
}

#[tokio::test]
async fn app_crash_on_kafka() {
    app_crash(ComponentSet::Kafka).await;
}

/// Two task-api replicas (one app id, two daprd) share the consumer group: the events are split
/// between them, and when one is killed (the app and its sidecar, kill -9) mid-stream, the other
/// takes over what it held. Nothing is lost, nothing is published twice, every completion is
/// notified once.
async fn two_replicas(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let mut second = BinaryApp::start(&rig.stack, "task-api", &[("RUST_LOG", "info")]).await;
    let audit = under_load(
        &mut rig,
        "two replicas, one killed",
        async |rig: &mut Rig| {
            // Both replicas are relaying staged events and handling task-events before one dies
            // (each counts what it handled, by route).
            eventually(Duration::from_secs(60), || async {
                let outbox = second
                    .metric("task_api_events_handled_total", &[("route", "outbox")])
                    .await;
                let events = second
                    .metric("task_api_events_handled_total", &[("route", "notify")])
                    .await
                    + second
                        .metric("task_api_events_handled_total", &[("route", "noted")])
                        .await;
                (outbox > 0.0 && events > 0.0).then_some(())
            })
            .await;
            let _ = &rig.task_api;
            second.kill();
            second.sidecar.kill();
        },
    )
    .await;
    assert_clean(&audit);
}

#[tokio::test]
async fn two_replicas_on_redis() {
    two_replicas(ComponentSet::Redis).await;
}

#[tokio::test]
async fn two_replicas_on_kafka() {
    two_replicas(ComponentSet::Kafka).await;
}

/// notification-service is down (10 minutes in the full run): completions wait on the retry
/// topic, none becomes a dead letter, each is notified once when it is back.
async fn notification_outage(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let audit = under_load(
        &mut rig,
        "notification-service down",
        async |rig: &mut Rig| {
            let mut down = rig.notifications.take().unwrap();
            down.kill();
            down.sidecar.stop(Duration::from_secs(5));
            // The fault itself: how long notification-service stays down.
            tokio::time::sleep(timing().notification_outage).await;
            rig.notifications =
                Some(BinaryApp::start(&rig.stack, "notification-service", &[]).await);
        },
    )
    .await;
    assert_clean(&audit);
    let letters = devstack::http::get(
        rig.task_api.sidecar.http_port(),
        "/v1.0/invoke/task-api/method/dead-letters",
    )
    .await
    .unwrap();
    assert_eq!(
        letters.json().unwrap(),
        serde_json::json!([]),
        "no dead letters"
    );
}

#[tokio::test]
async fn notification_outage_on_redis() {
    notification_outage(ComponentSet::Redis).await;
}

#[tokio::test]
async fn notification_outage_on_postgres() {
    notification_outage(ComponentSet::Postgres).await;
}

#[tokio::test]
async fn notification_outage_on_kafka() {
    notification_outage(ComponentSet::Kafka).await;
}

/// Status changes as fast as 16 clients can make them, on 6 tasks (dozens to hundreds each),
/// while one of two replicas is frozen (SIGSTOP) for half the time: the events it holds lag far
/// behind their tasks' later changes. Every change is published once, every completion notified
/// once, however many changes came after it before its event was handled.
async fn fast_churn(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let second = BinaryApp::start(&rig.stack, "task-api", &[]).await;
    let client = rig.client().await;
    let outcomes = Arc::new(Outcomes::default());
    let mut ids = Vec::new();
    for n in 0..6 {
        let request = pb::CreateTaskRequest {
            title: format!("churned {n}"),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let task = retrying(&outcomes, || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.create_task(request).await }
        })
        .await
        .unwrap()
        .into_inner();
        outcomes.created.lock().unwrap().insert(task.id.clone());
        ids.push(task.id);
    }
    let churn = timing().churn;
    let until = Instant::now() + churn;
    let mut workers = JoinSet::new();
    for worker in 0..16usize {
        let (client, outcomes, ids) = (client.clone(), outcomes.clone(), ids.clone());
        workers.spawn(async move {
            let statuses = [
                pb::TaskStatus::InProgress,
                pb::TaskStatus::Completed,
                pb::TaskStatus::Pending,
            ];
            let mut n = worker;
            while Instant::now() < until {
                // Each task cycles through the statuses, whichever worker changes it.
                let (id, status) = (ids[n % ids.len()].clone(), statuses[(n / ids.len()) % 3]);
                n += 7;
                let _ = retrying(&outcomes, || {
                    let mut client = client.clone();
                    let id = id.clone();
                    async move {
                        let request = pb::UpdateTaskStatusRequest {
                            id,
                            status: status as i32,
                            etag: String::new(),
                        };
                        client.update_task_status(request).await
                    }
                })
                .await;
            }
        });
    }
    tokio::time::sleep(churn / 4).await;
    second.pause();
    tokio::time::sleep(churn / 2).await;
    second.resume();
    *outcomes.healed.lock().unwrap() = Some(std::time::SystemTime::now());
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let audit = audit(&mut rig, &outcomes, "fast churn, one replica frozen").await;
    assert_clean(&audit);
    let changes = audit.committed / ids.len();
    assert!(changes > 40, "only {changes} changes per task: {audit:#?}");
}

#[tokio::test]
async fn fast_churn_on_redis() {
    fast_churn(ComponentSet::Redis).await;
}

#[tokio::test]
async fn fast_churn_on_postgres() {
    fast_churn(ComponentSet::Postgres).await;
}

#[tokio::test]
async fn fast_churn_on_kafka() {
    fast_churn(ComponentSet::Kafka).await;
}

/// DeleteTask racing UpdateTaskStatus on the same tasks, neither with an ETag.
async fn racing_deletes(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let client = rig.client().await;
    let outcomes = Arc::new(Outcomes::default());
    let tasks = timing().workers * timing().tasks_per_worker;
    let mut ids = Vec::new();
    for n in 0..tasks {
        let mut client = client.clone();
        let task = client
            .create_task(pb::CreateTaskRequest {
                title: format!("contested {n}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(task.id);
    }
    let mut racers = JoinSet::new();
    for id in &ids {
        for delete in [false, true] {
            let mut client = client.clone();
            let id = id.clone();
            let outcomes = outcomes.clone();
            racers.spawn(async move {
                if delete {
                    if client
                        .delete_task(pb::DeleteTaskRequest {
                            id: id.clone(),
                            etag: String::new(),
                        })
                        .await
                        .is_ok()
                    {
                        outcomes.deleted.lock().unwrap().insert(id);
                    }
                } else {
                    let _ = client
                        .update_task_status(pb::UpdateTaskStatusRequest {
                            id,
                            status: pb::TaskStatus::Completed as i32,
                            etag: String::new(),
                        })
                        .await;
                }
            });
        }
    }
    while let Some(done) = racers.join_next().await {
        done.unwrap();
    }
    let audit = audit(&mut rig, &outcomes, "racing delete and update").await;
    assert_clean(&audit);
    assert_eq!(
        outcomes.deleted.lock().unwrap().len(),
        tasks,
        "every delete answered OK"
    );
}

#[tokio::test]
async fn racing_deletes_on_redis() {
    racing_deletes(ComponentSet::Redis).await;
}

#[tokio::test]
async fn racing_deletes_on_postgres() {
    racing_deletes(ComponentSet::Postgres).await;
}

/// A create retried with its request_id creates one task; without one, each call creates one.
async fn retried_creates(store: ComponentSet) {
    let mut rig = Rig::start(store).await;
    let mut client = rig.client().await;
    let request = pb::CreateTaskRequest {
        title: "retried".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let mut ids = BTreeSet::new();
    let mut repeats = JoinSet::new();
    for _ in 0..3 {
        let mut client = client.clone();
        let request = request.clone();
        repeats.spawn(async move { client.create_task(request).await.unwrap().into_inner() });
    }
    while let Some(task) = repeats.join_next().await {
        ids.insert(task.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "one task for one request_id: {ids:?}");
    let reused = client
        .create_task(pb::CreateTaskRequest {
            title: "something else".into(),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    for _ in 0..3 {
        client
            .create_task(pb::CreateTaskRequest {
                title: "no request id".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let audit = audit(&mut rig, &Outcomes::default(), "retried creates").await;
    assert_clean(&audit);
    assert_eq!(
        audit.committed, 4,
        "1 with a request_id, 3 without: {audit:#?}"
    );
}

#[tokio::test]
async fn retried_creates_on_redis() {
    retried_creates(ComponentSet::Redis).await;
}

#[tokio::test]
async fn retried_creates_on_postgres() {
    retried_creates(ComponentSet::Postgres).await;
}
