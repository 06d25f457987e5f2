//! Jobs from the Dapr scheduler: a task's due date or reminder came.
//!
//! | The job | Answer |
//! |---|---|
//! | announces (the task still had that alarm pending for that time) | OK: `task.due` / `task.reminder` follow through the outbox |
//! | stale, replayed, for a completed or deleted task | OK, logged, nothing announced |
//! | data that is not an alarm job | NOT_FOUND (daprd counts it delivered: it can never succeed) |
//! | store or broker unreachable | UNAVAILABLE: the scheduler delivers it again (every 2 s, without limit) |

use dapr_app::Job;
use tonic::Status;

use crate::{
    domain::text::echo,
    service::{
        Tasks, chain,
        ports::{AlarmJob, Ports},
    },
};

pub(super) async fn on_job<P: Ports>(tasks: &Tasks<P>, job: Job) -> Result<(), Status> {
    let alarm_job = match AlarmJob::from_json(&job.data) {
        Ok(alarm_job) => alarm_job,
        Err(error) => {
            let reason = chain(&error);
            tracing::warn!(job = %job.name, %reason, "job data is not an alarm job: ignored");
            return Err(Status::not_found(format!(
                "job {} is not one of task-api's alarm jobs: {reason}",
                echo(&job.name)
            )));
        }
    };
    let announced = tasks.announce(&alarm_job).await?;
    crate::telemetry::metrics::METRICS
        .jobs_fired
        .with_label_values(&[if announced { "announced" } else { "stale" }])
        .inc();
    tracing::info!(
        job = %job.name,
        task_id = %alarm_job.task_id,
        alarm = %alarm_job.alarm,
        announced,
        "{}",
        if announced {
            "alarm announced"
        } else {
            "alarm no longer pending (moved, announced, completed or deleted): nothing to do"
        }
    );
    Ok(())
}
