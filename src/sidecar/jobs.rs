//! The Dapr Jobs API (the scheduler) as the service layer's [`Scheduler`].
//!
//! Each task has at most one job per alarm, named `task-<id>-due` and `task-<id>-reminder`, so
//! scheduling again replaces it (`overwrite`) and cancelling needs no lookup.

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::{JobFailurePolicy, JobFailurePolicyConstant, job_failure_policy::Policy},
    runtime::v1::{DeleteJobRequest, Job, ScheduleJobRequest},
};
use tonic::{Code, Status};

use super::{Call, Sidecar, timed};
use crate::{
    domain::{Alarm, TaskId, time},
    service::{
        alarms::job_name,
        ports::{AlarmJob, Scheduler, SchedulerError},
    },
};

/// How long the scheduler waits before delivering a job again after task-api failed it (its
/// store or broker unreachable). It retries without limit: an alarm is never given up on.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// The Any type URL of a job's data.
const DATA_TYPE: &str = "application/json";

#[derive(Debug, Clone)]
pub(crate) struct DaprJobs {
    sidecar: Sidecar,
}

/// Whatever the scheduler did not do may work later (daprd answers INTERNAL when the scheduler
/// is unreachable); only a request daprd calls invalid is final.
fn scheduler_error(status: Status) -> SchedulerError {
    match status.code() {
        Code::InvalidArgument => SchedulerError::Failed {
            source: Box::new(status),
        },
        _ => SchedulerError::Unavailable {
            source: Box::new(status),
        },
    }
}

impl DaprJobs {
    pub(crate) fn new(sidecar: Sidecar) -> Self {
        Self { sidecar }
    }
}

impl Scheduler for DaprJobs {
    async fn schedule(&self, job: &AlarmJob) -> Result<(), SchedulerError> {
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
        let mut grpc = self.sidecar.grpc();
        timed(
            Call::new("jobs", "schedule", "ScheduleJob"),
            grpc.schedule_job(request),
        )
        .await
        .map_err(scheduler_error)?;
        crate::telemetry::metrics::METRICS.jobs_scheduled.inc();
        Ok(())
    }

    async fn cancel(&self, task_id: &TaskId, alarm: Alarm) -> Result<(), SchedulerError> {
        let request = DeleteJobRequest {
            name: job_name(task_id, alarm),
        };
        let mut grpc = self.sidecar.grpc();
        let call = Call::new("jobs", "delete", "DeleteJob");
        match timed(call, grpc.delete_job(request)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(scheduler_error(status)),
        }
    }
}
