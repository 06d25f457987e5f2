//! task-api's side of Dapr's AppCallback interfaces: its handlers only. The `dapr-app` crate
//! serves the interfaces, answers bulk deliveries entry by entry and gives the deliberate
//! answers for what task-api does not use (input bindings).

mod invoke;
mod job;
pub mod subscriptions;
mod topic;

use dapr::dapr::proto::runtime::v1::TopicSubscription;
use dapr_app::{App, EventStatus, Invocation, Job, Reply, TopicEvent};
use tonic::Status;

pub use subscriptions::Subscriptions;

use crate::{
    api::TaskApi,
    health::Readiness,
    service::{EventHandler, Tasks},
};

/// What daprd calls on task-api.
#[derive(Clone)]
pub struct TaskCallbacks {
    api: TaskApi,
    tasks: Tasks,
    events: EventHandler,
    subscriptions: Subscriptions,
    readiness: Readiness,
}

impl TaskCallbacks {
    pub fn new(
        tasks: Tasks,
        events: EventHandler,
        subscriptions: Subscriptions,
        readiness: Readiness,
    ) -> Self {
        Self {
            api: TaskApi::new(tasks.clone()),
            tasks,
            events,
            subscriptions,
            readiness,
        }
    }
}

impl App for TaskCallbacks {
    async fn subscriptions(&self) -> Vec<TopicSubscription> {
        self.subscriptions.list().await
    }

    async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
        topic::on_event(&self.events, &self.subscriptions, event).await
    }

    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        invoke::on_invoke(&self.api, &self.events, call).await
    }

    async fn on_job_event(&self, job: Job) -> Result<(), Status> {
        job::on_job(&self.tasks, job).await
    }

    fn health(&self) -> Result<(), Status> {
        self.readiness.app_health()
    }
}
