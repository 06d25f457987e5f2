//! A task-api process over the fakes, a broker that delivers like daprd, and an audit of what
//! happened: the use cases end to end, in milliseconds.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use super::{
    Alarms, Delivery, EventHandler, Outcome, Relay, Route, Tasks,
    fakes::{Fakes, World},
    in_flight::InFlight,
    listing::ListQuery,
    observer,
    outbox::Outbox,
    pacing::{Pacing, Waits},
    ports::Topic,
    publisher::Publisher,
    relay::{self, event_id},
    store::{dead_letters::DeadLetters, records},
    tasks::Retention,
};
use crate::domain::{
    EventKey, NewTask, TaskEvent, TaskEventType, TaskId, TaskRecord, TaskStatus, time,
};

/// The key the processes sign with.
pub(super) fn key() -> EventKey {
    EventKey::derive(b"test app token")
}

pub(super) const RETENTION: Retention = Retention {
    tombstones: Duration::from_secs(7 * 24 * 3600),
    request_ids: Duration::from_secs(24 * 3600),
};

/// One task-api process: its use cases over the world's fakes. A new one after a crash shares
/// nothing with the old one but the world (the store, the broker, the scheduler).
pub(super) struct Process {
    pub(crate) tasks: Tasks<Fakes>,
    pub(crate) events: EventHandler<Fakes>,
    pub(crate) scheduler: super::fakes::MemoryScheduler,
}

impl Process {
    pub(super) fn start(world: &World) -> Self {
        Self::start_with(world, true, Waits::SHORT)
    }

    /// A process whose batches wait as on a broker where waiting pays (see
    /// [`super::pacing`]).
    pub(super) fn start_paced(world: &World, waits: Waits) -> Self {
        Self::start_with(world, true, waits)
    }

    /// A process whose writers leave every event to the relay: to test the relay's own path.
    pub(super) fn start_relaying_only(world: &World) -> Self {
        Self::start_with(world, false, Waits::SHORT)
    }

    fn start_with(world: &World, direct: bool, waits: Waits) -> Self {
        let outbox = Outbox::new(world.broker.clone());
        let in_flight = InFlight::default();
        let mut publisher = Publisher::new(
            world.store.clone(),
            world.broker.clone(),
            key(),
            RETENTION.tombstones,
            in_flight.clone(),
            Pacing::fixed(waits),
        );
        if !direct {
            publisher = publisher.relaying_only();
        }
        let tasks = Tasks::<Fakes>::new(
            world.store.clone(),
            outbox.clone(),
            in_flight.clone(),
            RETENTION,
            publisher.clone(),
        );
        let relay = Relay::new(relay::Dependencies {
            store: world.store.clone(),
            outbox,
            alarms: Alarms::new(tasks.records().clone(), world.scheduler.clone()),
            in_flight,
            publisher,
        });
        let events = EventHandler::new(
            tasks.clone(),
            relay,
            world.notifier.clone(),
            world.broker.clone(),
            DeadLetters::new(world.store.clone()),
            key(),
        );
        Self {
            tasks,
            events,
            scheduler: world.scheduler.clone(),
        }
    }

    /// A pending task of priority 2.
    pub(super) async fn create(&self, title: &str) -> TaskId {
        let new = NewTask::parse(title, None, Some(2)).expect("a valid task");
        self.tasks
            .create(new, None)
            .await
            .expect("created")
            .value
            .id
    }

    /// Delivers what the broker holds, as daprd would, until nothing is left to do (bounded).
    /// Returns how many deliveries were acknowledged.
    pub(super) async fn deliver(&self, world: &World) -> usize {
        let mut acknowledged = 0;
        for _ in 0..200 {
            let mut progress = 0;
            for topic in [
                Topic::Outbox,
                Topic::OutboxRetry,
                Topic::Events,
                Topic::Retry,
            ] {
                progress += self.deliver_batch(world, topic).await;
            }
            acknowledged += progress;
            if progress == 0 {
                break;
            }
        }
        acknowledged
    }

