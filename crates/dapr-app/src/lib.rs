//! Dapr's AppCallback gRPC interfaces, implemented once.
//!
//! daprd talks to an app that runs with `app-protocol grpc` through three services:
//! `AppCallback` (invocation, subscriptions, topic events, input bindings, jobs),
//! `AppCallbackAlpha` (the Alpha1 twins older runtimes call) and `AppCallbackHealthCheck`. An
//! app implements [`App`], only the methods it uses, and [`Callbacks`] serves all three:
//!
//! ```no_run
//! use dapr_app::{App, Callbacks, EventStatus, Subscription, TopicEvent};
//! use dapr::dapr::proto::runtime::v1::TopicSubscription;
//!
//! struct Orders;
//!
//! impl App for Orders {
//!     async fn subscriptions(&self) -> Vec<TopicSubscription> {
//!         vec![Subscription::new("pubsub", "orders").route("/orders").build()]
//!     }
//!     async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
//!         println!("order {}", String::from_utf8_lossy(&event.data));
//!         EventStatus::Success
//!     }
//! }
//!
//! # async fn serve() -> Result<(), tonic::transport::Error> {
//! tonic::transport::Server::builder()
//!     .add_routes(Callbacks::new(Orders).into_routes())
//!     .serve("127.0.0.1:50051".parse().unwrap())
//!     .await
//! # }
//! ```
//!
//! What an app does not implement is answered deliberately, so that daprd neither retries
//! forever nor loses anything silently:
//!
//! | Call | Default answer |
//! |---|---|
//! | `ListTopicSubscriptions` | no subscriptions |
//! | `OnTopicEvent`, each bulk entry | DROP: daprd moves it to the subscription's dead-letter topic, if it has one |
//! | `OnInvoke` | NOT_FOUND naming the method |
//! | `ListInputBindings` | none, so daprd sends no binding events |
//! | `OnBindingEvent` | NOT_FOUND naming the binding |
//! | `OnJobEvent` | NOT_FOUND, which daprd counts as delivered: no retries of a job nobody handles |
//! | `HealthCheck` | healthy |
//!
//! Bulk deliveries (`OnBulkTopicEvent` and its Alpha1 twin) are handed to
//! [`App::on_topic_event`] one entry at a time and answered per entry id; an app needs no bulk
//! code of its own. [`token`] decides which of these calls must carry the app token.

mod callbacks;
mod event;
mod invoke;
mod job;
mod subscription;
pub mod token;

use std::future::Future;

use dapr::dapr::proto::runtime::v1::{BindingEventResponse, TopicSubscription};
use tonic::Status;

pub use callbacks::Callbacks;
pub use event::{EventStatus, TopicEvent};
pub use invoke::{Invocation, Reply, Verb};
pub use job::{BindingEvent, Job};
pub use subscription::Subscription;

/// An app's side of the callbacks. Every method has the default answer in the crate's table.
pub trait App: Send + Sync + 'static {
    /// What the app subscribes to. daprd asks once, when it starts (or reloads subscriptions),
    /// and an error would leave the app without subscriptions until then, so there is none.
    fn subscriptions(&self) -> impl Future<Output = Vec<TopicSubscription>> + Send {
        async { Vec::new() }
    }

    /// One event, on its own or from a bulk delivery.
    fn on_topic_event(&self, event: TopicEvent) -> impl Future<Output = EventStatus> + Send {
        async move {
            tracing::warn!(
                event_id = %event.id,
                topic = %event.topic,
                path = %event.path,
                "topic event for an app that handles none: DROP"
            );
            EventStatus::Drop
        }
    }

    /// A service invocation: an HTTP route (with its verb) or a gRPC-style method.
    fn on_invoke(&self, call: Invocation) -> impl Future<Output = Result<Reply, Status>> + Send {
        async move {
            Err(Status::not_found(format!(
                "this app has no method {}",
                invoke::quoted(&call.method)
            )))
        }
    }

    /// The input bindings daprd should deliver to the app.
    fn input_bindings(&self) -> Vec<String> {
        Vec::new()
    }

    /// One input binding event.
    fn on_binding_event(
        &self,
        event: BindingEvent,
    ) -> impl Future<Output = Result<BindingEventResponse, Status>> + Send {
        async move {
            Err(Status::not_found(format!(
                "this app has no input binding named {}",
                invoke::quoted(&event.name)
            )))
        }
    }

    /// A job from the Dapr scheduler. `Ok` and NOT_FOUND count as delivered; any other error
    /// makes daprd deliver it again.
    fn on_job_event(&self, job: Job) -> impl Future<Output = Result<(), Status>> + Send {
        async move {
            tracing::warn!(job = %job.name, "job event for a job this app does not schedule");
            Err(Status::not_found(format!(
                "this app has no handler for job {}",
                invoke::quoted(&job.name)
            )))
        }
    }

    /// daprd's app health check: while it fails, daprd holds back events, bindings and jobs.
    fn health(&self) -> Result<(), Status> {
        Ok(())
    }
}
