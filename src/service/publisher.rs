//! Publishing events on `task-events` and recording them in their ledgers, for both ways an
//! event goes out:
//!
//! - **Directly, by its writer.** Once a change's record is written, the process that wrote it
//!   publishes its event ([`Publisher::offer`]) off the request's path, batched with its
//!   neighbours' (at once, or on a broker where it pays, while changes keep coming, one publish
//!   per spacing; see [`super::pacing`]): no store read, no claim written first. The change
//!   itself is the claim: a committed change is left to its writer for [`WRITER_HOLDS`] after it
//!   was staged (its staged copy, if another process gets it, waits that long; see the relay).
//! - **By the relay**, for what the writer did not publish (it died, the publish failed, the
//!   change moved the task's jobs), after claiming it in the ledger.
//!
//! Either way an event counts as published for others once its ledger says so. What this
//! process published, and whether its ledger write is done, is kept in [`Published`], so that
//! its own relay and its own `task-events` subscription need no read to know it.

use std::{
    collections::{HashMap, VecDeque, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{
    in_flight::InFlight,
    outbox::StagedEvent,
    pacing::Pacing,
    ports::{Broker, BrokerError, Message, Ports, Topic},
    relay::event_id,
    store::published::{Entry, LedgerAsRead, Ledgers, Listed},
};
use crate::{
    domain::{EventKey, TaskId, TaskRecord, time},
    telemetry::{
        metrics::{METRICS, seconds_since},
        spans,
    },
};

/// A writer publishes its change's event directly only if it gets to it this soon after staging,
pub(crate) const DIRECT_WITHIN: Duration = Duration::from_secs(2);
/// and gives the publish this long.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(3);
/// So a committed change is its writer's to publish for this long after it was staged.
pub(crate) const WRITER_HOLDS: Duration = Duration::from_secs(6);
/// Events remembered as published and recorded (a few megabytes at most).
const REMEMBERED: usize = 16_384;
/// The most events one direct publish carries.
const MAX_BATCH: usize = 256;

/// An event on its way to `task-events`, with the record that committed its change.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) id: TaskId,
    pub(crate) staged: StagedEvent,
    pub(crate) record: TaskRecord,
    /// Its task's ledger as read with the record the change was made from, if it was.
    pub(crate) ledger: Option<LedgerAsRead>,
}

/// What this process knows of its own publish of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Offered or being published.
    Pending,
    /// Published, and recorded in its ledger.
    Recorded,
    /// Published, but not recorded in its ledger (the store failed): whoever sees it on
    /// `task-events` records it.
    Landed,
    /// The publish failed or its outcome is unknown (it may have landed), at this time.
    Failed(DateTime<Utc>),
    /// Not published directly (offered too late, or it moves the task's jobs).
    Skipped,
}

/// This process's publishes by (task, revision), as hashes: pending ones until they end, ended
/// ones among the last [`REMEMBERED`] (a few dozen bytes each).
#[derive(Clone, Default)]
pub(crate) struct Published(Arc<Mutex<Remembered>>);

#[derive(Default)]
struct Remembered {
    slots: HashMap<u64, Slot>,
    ended: VecDeque<u64>,
}

enum Slot {
    /// Waiters subscribe to hear how it ends.
    Pending(watch::Sender<State>),
    Ended(State),
}

impl Published {
    fn key(id: &TaskId, revision: u64) -> u64 {
        let mut hasher = DefaultHasher::new();
        (id.as_str(), revision).hash(&mut hasher);
        hasher.finish()
    }

    fn set(&self, id: &TaskId, revision: u64, state: State) {
        let key = Self::key(id, revision);
        let mut remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state == State::Pending {
            if !matches!(remembered.slots.get(&key), Some(Slot::Pending(_))) {
                remembered
                    .slots
                    .insert(key, Slot::Pending(watch::channel(state).0));
            }
            return;
        }
        if let Some(Slot::Pending(waiters)) = remembered.slots.insert(key, Slot::Ended(state)) {
            waiters.send_replace(state);
        }
        remembered.ended.push_back(key);
        while remembered.ended.len() > REMEMBERED {
            let Some(old) = remembered.ended.pop_front() else {
                break;
            };
            if matches!(remembered.slots.get(&old), Some(Slot::Ended(_))) {
                remembered.slots.remove(&old);
            }
        }
    }

