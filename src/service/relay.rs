//! The outbox relay: publishes a staged event once the stored task confirms its change, once.
//!
//! It takes staged events in batches (as the broker delivers them), reads the records and
//! ledgers they need in one call, publishes what is confirmed in one call and records it in the
//! ledgers in one more. Each staged event is decided on its own:
//!
//! | The ledger / the record says | Answer |
//! |---|---|
//! | the ledger lists the revision | SUCCESS: published already (a redelivery) |
//! | this process wrote the change and published its event ([`super::publisher`]) | SUCCESS |
//! | the record lists `(revision, nonce)` as unpublished, staged less than [`WRITER_HOLDS`] ago by another process | left to its writer, which publishes it directly: looked at again a few times within the batch, then put off |
//! | the record lists `(revision, nonce)` as unpublished | jobs brought in step if it moved the alarms, claimed in the ledger, published (signed, CloudEvent id `<task>.<revision>`), recorded in the ledger: SUCCESS |
//! | ... but the ledger holds an open claim on it | put off until the claim is [`CLAIM_HOLDS`] old and [`GRACE`] has passed since this was first found, with `task-events` observed to be caught up: someone may be publishing it, or a publish of it may have landed and be yet to be observed; then published |
//! | the record lists the revision with another nonce | SUCCESS: a racing writer won |
//! | the record is past the revision without listing it | SUCCESS: published already, or never the winner |
//! | the record has not reached the revision | this process's own write in flight: waited for; otherwise looked at again a few times within the batch, then put off to the outbox's retry topic; after 30 s, SUCCESS: the write failed |
//! | the publish fails | put off (the claim stays); RETRY if it cannot be put off either |
//! | store unreachable | RETRY (everything else is stuck too) |
//!
//! **Published once.** A publish can land and still report failure (daprd answers a bulk
//! publish that partly failed with an error for all of it; a timeout says nothing of the
//! broker), and a process can die between a publish and its ledger write. So the relay claims
//! an event in the ledger before publishing it, and this process's `task-events` subscription
//! records in the ledger every event it receives whose claim is still open ([`Relay::observe`]).
//! An open claim is published again only once no publish under it can still be in flight, a
//! grace period has passed since a relay first found it open (a restarted or newly assigned
//! consumer of `task-events` gets that long to deliver a landed copy), and this process's
//! `task-events` subscription is not behind, partition by partition (on Kafka a landed copy waits
//! in its own partition's backlog, whatever the others deliver): each partition it has delivered
//! from has delivered again since the process started or its sidecar (re)subscribed (or
//! [`REJOIN`](super::observer::REJOIN) has passed), and its last batch was recent or quiet. A
//! copy that lands and is then delivered later than that (a backlog that builds up during the
//! grace period, or a partition this process never delivered from before) would be published a
//! second time: the case left, and it needs a crash or a failed publish to begin with.
//!
//! Nothing holds back the events behind an undecided one: it is put off to a topic of its own,
//! where waiting costs nothing but other waiting events. A write's outcome is always known
//! within its call timeout (10 s), so a change that has not reached the record 30 s after it
//! was staged never will.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};

use futures::future::join_all;
use tracing::Instrument;

use super::{
    Alarms, Outcome,
    in_flight::{InFlight, Local},
    observer::Observer,
    outbox::{Outbox, OutboxMessage, StagedEvent},
    ports::{KeyValueStore, Ports},
    publisher::{Outgoing, Publisher, State as Published, WRITER_HOLDS},
    store::{
        ReadError, decode,
        published::{Claim, Entry, Ledger, Ledgers, ledger_key},
        records::{self, task_key},
    },
};
use crate::{
    domain::{TaskId, TaskRecord, Verdict, Versioned, time},
    telemetry::spans,
};

