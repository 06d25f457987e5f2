//! task-api's side of Dapr's AppCallback interfaces: its handlers only. The `dapr-app` crate
//! serves the interfaces, hands bulk deliveries over as batches and gives the deliberate answers
//! for what task-api does not use (input bindings).

mod invoke;
mod job;
pub(crate) mod subscriptions;
mod topic;

use dapr::dapr::proto::runtime::v1::TopicSubscription;
use dapr_app::{App, EventStatus, Invocation, Job, Reply, TopicEvent};
use tonic::Status;

pub(crate) use subscriptions::Subscriptions;

use crate::{
    api::TaskApi,
    health::Readiness,
    service::{EventHandler, Tasks, ports::Ports},
};

/// What daprd calls on task-api.
pub(crate) struct TaskCallbacks<P: Ports> {
    api: TaskApi<P>,
    tasks: Tasks<P>,
    events: EventHandler<P>,
    subscriptions: Subscriptions,
    readiness: Readiness,
}

impl<P: Ports> TaskCallbacks<P> {
    pub(crate) fn new(
        tasks: Tasks<P>,
        events: EventHandler<P>,
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

impl<P: Ports> App for TaskCallbacks<P> {
    async fn subscriptions(&self) -> Vec<TopicSubscription> {
        self.events.subscriptions_listed();
        self.subscriptions.list().await
    }

    async fn on_topic_events(&self, events: Vec<TopicEvent>) -> Vec<EventStatus> {
        topic::on_events(&self.events, &self.subscriptions, events).await
    }

    async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
        topic::on_events(&self.events, &self.subscriptions, vec![event])
            .await
            .pop()
            .unwrap_or(EventStatus::Retry)
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
