//! In-memory implementations of the ports, for tests of the use cases.
//!
//! They keep the rules of the real ones that the use cases rely on (ETags change on every write,
//! a conditional write fails when its condition does not hold, a bulk publish answers per
//! message) and add what real ones cannot do on demand: fail, or stop for good after a chosen
//! number of side effects, as a crashed process would. A side effect is a write, a delete, a
//! publish, a job scheduled or cancelled, a notification sent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use super::ports::{
    AlarmJob, Broker, BrokerError, Cause, Condition, KeyValueStore, Message, Notifier, NotifyError,
    Ports, Scheduler, SchedulerError, StoreError, Topic, Write,
};
use crate::domain::{Alarm, KeyedNotification, Notification, TaskId, Versioned};

/// Why a fake refused: the test made it fail.
#[derive(Debug, thiserror::Error)]
#[error("injected failure: {0}")]
pub(crate) struct Injected(&'static str);

fn injected(what: &'static str) -> Cause {
    Box::new(Injected(what))
}

/// What the fakes share: the count of side effects and the failures a test asks for.
#[derive(Clone, Default)]
pub(crate) struct Faults(Arc<FaultState>);

#[derive(Default)]
struct FaultState {
    /// Side effects done so far.
    done: AtomicUsize,
    /// Side effects left before the crash; `None` while no crash is planned.
    left: Mutex<Option<usize>>,
    /// The crash lets its first side effect land before failing (an outcome unknown to the
    /// caller) instead of failing before it lands.
    lands: Mutex<bool>,
    /// Dependencies failing every call (an outage), by name.
    down: Mutex<HashSet<&'static str>>,
}

impl Faults {
    /// After `n` more side effects, every side effect fails without landing.
    pub(crate) fn crash_after(&self, n: usize) {
        *self.0.left.lock().unwrap() = Some(n);
        *self.0.lands.lock().unwrap() = false;
    }

    /// After `n` more side effects, the next one lands but its caller sees a failure, and every
    /// later one fails without landing.
    pub(crate) fn crash_after_landing(&self, n: usize) {
        *self.0.left.lock().unwrap() = Some(n);
        *self.0.lands.lock().unwrap() = true;
    }

    /// No crash planned any more, nothing down.
    pub(crate) fn heal(&self) {
        *self.0.left.lock().unwrap() = None;
        self.0.down.lock().unwrap().clear();
    }

    pub(crate) fn take_down(&self, what: &'static str) {
        self.0.down.lock().unwrap().insert(what);
    }

    pub(crate) fn bring_up(&self, what: &'static str) {
        self.0.down.lock().unwrap().remove(what);
    }

    /// Side effects done so far.
    pub(crate) fn side_effects(&self) -> usize {
        self.0.done.load(Ordering::SeqCst)
    }

    fn is_down(&self, what: &'static str) -> bool {
        self.0.down.lock().unwrap().contains(what)
    }

    /// Whether a side effect of `what` may happen: `Ok(true)` it lands and succeeds,
    /// `Ok(false)` it lands but fails (the crash), `Err` it fails without landing.
    fn effect(&self, what: &'static str) -> Result<bool, Cause> {
        if self.is_down(what) {
            return Err(injected(what));
        }
        let mut left = self.0.left.lock().unwrap();
        match left.as_mut() {
            Some(0) => Err(injected(what)),
            Some(n) => {
                *n -= 1;
                self.0.done.fetch_add(1, Ordering::SeqCst);
                let crash_now = *n == 0 && *self.0.lands.lock().unwrap();
                if crash_now {
                    // It landed; from now on nothing does.
                    *self.0.lands.lock().unwrap() = false;
                }
                Ok(!crash_now)
            }
            None => {
                self.0.done.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            }
        }
    }
}

/// Value and ETag by key.
type Documents = BTreeMap<String, (Vec<u8>, String)>;

/// Documents with ETags, in memory.
#[derive(Clone, Default)]
pub(crate) struct MemoryStore {
    data: Arc<Mutex<Documents>>,
    /// Every value that landed, by key, in order: what an audit takes as the truth.
    written: Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>,
    versions: Arc<AtomicU64>,
    /// The keys each read call asked for, in order.
    read_calls: Arc<Mutex<Vec<Vec<String>>>>,
    /// The keys each write call (`put` or `put_many`) carried, in order.
    write_calls: Arc<Mutex<Vec<Vec<String>>>>,
    /// The keys of conditional writes refused, in order.
    refused: Arc<Mutex<Vec<String>>>,
    /// Whether a write answers with its new ETag, as a store whose ETags count writes does.
    tells_etags: bool,
    /// Values another writer puts under their key right after its next read.
    written_after_read: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    faults: Faults,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_faults(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// A store whose writes answer with their new ETag (as `state.redis` through the sidecar
    /// adapter does); by default, as with most stores, only a read tells it.
    pub(crate) fn telling_etags(mut self) -> Self {
        self.tells_etags = true;
        self
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.data.lock().unwrap().keys().cloned().collect()
    }

    /// Every value that landed under `key`, oldest first.
    pub(crate) fn written(&self, key: &str) -> Vec<Vec<u8>> {
        self.written
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Writes `value` under `key` as another program would, past every fault.
    pub(crate) fn put_raw(&self, key: &str, value: &[u8]) {
        let etag = self.versions.fetch_add(1, Ordering::SeqCst).to_string();
        self.data
            .lock()
            .unwrap()
            .insert(key.to_string(), (value.to_vec(), etag));
    }

    /// Writes `value` under `key` as another program would, right after the next read of `key`:
    /// a change landing between two reads of the same document.
    pub(crate) fn put_raw_after_next_read(&self, key: &str, value: &[u8]) {
        self.written_after_read
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_vec());
    }

    /// Lands the writes planned for after a read of `keys`.
    fn after_reading(&self, keys: &[String]) {
        for key in keys {
            let planned = self.written_after_read.lock().unwrap().remove(key);
            if let Some(value) = planned {
                self.put_raw(key, &value);
            }
        }
    }

    /// Read calls made so far (a `get_many` is one).
    pub(crate) fn reads(&self) -> usize {
        self.read_calls.lock().unwrap().len()
    }

    /// Read calls so far that asked for a key starting with any of `prefixes`.
    pub(crate) fn reads_of(&self, prefixes: &[&str]) -> usize {
        self.read_calls
            .lock()
            .unwrap()
            .iter()
            .filter(|keys| {
                keys.iter()
                    .any(|key| prefixes.iter().any(|p| key.starts_with(p)))
            })
            .count()
    }

    /// The keys of each write call so far that wrote a key starting with `prefix`.
    pub(crate) fn write_calls_of(&self, prefix: &str) -> Vec<Vec<String>> {
        self.write_calls
            .lock()
            .unwrap()
            .iter()
            .filter(|keys| keys.iter().any(|key| key.starts_with(prefix)))
            .cloned()
            .collect()
    }

    /// Conditional writes refused so far under a key starting with `prefix`.
    pub(crate) fn refused(&self, prefix: &str) -> usize {
        self.refused
            .lock()
            .unwrap()
            .iter()
            .filter(|key| key.starts_with(prefix))
            .count()
    }

    /// The value under `key`, whatever faults are planned.
    pub(crate) fn peek(&self, key: &str) -> Option<Vec<u8>> {
        self.data.lock().unwrap().get(key).map(|(v, _)| v.clone())
    }

    fn read(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        if self.faults.is_down("store") {
            return Err(StoreError::Unavailable {
                source: injected("store"),
            });
        }
        Ok(self
            .data
            .lock()
            .unwrap()
            .get(key)
            .map(|(value, etag)| Versioned {
                value: value.clone(),
                etag: etag.clone(),
            }))
    }

    /// Applies `write`; the ETag it left.
    fn apply(&self, write: Write) -> Result<String, StoreError> {
        let lands = self
            .faults
            .effect("store")
            .map_err(|source| StoreError::Unavailable { source })?;
        let mut data = self.data.lock().unwrap();
        let current = data.get(&write.key).map(|(_, etag)| etag.clone());
        let allowed = match (&write.condition, &current) {
            (Condition::Any, _) | (Condition::IfAbsent, None) => true,
            (Condition::IfMatch(expected), Some(actual)) => expected == actual,
            _ => false,
        };
        if !allowed {
            self.refused.lock().unwrap().push(write.key.clone());
            return Err(StoreError::Conflict { key: write.key });
        }
        let etag = self.versions.fetch_add(1, Ordering::SeqCst).to_string();
        self.written
            .lock()
            .unwrap()
            .entry(write.key.clone())
            .or_default()
            .push(write.value.clone());
        data.insert(write.key, (write.value, etag.clone()));
        if lands {
            Ok(etag)
        } else {
            Err(StoreError::Unavailable {
                source: injected("store (landed)"),
            })
        }
    }
}

impl KeyValueStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        tokio::task::yield_now().await;
        self.read_calls.lock().unwrap().push(vec![key.to_string()]);
        let read = self.read(key);
        self.after_reading(&[key.to_string()]);
        read
    }

    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, StoreError> {
        tokio::task::yield_now().await;
        self.read_calls.lock().unwrap().push(keys.to_vec());
        let read = keys.iter().map(|key| self.read(key)).collect();
        self.after_reading(keys);
        read
    }

    async fn put(&self, write: Write) -> Result<Option<String>, StoreError> {
        tokio::task::yield_now().await;
        self.write_calls
            .lock()
            .unwrap()
            .push(vec![write.key.clone()]);
        let etag = self.apply(write)?;
        Ok(self.tells_etags.then_some(etag))
    }

    async fn put_many(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.write_calls
            .lock()
            .unwrap()
            .push(writes.iter().map(|w| w.key.clone()).collect());
        let mut first_error = None;
        for write in writes {
            if let Err(error) = self.apply(write) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        let lands = self
            .faults
            .effect("store")
            .map_err(|source| StoreError::Unavailable { source })?;
        self.data.lock().unwrap().remove(key);
        if lands {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                source: injected("store (landed)"),
            })
        }
    }
}