/// How long a staged event may wait for its change to reach the record.
pub(crate) const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// How long the relay waits for this process's own write of a staged change.
const LOCAL_WAIT: Duration = Duration::from_secs(1);
/// Pauses before looking at the store again for changes still in flight elsewhere.
const IN_FLIGHT_PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(150),
];
/// The longest an event is put off at a time.
const MAX_PUT_OFF: Duration = Duration::from_secs(5);
/// How long a claim holds: longer than a publish call may take (the sidecar call timeout), so no
/// publish under an older claim is still in flight.
pub(crate) const CLAIM_HOLDS: Duration = Duration::from_secs(12);
/// How long a relay that finds an open claim leaves it, at least, for `task-events` to show
/// whether the publish landed: longer than a sidecar may take, after handing out again a staged
/// copy that a killed process held, to hand out its landed event too (Redis streams look for
/// such deliveries every 5 s, each component on its own).
pub(crate) const GRACE: Duration = Duration::from_secs(6);
/// How long `task-events` waits for this process's own ledger write of an event it published.
const OBSERVE_WAIT: Duration = Duration::from_secs(2);

/// The event id of a change's event on `task-events`: the same on every delivery, unique per
/// (task, revision).
pub(crate) fn event_id(task_id: &str, revision: u64) -> String {
    format!("{task_id}.{revision}")
}

pub(crate) struct Relay<P: Ports> {
    store: P::Store,
    ledgers: Ledgers<P::Store>,
    outbox: Outbox<P::Broker>,
    alarms: Alarms<P>,
    in_flight: InFlight,
    publisher: Publisher<P>,
    observer: Observer,
}

impl<P: Ports> Clone for Relay<P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ledgers: self.ledgers.clone(),
            outbox: self.outbox.clone(),
            alarms: self.alarms.clone(),
            in_flight: self.in_flight.clone(),
            publisher: self.publisher.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// What is known of one staged event while its batch is decided.
enum State {
    Done(Outcome),
    /// To be put off: this copy goes to the outbox's retry topic.
    Later(StagedEvent),
    Open(Open),
}

struct Open {
    staged: StagedEvent,
    id: TaskId,
    local: Option<Local>,
    /// Its writer (this process) did not publish it directly: no need to leave it to the
    /// writer.
    skipped_by_writer: bool,
}

/// A decision on one open staged event, from the store.
enum Decision {
    Done(Outcome),
    Publish(Box<(Versioned<TaskRecord>, Option<Versioned<Ledger>>)>),
    NotYet,
    /// Claimed, and left alone until `until`, with the grace period ending at `grace`;
    /// `by_writer`: claimed by the change itself, for its writer to publish directly.
    Claimed {
        until: DateTime<Utc>,
        grace: DateTime<Utc>,
        by_writer: bool,
    },
}

/// A confirmed event on its way out: its place in the batch, the event, what was read.
type Ready = (
    usize,
    Open,
    Versioned<TaskRecord>,
    Option<Versioned<Ledger>>,
);

/// What the store holds for one task.
type Read = (Option<Versioned<TaskRecord>>, Option<Versioned<Ledger>>);

pub(crate) struct Dependencies<P: Ports> {
    pub(crate) store: P::Store,
    pub(crate) outbox: Outbox<P::Broker>,
    pub(crate) alarms: Alarms<P>,
    pub(crate) in_flight: InFlight,
    pub(crate) publisher: Publisher<P>,
}

impl<P: Ports> Relay<P> {
    pub(crate) fn new(parts: Dependencies<P>) -> Self {
        Self {
            ledgers: Ledgers::new(parts.store.clone()),
            store: parts.store,
            outbox: parts.outbox,
            alarms: parts.alarms,
            in_flight: parts.in_flight,
            publisher: parts.publisher,
            observer: Observer::new(),
        }
    }