    async fn deliver_batch(&self, world: &World, topic: Topic) -> usize {
        let batch = world.broker.unacknowledged(topic, 100);
        let mut routed = Vec::new();
        let mut acknowledged = 0;
        for delivered in &batch {
            match route(topic, &delivered.message.data) {
                Some(route) => routed.push((delivered, route)),
                // daprd acknowledges what no rule matches, without a call.
                None => {
                    world.broker.ack(topic, delivered.seq);
                    acknowledged += 1;
                }
            }
        }
        let ids: Vec<String> = routed
            .iter()
            .map(|(d, _)| d.message.id.clone().unwrap_or_else(|| d.seq.to_string()))
            .collect();
        let deliveries: Vec<Delivery> = routed
            .iter()
            .zip(&ids)
            .map(|((delivered, route), id)| Delivery {
                id,
                topic: "topic",
                route: *route,
                data: &delivered.message.data,
                data_content_type: "application/json",
                published_at: Some(time::now()),
                // As daprd hands it over: the CloudEvent's traceparent.
                traceparent: delivered.message.traceparent.as_deref(),
                partition: None,
            })
            .collect();
        let outcomes = self.events.handle(&deliveries).await;
        for ((delivered, _), outcome) in routed.iter().zip(outcomes) {
            if !matches!(outcome, Outcome::Retry(_)) {
                world.broker.ack(topic, delivered.seq);
                acknowledged += 1;
            }
        }
        acknowledged
    }

    /// Every task the lists name, page by page, with how often each is named.
    pub(super) async fn listed(&self) -> BTreeMap<TaskId, usize> {
        let mut named = BTreeMap::new();
        let mut token = String::new();
        for _ in 0..1000 {
            let query = ListQuery::parse(None, None, false, 100, &token).expect("a valid query");
            let page = self.tasks.list(&query).await.expect("a page");
            for task in page.tasks {
                *named.entry(task.value.id).or_insert(0) += 1;
            }
            match page.next_page_token {
                Some(next) => token = next.encode(),
                None => return named,
            }
        }
        panic!("more than 1000 pages");
    }
}

/// The subscription each topic's message would be delivered on, as task-api's subscriptions
/// route them in daprd (`None`: not JSON, which daprd cannot route).
fn route(topic: Topic, data: &[u8]) -> Option<Route> {
    match topic {
        Topic::Outbox => Some(Route::Outbox),
        Topic::OutboxRetry => Some(Route::OutboxRetry),
        Topic::Retry => Some(Route::Retry),
        Topic::Events => {
            let json: serde_json::Value = serde_json::from_slice(data).ok()?;
            let kind = json.get("event_type")?.as_str()?;
            if ["task.completed", "task.due", "task.reminder"].contains(&kind) {
                Some(Route::Notify)
            } else if json.get("revision").is_none() {
                Some(Route::Adopt)
            } else {
                Some(Route::Noted)
            }
        }
    }
}

/// What an audit counts; every list must be empty.
#[derive(Debug, Default)]
pub(super) struct Audit {
    pub(crate) committed: usize,
    pub(crate) published: usize,
    pub(crate) lost: Vec<String>,
    pub(crate) invented: Vec<String>,
    pub(crate) duplicated: Vec<String>,
    pub(crate) resurrected: Vec<String>,
    pub(crate) misfiled: Vec<String>,
    pub(crate) notification_missing: Vec<String>,
    pub(crate) notification_invented: Vec<String>,
}

impl Audit {
    pub(super) fn assert_clean(&self, context: &str) {
        let problems = [
            ("lost", &self.lost),
            ("invented", &self.invented),
            ("duplicated", &self.duplicated),
            ("resurrected", &self.resurrected),
            ("misfiled", &self.misfiled),
            ("notification missing", &self.notification_missing),
            ("notification invented", &self.notification_invented),
        ];
        for (what, list) in problems {
            assert!(list.is_empty(), "{context}: {what}: {list:?} ({self:?})");
        }
    }
}

