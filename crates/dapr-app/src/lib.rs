//! Dapr's AppCallback gRPC interfaces, implemented once.
//!
//! An app that runs beside a Dapr sidecar with `app-protocol grpc` does not call daprd to
//! receive work: daprd calls the app, on the app port, through three gRPC services.
//! `AppCallback` carries service invocations, the topic subscriptions and their events, input
//! binding events and jobs; `AppCallbackAlpha` carries the Alpha1 twins of the bulk topic
//! event and the job event, which daprd falls back to; `AppCallbackHealthCheck` carries the
//! app health check. This crate serves all three. An app registers handlers in a [`Router`]
//! (or implements [`App`] itself) and hands it to [`serve`]:
//!
//! ```no_run
//! use dapr_app::{EventStatus, Json, Router, TopicEvent};
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     id: u32,
//! }
//!
//! # async fn run() -> Result<(), dapr_app::ServeError> {
//! let router = Router::new().topic(
//!     "pubsub",
//!     "orders",
//!     "/orders",
//!     |Json(order): Json<Order>, event: TopicEvent| async move {
//!         println!("order {} (trace {:?})", order.id, event.traceparent());
//!         EventStatus::Success
//!     },
//! );
//! let listener = dapr_app::bind("127.0.0.1:50051".parse().expect("an address")).await?;
//! dapr_app::serve(listener, router, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! # What daprd sends and what it expects back
//!
//! These are the rules of daprd 1.18, read in its source; they shape the answers below.
//!
//! **Listening.** daprd dials `127.0.0.1:<app-port>`, so the app listens on IPv4 loopback (or
//! `0.0.0.0`). daprd also proxies gRPC calls meant for the app to that port: the app's own
//! services sit beside the callbacks ([`Callbacks::add_to`]).
//!
//! **Subscriptions.** daprd calls `ListTopicSubscriptions` once per process, as soon as the app
//! port accepts connections. An error other than UNIMPLEMENTED, after a few quick retries,
//! leaves the app with no subscriptions until daprd restarts, so the answer must be right from
//! the first instant (a [`Router`] answers from its registrations alone). Each subscription
//! names a pub/sub component, a topic, routing rules (CEL expressions over the CloudEvent, each
//! with a path) and a default path; the path daprd chose arrives with the event.
//!
//! **Topic events.** daprd wraps each published payload in a CloudEvent and hands it over taken
//! apart ([`TopicEvent`]): its id (the same on every redelivery), source, type, content type,
//! the payload (JSON re-encoded, so parse it: [`TopicEvent::json`]), and the other attributes as
//! extensions (`traceparent`, `tracestate`, `time`, the publisher's own:
//! [`TopicEvent::extension_str`]). It acts on the answer ([`EventStatus`]): SUCCESS (or an
//! empty answer) acknowledges the event; DROP moves it to the subscription's dead-letter topic,
//! or acknowledges it when there is none; RETRY, and any error status but UNIMPLEMENTED, counts
//! as a failure, retried as the component's inbound Resiliency policy says, then dead-lettered
//! (with neither, Redis streams and the in-memory broker let the event go); UNIMPLEMENTED
//! acknowledges it. A subscription with bulk delivery gets `OnBulkTopicEvent` (or its Alpha1
//! twin) and expects one status per entry id; an entry left without one is retried.
//!
//! **Invocations.** A call through daprd's HTTP API (`/v1.0/invoke/<app>/method/<m>`) or its
//! gRPC `InvokeService` arrives as `OnInvoke` ([`Invocation`]): the method is the path after
//! `/method/`, with the HTTP verb and raw query string when the caller used HTTP, the body as
//! the value of an `Any` and the caller's content type. The metadata carries `traceparent`,
//! the caller's HTTP headers and, on a call from another app's sidecar, `dapr-caller-app-id`. An error status reaches
//! an HTTP caller as an HTTP status (NOT_FOUND 404, INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
//! PERMISSION_DENIED 403, ABORTED and ALREADY_EXISTS 409, UNAVAILABLE 503, ...); a reply whose
//! `Any` has a type URL reaches it as `application/x-protobuf` ([`Reply`]).
//!
//! **Jobs.** The Dapr scheduler fires a job through daprd as `OnJobEvent` (falling back to its
//! Alpha1 twin) with the job's name and the data it was scheduled with ([`Job`]). OK and
//! NOT_FOUND count as delivered; any other status makes daprd deliver the job again, as its
//! failure policy says.
//!
//! **Input bindings.** daprd asks once with `ListInputBindings` which bindings to deliver (an
//! error counts as none) and sends their events as `OnBindingEvent` ([`BindingEvent`]).
//!
//! **Health.** With app health checks on, daprd calls `HealthCheck`; any error, UNIMPLEMENTED
//! included, is unhealthy, and while the app is unhealthy daprd holds back topic events,
//! binding events and jobs and fails invocations.
//!
//! **Tokens.** With `APP_API_TOKEN` set, daprd sends it as metadata `dapr-api-token` on every
//! callback but `ListTopicSubscriptions`, `ListInputBindings` and `HealthCheck`; [`token`]
//! says which calls need it and checks it.
//!
//! # Default answers
//!
//! What an app does not handle is answered deliberately, so that daprd neither retries
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
//! [`App::on_topic_events`], which by default calls [`App::on_topic_event`] one entry at a time,
//! and answered per entry id; an app needs no bulk code of its own.

#![deny(missing_docs)]

mod callbacks;
mod event;
pub mod handler;
mod invoke;
mod job;
mod payload;
mod router;
mod serve;
mod subscription;
pub mod token;

use std::future::Future;

use dapr::dapr::proto::runtime::v1::{BindingEventResponse, TopicSubscription};
use tonic::Status;

pub use callbacks::Callbacks;
pub use event::{EventStatus, TopicEvent};
pub use invoke::{Invocation, Reply, Verb};
pub use job::{BindingEvent, Job};
pub use payload::{IntoReply, Json, JsonError};
pub use router::Router;
pub use serve::{ServeError, bind, serve};
pub use subscription::Subscription;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;

/// An app's side of the callbacks. Every method has the default answer in the crate's table.
///
/// A [`Router`] implements it from the handlers registered in it; an app that dispatches by
/// itself implements it directly and serves [`Callbacks::new(app)`](Callbacks::new).
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

    /// The events of one bulk delivery, all at once; one status each, in order. The default
    /// hands them to [`App::on_topic_event`] one after the other; an app that gains from
    /// handling many events together (one store read for all of them, say) overrides this.
    fn on_topic_events(
        &self,
        events: Vec<TopicEvent>,
    ) -> impl Future<Output = Vec<EventStatus>> + Send {
        async move {
            let mut statuses = Vec::with_capacity(events.len());
            for event in events {
                statuses.push(self.on_topic_event(event).await);
            }
            statuses
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