    /// Decides a batch of messages from the outbox topics; one outcome per message, in order.
    /// Each staged event is decided on its own, those of a message staged together too, and a
    /// message's outcome is the least settled of its events' (see [`least_settled`]).
    pub(crate) async fn relay(&self, messages: &[&[u8]]) -> Vec<Outcome> {
        let mut states = Vec::with_capacity(messages.len());
        let mut from = Vec::with_capacity(messages.len());
        for (at, data) in messages.iter().enumerate() {
            for state in open(data) {
                states.push(state);
                from.push(at);
            }
        }
        // One span for the batch, linked to each staged change (a child of it when it is one).
        let span = if states.is_empty() {
            tracing::Span::none()
        } else {
            spans::batch("relay", states.iter().map(traceparent))
        };
        let outcomes = self.relay_states(states).instrument(span).await;
        let mut per_message: Vec<Option<Outcome>> = messages.iter().map(|_| None).collect();
        for (at, outcome) in from.into_iter().zip(outcomes) {
            let settled = &mut per_message[at];
            *settled = Some(match settled.take() {
                None => outcome,
                Some(so_far) => least_settled(so_far, outcome),
            });
        }
        per_message
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Success("an empty message")))
            .collect()
    }

    async fn relay_states(&self, mut states: Vec<State>) -> Vec<Outcome> {
        wait_until_due(&states).await;
        self.learn_local_outcomes(&mut states).await;
        let mut decisions = match self.decide(&states).await {
            Ok(decisions) => decisions,
            Err(error) => return retry_all(states, &format!("cannot read the tasks: {error}")),
        };
        for (round, pause) in IN_FLIGHT_PAUSES.iter().enumerate() {
            let waiting = decisions
                .iter()
                .zip(&states)
                .any(|(d, s)| waits_in_batch(d.as_ref()) && first_look(s));
            if !waiting {
                break;
            }
            tokio::time::sleep(*pause).await;
            let again = match self.decide(&states).await {
                Ok(again) => again,
                Err(error) if round > 0 => {
                    tracing::debug!(%error, "store read failed while waiting for writes");
                    break;
                }
                Err(error) => return retry_all(states, &format!("cannot read the tasks: {error}")),
            };
            for (decision, fresh) in decisions.iter_mut().zip(again) {
                if waits_in_batch(decision.as_ref()) {
                    *decision = fresh;
                }
            }
        }
        self.act(states, decisions).await
    }

    /// Waits (briefly) for this process's own writes of the staged changes and its own
    /// publishes of their events, and decides what those settle.
    async fn learn_local_outcomes(&self, states: &mut [State]) {
        let lookups = states.iter().map(|state| async move {
            let State::Open(open) = state else {
                return (None, None);
            };
            let revision = open.staged.revision();
            let local = self
                .in_flight
                .outcome(&open.id, revision, open.staged.nonce, LOCAL_WAIT)
                .await;
            let published = self
                .publisher
                .published()
                .state(&open.id, revision, LOCAL_WAIT)
                .await;
            (local, published)
        });
        let outcomes = join_all(lookups).await;
        for (state, (local, published)) in states.iter_mut().zip(outcomes) {
            let State::Open(open) = state else { continue };
            open.local = local;
            open.skipped_by_writer = published == Some(Published::Skipped);
            let settled = match (local, published) {
                (Some(Local::Lost), _) => State::Done(Outcome::Success("the change lost its race")),
                // Not recorded yet (Landed): `task-events` records it when it arrives there.
                (_, Some(Published::Recorded | Published::Landed)) => {
                    State::Done(Outcome::Success("published by this process"))
                }
                // The publish may have landed: its copy gets a grace period to show up.
                (_, Some(Published::Failed(at))) if time::now() < at + to_chrono(GRACE) => {
                    let until = at + to_chrono(GRACE);
                    State::Later(open.staged.put_off_until(until, until))
                }
                _ => continue,
            };
            *state = settled;
        }
    }

    /// Reads the records and ledgers of the open staged events (one call) and decides each.
    async fn decide(&self, states: &[State]) -> Result<Vec<Option<Decision>>, ReadError> {
        let ids: Vec<&TaskId> = states
            .iter()
            .filter_map(|s| match s {
                State::Open(open) => Some(&open.id),
                State::Done(_) | State::Later(_) => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(states.iter().map(|_| None).collect());
        }
        let reads = self.read(&ids).await?;
        let mut reads = reads.into_iter();
        // A staged event delivered twice in one batch is published once.
        let mut publishing = std::collections::HashSet::new();
        Ok(states
            .iter()
            .map(|state| match state {
                State::Done(_) | State::Later(_) => None,
                State::Open(open) => Some(match reads.next() {
                    Some(Ok(read)) => match decision(open, read, &self.observer) {
                        Decision::Publish(..)
                            if !publishing.insert((open.id.clone(), open.staged.revision())) =>
                        {
                            Decision::Done(Outcome::Success("published already"))
                        }
                        decided => decided,
                    },
                    Some(Err(corrupt)) => Decision::Done(Outcome::Dead(format!(
                        "the task cannot be read to confirm the change: {}",
                        super::chain(&corrupt)
                    ))),
                    None => Decision::NotYet,
                }),
            })
            .collect())
    }

    /// The record and the ledger of each task, in one call.
    async fn read(
        &self,
        ids: &[&TaskId],
    ) -> Result<Vec<Result<Read, super::store::CorruptDocument>>, ReadError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| task_key(id))
            .chain(ids.iter().map(|id| ledger_key(id)))
            .collect();
        let stored = self.store.get_many(&keys).await?;
        let (records, ledgers) = stored.split_at(ids.len());
        Ok(keys
            .iter()
            .zip(records)
            .zip(keys[ids.len()..].iter().zip(ledgers))
            .map(|((record_key, record), (ledger_key, ledger))| {
                let record = record
                    .as_ref()
                    .map(|s| {
                        Ok(Versioned {
                            value: records::from_json(record_key, &s.value)?,
                            etag: s.etag.clone(),
                        })
                    })
                    .transpose()?;
                let ledger = ledger
                    .as_ref()
                    .map(|s| {
                        Ok(Versioned {
                            value: decode(ledger_key, &s.value)?,
                            etag: s.etag.clone(),
                        })
                    })
                    .transpose()?;
                Ok((record, ledger))
            })
            .collect())
    }

    /// Carries out the decisions: jobs, publishing, ledgers, putting off.
    async fn act(&self, states: Vec<State>, decisions: Vec<Option<Decision>>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(states.len());
        let mut to_publish = Vec::new();
        let mut to_put_off = Vec::new();
        for (index, (state, decision)) in states.into_iter().zip(decisions).enumerate() {
            match (state, decision) {
                (State::Done(outcome), _) | (State::Open(_), Some(Decision::Done(outcome))) => {
                    outcomes.push(Some(outcome));
                }
                (State::Later(copy), _) => {
                    outcomes.push(None);
                    to_put_off.push((index, copy));
                }
                (State::Open(open), Some(Decision::Publish(read))) => {
                    let (record, ledger) = *read;
                    outcomes.push(None);
                    to_publish.push((index, open, record, ledger));
                }
                (State::Open(open), Some(Decision::Claimed { until, grace, .. })) => {
                    outcomes.push(None);
                    // Comes back when the claim may be published again, not before.
                    to_put_off.push((index, open.staged.put_off_until(until, grace)));
                }
                (State::Open(open), Some(Decision::NotYet) | None) => {
                    outcomes.push(None);
                    if open.local == Some(Local::Lost) {
                        outcomes[index] = Some(Outcome::Success("the change lost its race"));
                    } else if open.staged.age() >= CONFIRM_WITHIN {
                        outcomes[index] = Some(Outcome::Success("the change was never saved"));
                    } else {
                        to_put_off.push((index, later(&open.staged)));
                    }
                }
            }
        }
        let rescheduled = self.sync_alarms(&to_publish).await;
        let (ready, not_in_step): (Vec<_>, Vec<_>) = to_publish
            .into_iter()
            .partition(|(_, open, ..)| rescheduled.get(&open.id).copied().unwrap_or(true));
        to_put_off.extend(
            not_in_step
                .into_iter()
                .map(|(i, open, ..)| (i, later(&open.staged))),
        );
        let (published, not_published) = self.claim_and_publish(ready).await;
        for (index, outcome) in published {
            outcomes[index] = Some(outcome);
        }
        to_put_off.extend(not_published);
        for (index, outcome) in self.put_off(to_put_off).await {
            outcomes[index] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry("undecided".into())))
            .collect()
    }

    /// Brings the jobs of every task whose confirmed change moved its alarms in step; per task,
    /// whether that worked.
    async fn sync_alarms(&self, to_publish: &[Ready]) -> HashMap<TaskId, bool> {
        let mut tasks: Vec<&TaskId> = to_publish
            .iter()
            .filter(|(_, open, ..)| open.staged.reschedules)
            .map(|(_, open, ..)| &open.id)
            .collect();
        tasks.sort();
        tasks.dedup();
        let synced = join_all(tasks.iter().map(|id| self.alarms.sync(id))).await;
        tasks
            .into_iter()
            .zip(synced)
            .map(|(id, result)| {
                if let Err(error) = &result {
                    tracing::warn!(task_id = %id, %error, "jobs not in step yet; the event waits");
                }
                (id.clone(), result.is_ok())
            })
            .collect()
    }

    /// Claims confirmed events, publishes those claimed in one call and records them in their
    /// ledgers. Returns the outcomes decided, and the events to put off (claimed by someone else
    /// meanwhile, or not published).
    async fn claim_and_publish(
        &self,
        ready: Vec<Ready>,
    ) -> (Vec<(usize, Outcome)>, Vec<(usize, StagedEvent)>) {
        if ready.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let claimed = match self.claim(&ready).await {
            Ok(claimed) => claimed,
            Err(error) => {
                let reason = format!("cannot claim the events: {}", super::chain(&error));
                let outcomes = ready
                    .into_iter()
                    .map(|(index, ..)| (index, Outcome::Retry(reason.clone())))
                    .collect();
                return (outcomes, Vec::new());
            }
        };
        let (mine, taken): (Vec<Ready>, Vec<Ready>) =
            ready.into_iter().partition(|(_, open, ..)| {
                claimed.contains(&(open.id.clone(), open.staged.revision()))
            });
        let mut not_published: Vec<(usize, StagedEvent)> = taken
            .into_iter()
            .map(|(i, open, ..)| (i, later(&open.staged)))
            .collect();
        let outgoing: Vec<Outgoing> = mine
            .iter()
            .map(|(_, open, record, _)| Outgoing {
                id: open.id.clone(),
                staged: open.staged.clone(),
                record: record.value.clone(),
                // Changed by the claim since it was read.
                ledger: None,
            })
            .collect();
        let results = self.publisher.publish(&outgoing).await;
        let mut outcomes = Vec::with_capacity(mine.len());
        for ((index, open, ..), result) in mine.into_iter().zip(results) {
            match result {
                Ok(()) => outcomes.push((index, Outcome::Success("event published"))),
                // The claim stays: the copy waits for its grace period.
                Err(_) => not_published.push((index, later(&open.staged))),
            }
        }
        (outcomes, not_published)
    }

    /// Claims each event in its task's ledger (one call); the events claimed.
    async fn claim(&self, ready: &[Ready]) -> Result<HashSet<(TaskId, u64)>, ReadError> {
        let at = time::now().timestamp_millis();
        let by = fastrand::u32(..);
        let mut entries: HashMap<TaskId, Entry> = HashMap::new();
        for (_, open, record, ledger) in ready {
            entries
                .entry(open.id.clone())
                .or_insert_with(|| Entry {
                    read: ledger.clone(),
                    ..self.publisher.entry(&open.id, &record.value)
                })
                .claimed
                .push(Claim {
                    revision: open.staged.revision(),
                    at,
                    by,
                });
        }
        let claimed = self.ledgers.claim(entries.into_values().collect()).await?;
        Ok(claimed
            .into_iter()
            .flat_map(|(id, revisions)| revisions.into_iter().map(move |r| (id.clone(), r)))
            .collect())
    }

    /// Notes how far behind `task-events` is, from the partition each event of a batch came from
    /// and when it was published.
    pub(crate) fn note_delivered<'a>(
        &self,
        published: impl Iterator<Item = (Option<&'a str>, DateTime<Utc>)>,
    ) {
        self.observer.note(published);
    }

    /// Notes that the sidecar listed the subscriptions: it (re)starts delivering them.
    pub(crate) fn note_resubscribed(&self) {
        self.observer.resubscribed();
    }

    /// Notes events seen on `task-events`: any not yet recorded in its ledger (its publisher
    /// died, or never learnt that the publish landed) is recorded as published. One answer per
    /// event: whether it is settled (`false`: the store could not be asked; deliver it again).
    pub(crate) async fn observe(&self, seen: &[(TaskId, u64)]) -> Vec<bool> {
        let published = self.publisher.published();
        let known = join_all(seen.iter().map(|(id, revision)| async move {
            published.state(id, *revision, OBSERVE_WAIT).await == Some(Published::Recorded)
        }))
        .await;
        let unknown: Vec<&(TaskId, u64)> = seen
            .iter()
            .zip(&known)
            .filter(|(_, known)| !**known)
            .map(|(seen, _)| seen)
            .collect();
        if unknown.is_empty() {
            return vec![true; seen.len()];
        }
        match self.settle_observed(&unknown).await {
            Ok(()) => vec![true; seen.len()],
            Err(error) => {
                tracing::warn!(error = %super::chain(&error), "events seen on task-events not checked against their ledgers");
                known
            }
        }
    }

    async fn settle_observed(&self, seen: &[&(TaskId, u64)]) -> Result<(), ReadError> {
        let mut ids: Vec<&TaskId> = seen.iter().map(|(id, _)| id).collect();
        ids.sort();
        ids.dedup();
        let reads = self.read(&ids).await?;
        let mut entries = Vec::new();
        for (id, read) in ids.into_iter().zip(reads) {
            let Ok((Some(record), ledger)) = read else {
                continue;
            };
            let observed: Vec<u64> = seen
                .iter()
                .filter(|(seen_id, revision)| {
                    seen_id == id
                        && record.value.unpublished.at(*revision).is_some()
                        && !ledger.as_ref().is_some_and(|l| l.value.contains(*revision))
                })
                .map(|(_, revision)| *revision)
                .collect();
            if observed.is_empty() {
                continue;
            }
            tracing::info!(task_id = %id, revisions = ?observed, "events seen on task-events that their ledger did not list yet; recorded");
            let mut entry = self.publisher.entry(id, &record.value);
            entry.read = ledger;
            entry.published = observed;
            entries.push(entry);
        }
        if !entries.is_empty() {
            self.ledgers.record(entries).await?;
        }
        Ok(())
    }

    /// Puts undecided staged events off to the outbox's retry topic (`later`: the copies to
    /// put there).
    async fn put_off(&self, later: Vec<(usize, StagedEvent)>) -> Vec<(usize, Outcome)> {
        if later.is_empty() {
            return Vec::new();
        }
        let copies: Vec<StagedEvent> = later.iter().map(|(_, copy)| copy.clone()).collect();
        let results = self.outbox.put_off(&copies).await;
        later
            .into_iter()
            .zip(results)
            .map(|((index, _), result)| {
                (
                    index,
                    match result {
                        Ok(()) => Outcome::Success("not decided yet: put off"),
                        Err(error) => Outcome::Retry(format!(
                            "not decided yet, and not put off: {}",
                            super::chain(&error)
                        )),
                    },
                )
            })
            .collect()
    }
}