    /// What is known of `revision` of `id` now.
    fn peek(&self, id: &TaskId, revision: u64) -> Option<State> {
        let remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match remembered.slots.get(&Self::key(id, revision))? {
            Slot::Pending(_) => Some(State::Pending),
            Slot::Ended(state) => Some(*state),
        }
    }

    /// What is known of `revision` of `id`, waiting up to `wait` while it is pending.
    pub(crate) async fn state(&self, id: &TaskId, revision: u64, wait: Duration) -> Option<State> {
        let mut receiver = {
            let remembered = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match remembered.slots.get(&Self::key(id, revision))? {
                Slot::Ended(state) => return Some(*state),
                Slot::Pending(waiters) => waiters.subscribe(),
            }
        };
        let settled = tokio::time::timeout(wait, receiver.wait_for(|s| *s != State::Pending))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|state| *state);
        Some(settled.unwrap_or_else(|| *receiver.borrow()))
    }
}

pub(crate) struct Publisher<P: Ports> {
    broker: P::Broker,
    ledgers: Ledgers<P::Store>,
    key: EventKey,
    tombstone_ttl: Duration,
    in_flight: InFlight,
    published: Published,
    direct: mpsc::UnboundedSender<Outgoing>,
}

impl<P: Ports> Clone for Publisher<P> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            ledgers: self.ledgers.clone(),
            key: self.key.clone(),
            tombstone_ttl: self.tombstone_ttl,
            in_flight: self.in_flight.clone(),
            published: self.published.clone(),
            direct: self.direct.clone(),
        }
    }
}

impl<P: Ports> Publisher<P> {
    /// Must be called within a tokio runtime: it starts the task that publishes what writers
    /// offer, which ends when the last clone is dropped.
    pub(crate) fn new(
        store: P::Store,
        broker: P::Broker,
        key: EventKey,
        tombstone_ttl: Duration,
        in_flight: InFlight,
        pacing: Pacing,
    ) -> Self {
        let (direct, offered) = mpsc::unbounded_channel();
        let publisher = Self {
            broker,
            ledgers: Ledgers::new(store),
            key,
            tombstone_ttl,
            in_flight,
            published: Published::default(),
            direct,
        };
        tokio::spawn(publish_offered(publisher.without_queue(), offered, pacing));
        publisher
    }

    /// A handle for the background task: its queue is closed, so the task ends once every
    /// other handle is gone.
    fn without_queue(&self) -> Self {
        let (closed, _) = mpsc::unbounded_channel();
        Self {
            direct: closed,
            ..self.clone()
        }
    }

    /// This publisher with writers' direct publishing off, as when its queue is gone: every
    /// change goes through the relay.
    #[cfg(test)]
    pub(crate) fn relaying_only(self) -> Self {
        self.without_queue()
    }

    pub(crate) fn published(&self) -> &Published {
        &self.published
    }

    /// Hands a committed change's event over to be published directly, without waiting.
    pub(crate) fn offer(&self, outgoing: Outgoing) {
        let (id, revision) = (outgoing.id.clone(), outgoing.staged.revision());
        if outgoing.staged.reschedules {
            // Its jobs must be in step first: the relay does that.
            self.published.set(&id, revision, State::Skipped);
            return;
        }
        self.published.set(&id, revision, State::Pending);
        if self.direct.send(outgoing).is_err() {
            self.published.set(&id, revision, State::Skipped);
        }
    }

