//! Dapr's AppCallback interfaces: what daprd calls on task-api. Each concern has its own file;
//! this one only routes the calls there.

mod bindings;
pub(crate) mod health;
mod invoke;
mod jobs;
pub mod subscriptions;
mod topic;

use dapr::dapr::proto::{
    common::v1::{InvokeRequest, InvokeResponse},
    runtime::v1::{
        self as rt, app_callback_alpha_server::AppCallbackAlpha,
        app_callback_health_check_server::AppCallbackHealthCheck, app_callback_server::AppCallback,
    },
};
use tonic::{Request, Response, Status};

pub use subscriptions::Subscriptions;

use crate::{
    health::Readiness,
    service::{EventHandler, Tasks},
};

/// task-api's side of every callback daprd makes.
#[derive(Clone)]
pub struct TaskCallbacks {
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
            tasks,
            events,
            subscriptions,
            readiness,
        }
    }
}

#[tonic::async_trait]
impl AppCallback for TaskCallbacks {
    async fn on_invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        invoke::on_invoke(&self.tasks, &self.events, &metadata, request)
            .await
            .map(Response::new)
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(self.subscriptions.list().await))
    }

    async fn on_topic_event(
        &self,
        request: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        let response =
            topic::on_event(&self.events, &self.subscriptions, request.into_inner()).await;
        Ok(Response::new(response))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(bindings::list()))
    }

    async fn on_binding_event(
        &self,
        request: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        Err(bindings::on_event(request.get_ref()))
    }

    async fn on_bulk_topic_event(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        let response =
            topic::on_bulk(&self.events, &self.subscriptions, request.into_inner()).await;
        Ok(Response::new(response))
    }

    async fn on_job_event(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        jobs::on_job(request.get_ref()).map(Response::new)
    }
}

/// Older runtimes call the Alpha1 twins; they behave exactly like the stable callbacks.
#[tonic::async_trait]
impl AppCallbackAlpha for TaskCallbacks {
    async fn on_bulk_topic_event_alpha1(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        self.on_bulk_topic_event(request).await
    }

    async fn on_job_event_alpha1(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        self.on_job_event(request).await
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for TaskCallbacks {
    async fn health_check(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::HealthCheckResponse>, Status> {
        health::check(&self.readiness).map(Response::new)
    }
}