/// The copy of an undecided staged event to put off: back after a delay that grows with each
/// attempt.
fn later(staged: &StagedEvent) -> StagedEvent {
    let delay =
        (Duration::from_millis(100) * 2u32.saturating_pow(staged.attempt.min(8))).min(MAX_PUT_OFF);
    staged.put_off(delay)
}

/// A message parsed, one state per staged event in it: decided at once (a probe, a malformed
/// message) or open.
fn open(data: &[u8]) -> Vec<State> {
    match OutboxMessage::from_json(data) {
        Ok(OutboxMessage::Probe) => vec![State::Done(Outcome::Success("readiness probe"))],
        Ok(OutboxMessage::Staged(staged)) => vec![open_staged(staged)],
        Ok(OutboxMessage::Batch(batch)) => batch.into_iter().map(open_staged).collect(),
        Err(error) => vec![State::Done(Outcome::Dead(format!(
            "not an outbox message: {}",
            super::chain(&error)
        )))],
    }
}

fn open_staged(staged: StagedEvent) -> State {
    match TaskId::parse(&staged.event.task_id) {
        Ok(id) => State::Open(Open {
            staged,
            id,
            local: None,
            skipped_by_writer: false,
        }),
        Err(violation) => State::Done(Outcome::Dead(format!(
            "staged event with a bad task id: {violation}"
        ))),
    }
}