    /// Publishes `events` (signed, under their stable ids) in one call and records those
    /// published in their ledgers. One result per event, in order.
    pub(crate) async fn publish(&self, events: &[Outgoing]) -> Vec<Result<(), BrokerError>> {
        if events.is_empty() {
            return Vec::new();
        }
        for event in events {
            self.published
                .set(&event.id, event.staged.revision(), State::Pending);
        }
        let (traced, messages): (Vec<tracing::Span>, Vec<Message>) =
            events.iter().map(|e| self.message(e)).unzip();
        let results = match tokio::time::timeout(
            PUBLISH_DEADLINE,
            self.broker.publish(Topic::Events, messages),
        )
        .await
        {
            Ok(results) => results,
            Err(_) => events
                .iter()
                .map(|_| {
                    Err(BrokerError::Failed {
                        source: "no answer within the publish deadline".into(),
                    })
                })
                .collect(),
        };
        spans::end_each(traced, results.iter().map(Result::is_ok));
        let landed: Vec<&Outgoing> = events
            .iter()
            .zip(&results)
            .filter_map(|(event, result)| match result {
                Ok(()) => Some(event),
                Err(error) => {
                    // It may have landed all the same.
                    tracing::warn!(task_id = %event.id, revision = event.staged.revision(), error = %super::chain(error), "event not published");
                    let failed = State::Failed(time::now());
                    self.published
                        .set(&event.id, event.staged.revision(), failed);
                    None
                }
            })
            .collect();
        self.record(&landed).await;
        results
    }

    /// An event as published: signed, under its stable id, in a `publish` span of its own that
    /// continues the change's trace (and that subscribers continue).
    fn message(&self, outgoing: &Outgoing) -> (tracing::Span, Message) {
        let staged = &outgoing.staged;
        let span = spans::publish(
            staged.event.event_type.as_str(),
            staged.traceparent.as_deref(),
        );
        let mut event = staged.event.clone();
        event.signature = None;
        event.signature = Some(self.key.sign(&event));
        let message = Message {
            id: Some(event_id(&event.task_id, staged.revision())),
            data: event.to_json(),
            // Unsampled, the change's own is passed on, so subscribers follow its decision.
            traceparent: spans::traceparent_of(&span).or_else(|| staged.traceparent.clone()),
        };
        (span, message)
    }

    /// Records published events in their ledgers; those it cannot are recorded by whoever sees
    /// them on `task-events`.
    async fn record(&self, landed: &[&Outgoing]) {
        if landed.is_empty() {
            return;
        }
        for event in landed {
            let revision = event.staged.revision();
            self.in_flight
                .forget(&event.id, revision, event.staged.nonce);
            METRICS
                .events_published
                .with_label_values(&[event.staged.event.event_type.as_str()])
                .inc();
            METRICS
                .relay_lag
                .observe(seconds_since(event.staged.staged_at));
        }
        // Per task: its entry, and the ledger as read with its latest change's record (any
        // change not read with one means reading it now).
        let mut entries: HashMap<TaskId, (Entry, Option<LedgerAsRead>, u64)> = HashMap::new();
        for event in landed {
            let revision = event.record.revision;
            let current = self.current_read(event);
            let (entry, read, latest) = entries.entry(event.id.clone()).or_insert_with(|| {
                let entry = self.entry(&event.id, &event.record);
                (entry, current.clone(), revision)
            });
            entry.published.push(event.staged.revision());
            match current {
                None => *read = None,
                Some(ledger) if revision > *latest && read.is_some() => {
                    *read = Some(ledger);
                    *latest = revision;
                }
                Some(_) => {}
            }
        }
        let entries = entries
            .into_values()
            .map(|(entry, read, _)| (entry, read))
            .collect();
        let recorded = self.write_entries(entries).await;
        let state = if recorded {
            State::Recorded
        } else {
            State::Landed
        };
        for event in landed {
            self.published
                .set(&event.id, event.staged.revision(), state);
        }
    }

