//! Keeping the scheduler's jobs in step with the stored tasks.
//!
//! A change that alters a task's alarms (see [`crate::domain::Planned::reschedules`]) is
//! followed by [`Alarms::sync`], which makes the task's jobs match the record *as stored now*:
//! on a durable broker the relay runs it (and keeps redelivering the staged change until it
//! succeeds, which is the repair after a crash); on the in-memory broker the write itself does.
//!
//! Two syncs of one task can interleave (two changes relayed at once). Each one reads the record,
//! writes the jobs, then reads the record again, and starts over if it moved: the last sync to
//! write has seen the newest record, so the jobs always end up matching it. A job left for a
//! time the task no longer has fires, finds the task moved on, and announces nothing.

use crate::{
    domain::{Alarm, TaskId, TaskRecord},
    sidecar::{
        SidecarError, Versioned,
        jobs::{AlarmJob, Jobs},
        tasks::TaskStore,
    },
};

/// Rounds of read, write, read again before a sync gives up for now (and is retried).
const MAX_ROUNDS: usize = 5;

#[derive(Debug, Clone)]
pub struct Alarms {
    store: TaskStore,
    jobs: Jobs,
}

impl Alarms {
    pub fn new(store: TaskStore, jobs: Jobs) -> Self {
        Self { store, jobs }
    }

    /// Schedules the alarms the stored task still has to announce and cancels the others.
    pub async fn sync(&self, id: &TaskId) -> Result<(), SidecarError> {
        let mut seen = self.store.get(id).await?;
        for _ in 0..MAX_ROUNDS {
            let pending = seen
                .as_ref()
                .map(|stored| stored.value.pending_alarms())
                .unwrap_or_default();
            for alarm in Alarm::ALL {
                match pending.iter().find(|(a, _)| *a == alarm) {
                    Some((_, at)) => {
                        self.jobs
                            .schedule(&AlarmJob {
                                task_id: id.clone(),
                                alarm,
                                at: *at,
                            })
                            .await?
                    }
                    None => self.jobs.cancel(id, alarm).await?,
                }
            }
            let now = self.store.get(id).await?;
            let revision =
                |stored: &Option<Versioned<TaskRecord>>| stored.as_ref().map(|s| s.value.revision);
            if revision(&now) == revision(&seen) {
                return Ok(());
            }
            seen = now;
        }
        Err(SidecarError::Unavailable(format!(
            "task {id} kept changing while its jobs were scheduled"
        )))
    }
}