/// The outcome of a message from those of two of its events: delivered again if either needs
/// it (the other is then answered from its ledger), kept as a dead letter if either must be
/// (the others in it are settled already; a replay settles them again).
fn least_settled(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (retry @ Outcome::Retry(_), _) | (_, retry @ Outcome::Retry(_)) => retry,
        (dead @ Outcome::Dead(_), _) | (_, dead @ Outcome::Dead(_)) => dead,
        (success, Outcome::Success(_)) => success,
    }
}

/// The trace context of a staged event's change, if it has one.
fn traceparent(state: &State) -> Option<&str> {
    match state {
        State::Open(open) => open.staged.traceparent.as_deref(),
        State::Later(staged) => staged.traceparent.as_deref(),
        State::Done(_) => None,
    }
}

/// Whether an open event is seen for the first time (not put off before): only those get the
/// in-batch pauses.
fn first_look(state: &State) -> bool {
    matches!(state, State::Open(open) if open.staged.attempt == 0 && open.local.is_none())
}

/// Sleeps until the latest `not_before` of the batch (events put off come back in batches of
/// their own, from the retry topic).
async fn wait_until_due(states: &[State]) {
    let due = states
        .iter()
        .filter_map(|s| match s {
            State::Open(open) => open.staged.not_before,
            State::Done(_) | State::Later(_) => None,
        })
        .max();
    if let Some(due) = due
        && let Ok(wait) = (due - time::now()).to_std()
    {
        tokio::time::sleep(wait.min(MAX_PUT_OFF)).await;
    }
}