    async fn write_entries(&self, entries: Vec<(Entry, Option<LedgerAsRead>)>) -> bool {
        // Read now only what was not read with the record (a task's first event finds none).
        let mut known = Vec::with_capacity(entries.len());
        let mut unread = Vec::new();
        for (mut entry, read) in entries {
            match read {
                Some(LedgerAsRead(ledger)) => {
                    entry.read = ledger;
                    known.push(entry);
                }
                None if entry.record.revision == 1 => known.push(entry),
                None => unread.push(entry),
            }
        }
        let mut entries = known;
        let ids: Vec<TaskId> = unread.iter().map(|e| e.task.clone()).collect();
        if !ids.is_empty() {
            match self.ledgers.get_many(&ids).await {
                Ok(now) => {
                    for (mut entry, ledger) in unread.into_iter().zip(now) {
                        entry.read = ledger.ok().flatten();
                        entries.push(entry);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %super::chain(&error), "published events not recorded in their ledgers");
                    return false;
                }
            }
        }
        match self.ledgers.record(entries).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %super::chain(&error), "published events not recorded in their ledgers");
                false
            }
        }
    }

    /// The ledger `event`'s change read with its record, unless it was read before this
    /// process's own write of it for an earlier change (in flight, or landed since): that write
    /// would refuse this one, so it is read afresh instead.
    fn current_read(&self, event: &Outgoing) -> Option<LedgerAsRead> {
        let read = event.ledger.as_ref()?;
        let revision = event.staged.revision();
        let behind = event
            .record
            .unpublished
            .changes()
            .iter()
            .map(|change| change.revision)
            .filter(|earlier| *earlier < revision)
            .any(|earlier| {
                matches!(
                    self.published.peek(&event.id, earlier),
                    Some(State::Pending | State::Recorded)
                ) && !read.0.as_ref().is_some_and(|l| l.value.contains(earlier))
            });
        (!behind).then(|| read.clone())
    }

    /// A ledger update for `id` from its record as read (which revisions it still lists; a
    /// deleted task's ledger expires with its tombstone).
    pub(crate) fn entry(&self, id: &TaskId, record: &TaskRecord) -> Entry {
        Entry {
            task: id.clone(),
            published: Vec::new(),
            claimed: Vec::new(),
            record: Listed {
                revision: record.revision,
                unpublished: record
                    .unpublished
                    .changes()
                    .iter()
                    .map(|c| c.revision)
                    .collect(),
            },
            read: None,
            ttl: record.is_deleted().then_some(self.tombstone_ttl),
        }
    }
}

/// Publishes what writers offer, each batch in one call, as long as it is fresh, batches spaced
/// as `pacing` says.
async fn publish_offered<P: Ports>(
    publisher: Publisher<P>,
    mut offered: mpsc::UnboundedReceiver<Outgoing>,
    pacing: Pacing,
) {
    let mut spaced = super::batch::Spaced::default();
    while let Some(batch) = spaced
        .next(&mut offered, MAX_BATCH, pacing.current().publish_spacing)
        .await
    {
        let (fresh, late): (Vec<Outgoing>, Vec<Outgoing>) = batch
            .into_iter()
            .partition(|o| o.staged.age() < DIRECT_WITHIN);
        for event in &late {
            publisher
                .published
                .set(&event.id, event.staged.revision(), State::Skipped);
        }
        if fresh.is_empty() {
            continue;
        }
        // One span for the batch, linked to each change (a child of it when it is one), as the
        // relay's: the publish and ledger calls hang under it in the changes' traces.
        let span = spans::batch(
            "direct publish",
            fresh.iter().map(|o| o.staged.traceparent.as_deref()),
        );
        publisher.publish(&fresh).instrument(span).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_this_process_published_is_remembered_within_a_bound() {
        let published = Published::default();
        let id = TaskId::parse("t").unwrap();
        published.set(&id, 1, State::Pending);
        let waiting = {
            let published = published.clone();
            let id = id.clone();
            tokio::spawn(async move { published.state(&id, 1, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        published.set(&id, 1, State::Recorded);
        assert_eq!(waiting.await.unwrap(), Some(State::Recorded));
        for revision in 2..(REMEMBERED as u64 + 1000) {
            published.set(&id, revision, State::Recorded);
        }
        let slots = published.0.lock().unwrap().slots.len();
        assert!(slots <= REMEMBERED, "{slots} remembered");
        assert_eq!(
            published.state(&id, 1, Duration::ZERO).await,
            None,
            "the oldest went"
        );
        assert_eq!(
            published
                .state(&id, 5000 + REMEMBERED as u64 / 2, Duration::ZERO)
                .await,
            Some(State::Recorded)
        );
    }
}
