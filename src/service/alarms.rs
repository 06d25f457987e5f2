//! Keeping the scheduler's jobs in step with the stored tasks.
//!
//! A change that alters a task's alarms (see [`crate::domain::Planned::reschedules`]) is
//! followed by [`Alarms::sync`], run by the relay once the change is confirmed: it makes the
//! task's jobs match the record *as stored now*, and until that succeeds the staged change is
//! put off and tried again, which is the repair after a crash.
//!
//! Two syncs of one task can interleave (two changes relayed at once). Each one reads the
//! record, writes the jobs, then reads the record again, and starts over if it moved: the last
//! sync to write has seen the newest record, so the jobs always end up matching it. A job left
//! for a time the task no longer has fires, finds the task moved on, and announces nothing.
//!
//! A job's data is `{"task_id","alarm","at"}` ([`AlarmJob`]), so a firing can be checked
//! against the task.

use serde::{Deserialize, Serialize};

use super::{
    Error,
    ports::{AlarmJob, Ports, Scheduler},
    store::{self, CorruptDocument, records::TaskRecords},
};
use crate::domain::{Alarm, FieldViolation, TaskId, TaskRecord, Versioned, time};

/// Rounds of read, write, read again before a sync gives up for now (and is retried).
const MAX_ROUNDS: usize = 5;

/// The job name of a task's alarm.
pub(crate) fn job_name(id: &TaskId, alarm: Alarm) -> String {
    format!("task-{id}-{alarm}")
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
struct JobDocument(AlarmJob);

#[derive(Serialize, Deserialize)]
struct Wire {
    task_id: String,
    alarm: String,
    at: String,
}

impl TryFrom<Wire> for JobDocument {
    type Error = FieldViolation;

    fn try_from(wire: Wire) -> Result<Self, Self::Error> {
        Ok(JobDocument(AlarmJob {
            task_id: TaskId::parse(&wire.task_id)
                .map_err(|v| FieldViolation::new("task_id", v.description))?,
            alarm: Alarm::parse(&wire.alarm).ok_or_else(|| {
                FieldViolation::new(
                    "alarm",
                    format!("must be \"due\" or \"reminder\", got {:?}", wire.alarm),
                )
            })?,
            at: time::parse(&wire.at).ok_or_else(|| {
                FieldViolation::new("at", format!("{:?} is not a date-time", wire.at))
            })?,
        }))
    }
}

impl From<JobDocument> for Wire {
    fn from(JobDocument(job): JobDocument) -> Self {
        Wire {
            task_id: job.task_id.to_string(),
            alarm: job.alarm.as_str().to_string(),
            at: time::format(job.at),
        }
    }
}

impl AlarmJob {
    /// The job's data.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        store::encode(&JobDocument(self.clone()))
    }

    /// Reads a fired job's data; the error names what is wrong with it.
    pub(crate) fn from_json(bytes: &[u8]) -> Result<Self, CorruptDocument> {
        store::decode::<JobDocument>("job data", bytes).map(|JobDocument(job)| job)
    }
}

pub(crate) struct Alarms<P: Ports> {
    records: TaskRecords<P::Store>,
    scheduler: P::Scheduler,
}

impl<P: Ports> Clone for Alarms<P> {
    fn clone(&self) -> Self {
        Self {
            records: self.records.clone(),
            scheduler: self.scheduler.clone(),
        }
    }
}

impl<P: Ports> Alarms<P> {
    pub(crate) fn new(records: TaskRecords<P::Store>, scheduler: P::Scheduler) -> Self {
        Self { records, scheduler }
    }

    /// Schedules the alarms the stored task still has to announce and cancels the others.
    pub(crate) async fn sync(&self, id: &TaskId) -> Result<(), Error> {
        let mut seen = self.records.get(id).await?;
        for _ in 0..MAX_ROUNDS {
            let pending = seen
                .as_ref()
                .map(|stored| stored.value.pending_alarms())
                .unwrap_or_default();
            for alarm in Alarm::ALL {
                match pending.iter().find(|(a, _)| *a == alarm) {
                    Some((_, at)) => {
                        self.scheduler
                            .schedule(&AlarmJob {
                                task_id: id.clone(),
                                alarm,
                                at: *at,
                            })
                            .await?
                    }
                    None => self.scheduler.cancel(id, alarm).await?,
                }
            }
            let now = self.records.get(id).await?;
            let revision =
                |stored: &Option<Versioned<TaskRecord>>| stored.as_ref().map(|s| s.value.revision);
            if revision(&now) == revision(&seen) {
                return Ok(());
            }
            seen = now;
        }
        Err(Error::Contended {
            id: id.clone(),
            attempts: MAX_ROUNDS as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_data_round_trips_and_names_are_per_alarm() {
        let job = AlarmJob {
            task_id: TaskId::parse("5b0c").unwrap(),
            alarm: Alarm::Reminder,
            at: time::parse("2025-01-16T08:00:00Z").unwrap(),
        };
        assert_eq!(AlarmJob::from_json(&job.to_json()).unwrap(), job);
        assert_eq!(job_name(&job.task_id, Alarm::Due), "task-5b0c-due");
        assert_eq!(
            job_name(&job.task_id, Alarm::Reminder),
            "task-5b0c-reminder"
        );
        assert!(AlarmJob::from_json(br#"{"task_id":"a b","alarm":"due","at":"x"}"#).is_err());
        let error =
            AlarmJob::from_json(br#"{"task_id":"a","alarm":"soon","at":"2025-01-16T08:00:00Z"}"#)
                .unwrap_err();
        assert!(
            error.source.to_string().starts_with("alarm"),
            "{}",
            error.source
        );
    }
}