fn decision(open: &Open, (record, ledger): Read, observer: &Observer) -> Decision {
    let revision = open.staged.revision();
    if ledger.as_ref().is_some_and(|l| l.value.contains(revision)) {
        return Decision::Done(Outcome::Success("published already"));
    }
    let Some(record) = record else {
        return Decision::NotYet;
    };
    match record.value.verdict(revision, open.staged.nonce) {
        Verdict::Committed => {
            let claimed_until = match ledger.as_ref().and_then(|l| l.value.claim_on(revision)) {
                Some(claim) => Some((claimed_at(claim) + to_chrono(CLAIM_HOLDS), false)),
                // The change itself claims it for its writer, for a while.
                None if !open.skipped_by_writer => {
                    Some((open.staged.staged_at + to_chrono(WRITER_HOLDS), true))
                }
                None => None,
            };
            claimed_until
                .and_then(|(until, by_writer)| held(until, by_writer, &open.staged, observer))
                .unwrap_or_else(|| Decision::Publish(Box::new((record, ledger))))
        }
        Verdict::Superseded => {
            Decision::Done(Outcome::Success("another change took that revision"))
        }
        Verdict::Settled => Decision::Done(Outcome::Success(
            "nothing to publish: published already, or the change never won",
        )),
        Verdict::NotYet => Decision::NotYet,
    }
}

