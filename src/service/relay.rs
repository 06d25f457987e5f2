//! The outbox relay: publishes a staged event once the stored task confirms its change.
//!
//! | The task record says | Staged at most 30 s ago | Older |
//! |---|---|---|
//! | this revision, this nonce (committed) | publish, SUCCESS | publish, SUCCESS |
//! | this revision, another nonce (lost a race) | SUCCESS, nothing published | same |
//! | not at this revision yet | RETRY (the write may be in flight) | SUCCESS, nothing published: the write failed |
//! | revision older than it remembers | publish, SUCCESS (see below) | same |
//! | store or broker unreachable | RETRY | RETRY |
//!
//! A confirmed change that moved the task's alarms first brings its jobs in step (see
//! [`super::Alarms`]); until that succeeds the staged event is redelivered, so a due date saved
//! just before a crash still gets its job.
//!
//! A write's outcome is always known within its call timeout (10 s), so after 30 s a change that
//! has not reached the record never will. A record remembers its last 32 changes; a staged event
//! is relayed within seconds, so one older than that was committed long ago in all but a
//! contrived case, and is published rather than lost.

use std::time::Duration;

use super::{Alarms, Outcome};
use crate::{
    domain::{TaskId, Verdict, time},
    sidecar::{
        outbox::{Outbox, OutboxMessage, StagedEvent},
        tasks::TaskStore,
    },
};

/// How long a staged event may wait for its change to reach the record.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// A staged event usually arrives while its write is still in flight (it was staged first):
/// it looks again after these pauses before handing the event back to the broker.
const IN_FLIGHT_PAUSES: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(150),
];

#[derive(Debug, Clone)]
pub struct Relay {
    store: TaskStore,
    outbox: Outbox,
    alarms: Alarms,
}

impl Relay {
    pub fn new(store: TaskStore, outbox: Outbox, alarms: Alarms) -> Self {
        Self {
            store,
            outbox,
            alarms,
        }
    }

    pub async fn handle(&self, data: &[u8]) -> Outcome {
        let staged = match OutboxMessage::from_json(data) {
            Ok(OutboxMessage::Probe) => return Outcome::Success("readiness probe"),
            Ok(OutboxMessage::Staged(staged)) => staged,
            Err(reason) => return Outcome::Dead(format!("not an outbox message: {reason}")),
        };
        match self.confirm(&staged).await {
            Ok(Confirmation::Publish) if staged.reschedules => {
                // Parsed by `confirm` already.
                let Ok(id) = TaskId::parse(&staged.event.task_id) else {
                    return Outcome::Dead("staged event with a bad task id".into());
                };
                if let Err(error) = self.alarms.sync(&id).await {
                    return Outcome::Retry(format!("jobs not in step yet: {error}"));
                }
                match self.outbox.publish(&staged.event).await {
                    Ok(()) => Outcome::Success("jobs scheduled, event published"),
                    Err(error) => Outcome::Retry(format!("event not published yet: {error}")),
                }
            }
            Ok(Confirmation::Publish) => match self.outbox.publish(&staged.event).await {
                Ok(()) => Outcome::Success("event published"),
                Err(error) => Outcome::Retry(format!("event not published yet: {error}")),
            },
            Ok(Confirmation::Drop(why)) => Outcome::Success(why),
            Ok(Confirmation::Wait) => {
                Outcome::Retry("the change has not reached the task yet".into())
            }
            Err(reason) => Outcome::Retry(reason),
        }
    }

    async fn confirm(&self, staged: &StagedEvent) -> Result<Confirmation, String> {
        let mut pauses = IN_FLIGHT_PAUSES.iter();
        loop {
            match self.confirm_once(staged).await? {
                Confirmation::Wait => match pauses.next() {
                    Some(pause) => tokio::time::sleep(*pause).await,
                    None => return Ok(Confirmation::Wait),
                },
                decided => return Ok(decided),
            }
        }
    }

    async fn confirm_once(&self, staged: &StagedEvent) -> Result<Confirmation, String> {
        let id = TaskId::parse(&staged.event.task_id)
            .map_err(|v| format!("staged event with a bad task id: {}", v.description))?;
        let revision = staged.event.revision.unwrap_or_default();
        let record = self
            .store
            .get(&id)
            .await
            .map_err(|e| format!("cannot read the task to confirm the change: {e}"))?;
        let verdict = match &record {
            Some(stored) => stored.value.verdict(revision, staged.nonce),
            None => Verdict::NotYet,
        };
        let age = (time::now() - staged.staged_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        Ok(match verdict {
            Verdict::Committed => Confirmation::Publish,
            Verdict::Superseded => Confirmation::Drop("another change took that revision"),
            Verdict::NotYet if age < CONFIRM_WITHIN => Confirmation::Wait,
            Verdict::NotYet => Confirmation::Drop("the change was never saved"),
            Verdict::Forgotten => {
                tracing::warn!(task_id = %id, revision, "a staged event older than the task's remembered changes: published");
                Confirmation::Publish
            }
        })
    }
}

enum Confirmation {
    Publish,
    Drop(&'static str),
    Wait,
}
