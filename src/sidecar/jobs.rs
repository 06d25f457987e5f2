//! A task's alarms as jobs on the Dapr scheduler (the Jobs API).
//!
//! Each task has at most one job per alarm, named `task-<id>-due` and `task-<id>-reminder`, so
//! scheduling again replaces it (`overwrite`) and cancelling needs no lookup. The job carries
//! the time it was scheduled for; when it fires, task-api compares that time with the stored
//! task's, so a job for an earlier due date, or one delivered twice, announces nothing.
//!
//! ```json
//! {"task_id":"5b0c…","alarm":"due","at":"2025-01-16T09:00:00.000000Z"}
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use dapr::dapr::proto::{
    common::v1::{JobFailurePolicy, JobFailurePolicyConstant, job_failure_policy::Policy},
    runtime::v1::{DeleteJobRequest, Job, ScheduleJobRequest},
};
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::{Sidecar, SidecarError};
use crate::domain::{Alarm, TaskId, time};

/// How long the scheduler waits before delivering a job again after task-api failed it (its
/// store or broker unreachable). It retries without limit: an alarm is never given up on.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// The Any type URL of a job's data.
const DATA_TYPE: &str = "application/json";

/// The job name of a task's alarm.
pub fn job_name(id: &TaskId, alarm: Alarm) -> String {
    format!("task-{id}-{alarm}")
}

/// What a fired job asks: announce `alarm` of `task_id` if it is still set for `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmJob {
    pub task_id: TaskId,
    pub alarm: Alarm,
    pub at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    task_id: String,
    alarm: String,
    at: String,
}

impl AlarmJob {
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            task_id: self.task_id.to_string(),
            alarm: self.alarm.as_str().to_string(),
            at: time::format(self.at),
        };
        serde_json::to_vec(&wire).expect("three strings serialise to JSON")
    }

    /// Reads a fired job's data; the error says what is wrong with it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(Self {
            task_id: TaskId::parse(&wire.task_id)
                .map_err(|v| format!("task_id {}", v.description))?,
            alarm: Alarm::parse(&wire.alarm).ok_or_else(|| {
                format!(
                    "alarm must be \"due\" or \"reminder\", got {:?}",
                    wire.alarm
                )
            })?,
            at: time::parse(&wire.at)
                .ok_or_else(|| format!("at {:?} is not a date-time", wire.at))?,
        })
    }
}

/// The app's jobs on the scheduler, through the sidecar.
#[derive(Debug, Clone)]
pub struct Jobs {
    sidecar: Sidecar,
}

impl Jobs {
    pub fn new(sidecar: Sidecar) -> Self {
        Self { sidecar }
    }

    /// Schedules (or moves) the job of `job.alarm` to fire once at `job.at`; a time already
    /// past fires at once.
    pub async fn schedule(&self, job: &AlarmJob) -> Result<(), SidecarError> {
        let request = ScheduleJobRequest {
            job: Some(Job {
                name: job_name(&job.task_id, job.alarm),
                due_time: Some(time::format(job.at)),
                data: Some(prost_types::Any {
                    type_url: DATA_TYPE.into(),
                    value: job.to_json(),
                }),
                failure_policy: Some(JobFailurePolicy {
                    policy: Some(Policy::Constant(JobFailurePolicyConstant {
                        interval: Some(prost_types::Duration {
                            seconds: RETRY_INTERVAL.as_secs() as i64,
                            nanos: 0,
                        }),
                        max_retries: None,
                    })),
                }),
                ..Job::default()
            }),
            overwrite: true,
        };
        self.sidecar
            .grpc()
            .schedule_job(request)
            .await
            .map_err(from_scheduler)?;
        Ok(())
    }

    /// Removes the job of `alarm`, if there is one.
    pub async fn cancel(&self, id: &TaskId, alarm: Alarm) -> Result<(), SidecarError> {
        let request = DeleteJobRequest {
            name: job_name(id, alarm),
        };
        match self.sidecar.grpc().delete_job(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(from_scheduler(status)),
        }
    }
}

/// Whatever the scheduler did not do may work later (daprd answers INTERNAL when the scheduler
/// is unreachable); only a request daprd calls invalid is final.
fn from_scheduler(status: tonic::Status) -> SidecarError {
    match status.code() {
        Code::InvalidArgument => SidecarError::Failed {
            code: status.code(),
            message: status.message().to_string(),
        },
        code => SidecarError::Unavailable(format!(
            "the scheduler did not take the job ({code:?}): {}",
            status.message()
        )),
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
        assert_eq!(AlarmJob::from_json(&job.to_json()), Ok(job.clone()));
        assert_eq!(job_name(&job.task_id, Alarm::Due), "task-5b0c-due");
        assert_eq!(
            job_name(&job.task_id, Alarm::Reminder),
            "task-5b0c-reminder"
        );
        assert!(AlarmJob::from_json(br#"{"task_id":"a b","alarm":"due","at":"x"}"#).is_err());
        assert!(
            AlarmJob::from_json(br#"{"task_id":"a","alarm":"soon","at":"2025-01-16T08:00:00Z"}"#)
                .is_err()
        );
    }
}