/// Counts, from every task document that ever landed and every event ever published, what was
/// lost, invented, duplicated, resurrected or misfiled, and which notifications are missing or
/// have no completion behind them.
pub(super) async fn audit(world: &World, process: &Process, tasks: &[TaskId]) -> Audit {
    let mut audit = Audit::default();
    let mut committed: HashMap<String, TaskEventType> = HashMap::new();
    for id in tasks {
        let key = records::task_key(id);
        let mut deleted = false;
        for value in world.store.written(&key) {
            let record = records::from_json(&key, &value).expect("a readable record");
            if deleted && !record.is_deleted() {
                audit.resurrected.push(id.to_string());
            }
            deleted |= record.is_deleted();
            if let Some(change) = record.unpublished.at(record.revision) {
                committed.insert(event_id(id.as_str(), record.revision), change.event_type);
            }
        }
    }
    audit.committed = committed.len();
    let mut published: HashMap<String, usize> = HashMap::new();
    for message in world.broker.published(Topic::Events) {
        let event = TaskEvent::from_json(&message.data).expect("a task event");
        let id = event_id(&event.task_id, event.revision.expect("a revision"));
        assert_eq!(message.id.as_deref(), Some(id.as_str()), "CloudEvent id");
        assert!(key().verify(&event), "published events are signed");
        *published.entry(id.clone()).or_default() += 1;
        if committed.get(&id) != Some(&event.event_type) {
            audit.invented.push(id);
        }
    }
    audit.published = published.len();
    audit.duplicated = published
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    audit.lost = committed
        .keys()
        .filter(|id| !published.contains_key(*id))
        .cloned()
        .collect();
    audit_lists(&mut audit, world, process, tasks).await;
    audit_notifications(&mut audit, world, &committed);
    audit
}

async fn audit_lists(audit: &mut Audit, world: &World, process: &Process, tasks: &[TaskId]) {
    let listed = process.listed().await;
    for id in tasks {
        let key = records::task_key(id);
        let live = world
            .store
            .peek(&key)
            .map(|v| records::from_json(&key, &v).expect("a record"))
            .is_some_and(|r: TaskRecord| !r.is_deleted());
        let times = listed.get(id).copied().unwrap_or(0);
        if times != usize::from(live) {
            audit
                .misfiled
                .push(format!("{id}: live {live}, listed {times} times"));
        }
    }
}

fn audit_notifications(
    audit: &mut Audit,
    world: &World,
    committed: &HashMap<String, TaskEventType>,
) {
    let notifiable: HashSet<&String> = committed
        .iter()
        .filter(|(_, t)| {
            matches!(
                t,
                TaskEventType::StatusChanged(TaskStatus::Completed) | TaskEventType::Announced(_)
            )
        })
        .map(|(id, _)| id)
        .collect();
    let received: HashSet<String> = world
        .notifier
        .received()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    audit.notification_missing = notifiable
        .iter()
        .filter(|id| !received.contains(id.as_str()))
        .map(|id| id.to_string())
        .collect();
    audit.notification_invented = received
        .iter()
        .filter(|key| !notifiable.contains(key))
        .cloned()
        .collect();
}

/// Moves this test's wall clock past the time a staged event waits for its write.
pub(super) fn after_the_confirmation_window() {
    time::test_clock::advance(relay::CONFIRM_WITHIN + Duration::from_secs(1));
}

/// Moves this test's wall clock past the time an open claim is left alone.
pub(super) fn past_the_quarantine() {
    time::test_clock::advance(
        relay::CLAIM_HOLDS.max(relay::GRACE).max(observer::REJOIN) + Duration::from_secs(1),
    );
}