fn claimed_at(claim: &Claim) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(claim.at).unwrap_or_else(time::now)
}

/// Whether a claim that holds until `holds_until` still keeps others from publishing, and
/// until when: past that, a grace period from when it was first found, with `task-events`
/// caught up, for a copy that landed to be observed.
fn held(
    holds_until: DateTime<Utc>,
    by_writer: bool,
    staged: &StagedEvent,
    observer: &Observer,
) -> Option<Decision> {
    let now = time::now();
    let grace = staged.grace_until.unwrap_or(now + to_chrono(GRACE));
    let until = holds_until.max(grace);
    if now < until {
        return Some(Decision::Claimed {
            until,
            grace,
            by_writer,
        });
    }
    if !observer.caught_up() {
        let until = now + to_chrono(GRACE);
        return Some(Decision::Claimed {
            until,
            grace,
            by_writer,
        });
    }
    None
}

/// Whether an undecided event is looked at again within its batch: a write in flight, or a
/// change its writer is publishing (both usually settle within milliseconds).
fn waits_in_batch(decision: Option<&Decision>) -> bool {
    matches!(
        decision,
        Some(
            Decision::NotYet
                | Decision::Claimed {
                    by_writer: true,
                    ..
                }
        )
    )
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_default()
}

fn retry_all(states: Vec<State>, reason: &str) -> Vec<Outcome> {
    states
        .into_iter()
        .map(|state| match state {
            State::Done(outcome) => outcome,
            State::Open(_) | State::Later(_) => Outcome::Retry(reason.to_string()),
        })
        .collect()
}