/// A message as a topic holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Position in the topic.
    pub(crate) seq: u64,
    pub(crate) message: Message,
}

/// Messages by topic, each with whether it was acknowledged.
type Topics = HashMap<Topic, Vec<(Delivered, bool)>>;

/// Topics in memory. Messages stay until acknowledged; a test delivers them itself.
#[derive(Clone, Default)]
pub(crate) struct MemoryBroker {
    topics: Arc<Mutex<Topics>>,
    next: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    /// How many messages each publish call carried, by topic.
    call_sizes: Arc<Mutex<HashMap<Topic, Vec<usize>>>>,
    faults: Faults,
}

impl MemoryBroker {
    pub(crate) fn with_faults(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// How many publish calls were made.
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// How many messages each publish call to `topic` carried, in order.
    pub(crate) fn call_sizes(&self, topic: Topic) -> Vec<usize> {
        self.call_sizes
            .lock()
            .unwrap()
            .get(&topic)
            .cloned()
            .unwrap_or_default()
    }

    /// Every message ever published to `topic`, acknowledged or not, in order.
    pub(crate) fn published(&self, topic: Topic) -> Vec<Message> {
        self.topics
            .lock()
            .unwrap()
            .get(&topic)
            .map(|m| m.iter().map(|(d, _)| d.message.clone()).collect())
            .unwrap_or_default()
    }

    /// The messages of `topic` not acknowledged yet, oldest first, at most `max`.
    pub(crate) fn unacknowledged(&self, topic: Topic, max: usize) -> Vec<Delivered> {
        self.topics
            .lock()
            .unwrap()
            .get(&topic)
            .map(|m| {
                m.iter()
                    .filter(|(_, acked)| !acked)
                    .take(max)
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn ack(&self, topic: Topic, seq: u64) {
        if let Some(messages) = self.topics.lock().unwrap().get_mut(&topic) {
            for (delivered, acked) in messages.iter_mut() {
                if delivered.seq == seq {
                    *acked = true;
                }
            }
        }
    }
}

impl Broker for MemoryBroker {
    async fn publish(&self, topic: Topic, messages: Vec<Message>) -> Vec<Result<(), BrokerError>> {
        tokio::task::yield_now().await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_sizes
            .lock()
            .unwrap()
            .entry(topic)
            .or_default()
            .push(messages.len());
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            let lands = match self.faults.effect("broker") {
                Ok(lands) => lands,
                Err(source) => {
                    results.push(Err(BrokerError::Unavailable { source }));
                    continue;
                }
            };
            let seq = self.next.fetch_add(1, Ordering::SeqCst);
            self.topics
                .lock()
                .unwrap()
                .entry(topic)
                .or_default()
                .push((Delivered { seq, message }, false));
            results.push(if lands {
                Ok(())
            } else {
                Err(BrokerError::Unavailable {
                    source: injected("broker (landed)"),
                })
            });
        }
        results
    }
}

/// Jobs in memory, by task and alarm.
#[derive(Clone, Default)]
pub(crate) struct MemoryScheduler {
    jobs: Arc<Mutex<HashMap<(TaskId, Alarm), AlarmJob>>>,
    /// Jobs delivered at least once (a test fires them).
    fired: Arc<Mutex<HashSet<(TaskId, Alarm)>>>,
    faults: Faults,
}

impl MemoryScheduler {
    pub(crate) fn with_faults(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// A job was delivered and taken: the scheduler forgets a one-shot job.
    pub(crate) fn forget(&self, task: &TaskId, alarm: Alarm) {
        self.jobs.lock().unwrap().remove(&(task.clone(), alarm));
    }

    /// Whether a test fired this job (and its delivery may be repeated).
    pub(crate) fn was_fired(&self, task: &TaskId, alarm: Alarm) -> bool {
        self.fired.lock().unwrap().contains(&(task.clone(), alarm))
    }

    /// Notes that a job is being delivered.
    pub(crate) fn firing(&self, task: &TaskId, alarm: Alarm) {
        self.fired.lock().unwrap().insert((task.clone(), alarm));
    }

    pub(crate) fn job(&self, task: &TaskId, alarm: Alarm) -> Option<AlarmJob> {
        self.jobs
            .lock()
            .unwrap()
            .get(&(task.clone(), alarm))
            .cloned()
    }
}

impl Scheduler for MemoryScheduler {
    async fn schedule(&self, job: &AlarmJob) -> Result<(), SchedulerError> {
        tokio::task::yield_now().await;
        self.faults
            .effect("scheduler")
            .map_err(|source| SchedulerError::Unavailable { source })?;
        self.jobs
            .lock()
            .unwrap()
            .insert((job.task_id.clone(), job.alarm), job.clone());
        Ok(())
    }

    async fn cancel(&self, task_id: &TaskId, alarm: Alarm) -> Result<(), SchedulerError> {
        tokio::task::yield_now().await;
        self.faults
            .effect("scheduler")
            .map_err(|source| SchedulerError::Unavailable { source })?;
        self.jobs.lock().unwrap().remove(&(task_id.clone(), alarm));
        Ok(())
    }
}

/// notification-service in memory: keeps one notification per key, as the real one does.
#[derive(Clone, Default)]
pub(crate) struct MemoryNotifier {
    received: Arc<Mutex<Vec<(String, Notification)>>>,
    /// Deliveries attempted, per key, kept or not.
    attempts: Arc<Mutex<HashMap<String, usize>>>,
    /// Calls made (one per batch).
    calls: Arc<Mutex<usize>>,
    /// Keys whose notifications the receiver refuses as invalid.
    refused: Arc<Mutex<Vec<String>>>,
    faults: Faults,
}

impl MemoryNotifier {
    pub(crate) fn with_faults(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// The notifications kept, with their keys, in order of arrival.
    pub(crate) fn received(&self) -> Vec<(String, Notification)> {
        self.received.lock().unwrap().clone()
    }

    /// Refuses, from now on, the notification under `key` (as invalid); the others of its batch
    /// are kept.
    pub(crate) fn refuse(&self, key: &str) {
        self.refused.lock().unwrap().push(key.to_string());
    }

    /// How many calls were made (a batch is one).
    pub(crate) fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }

    /// How many times a notification with `key` was sent.
    pub(crate) fn attempts(&self, key: &str) -> usize {
        self.attempts.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

impl Notifier for MemoryNotifier {
    /// One call for the whole batch, as the real receiver takes it: one side effect, which
    /// lands or fails for all of them.
    async fn notify(&self, notifications: &[KeyedNotification]) -> Vec<Result<(), NotifyError>> {
        tokio::task::yield_now().await;
        *self.calls.lock().unwrap() += 1;
        {
            let mut attempts = self.attempts.lock().unwrap();
            for item in notifications {
                *attempts.entry(item.key.clone()).or_default() += 1;
            }
        }
        let failed = |source| {
            super::shared_causes(source, notifications.len())
                .map(|source| Err(NotifyError::Unavailable { source }))
                .collect()
        };
        let lands = match self.faults.effect("notifier") {
            Ok(lands) => lands,
            Err(source) => return failed(source),
        };
        let refused = self.refused.lock().unwrap().clone();
        let mut results = Vec::with_capacity(notifications.len());
        let mut received = self.received.lock().unwrap();
        for item in notifications {
            if refused.contains(&item.key) {
                results.push(Err(NotifyError::Refused {
                    source: injected("notifier (refused)"),
                }));
                continue;
            }
            if !received.iter().any(|(k, _)| *k == item.key) {
                received.push((item.key.clone(), item.notification.clone()));
            }
            results.push(Ok(()));
        }
        drop(received);
        if lands {
            results
        } else {
            failed(injected("notifier (landed)"))
        }
    }
}

/// The fakes as one set of ports.
#[derive(Clone)]
pub(crate) struct Fakes;

impl Ports for Fakes {
    type Store = MemoryStore;
    type Broker = MemoryBroker;
    type Scheduler = MemoryScheduler;
    type Notifier = MemoryNotifier;
}

/// One world of fakes sharing their faults.
#[derive(Clone, Default)]
pub(crate) struct World {
    pub(crate) faults: Faults,
    pub(crate) store: MemoryStore,
    pub(crate) broker: MemoryBroker,
    pub(crate) scheduler: MemoryScheduler,
    pub(crate) notifier: MemoryNotifier,
}

impl World {
    pub(crate) fn new() -> Self {
        let faults = Faults::default();
        Self {
            store: MemoryStore::with_faults(faults.clone()),
            broker: MemoryBroker::with_faults(faults.clone()),
            scheduler: MemoryScheduler::with_faults(faults.clone()),
            notifier: MemoryNotifier::with_faults(faults.clone()),
            faults,
        }
    }
}
