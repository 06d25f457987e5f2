//! task-api: a gRPC task service that runs as a Dapr application (`app-protocol grpc`), and the
//! notification-service it calls.
//!
//! Data flows one way through the layers:
//!
//! ```text
//! api/ (TaskService) ◀── task routes ──┐
//!    │                                 │
//!    │     callback/ (AppCallback, via dapr-app)
//!    │                                 │ events, invocations, jobs
//!    └───────────────▶ service/ ◀──────┘
//!                        ├──▶ domain/        (pure rules: Task, Title, status changes, events)
//!                        └──▶ service::ports ◀── sidecar/ (the only code that calls Dapr)
//! ```
//!
//! `domain` knows nothing of gRPC or Dapr. The use cases in `service` depend on the traits in
//! `service::ports`, which `sidecar` implements over the Dapr sidecar and in-memory fakes
//! implement in the tests. `callback` and `notification` answer daprd through the `dapr-app`
//! crate. Errors of the use cases become a `tonic::Status` in one place, `api::status`; the
//! edges that refuse a call before any use case runs (`auth`, `limits`, the codec in `proto`,
//! routing in `callback`) build theirs where they refuse it.
//!
//! The public surface is what the binaries, the integration tests and the tools need: the
//! settings ([`config`]), starting an app ([`startup`], [`notification::build`]), the wire
//! types ([`proto`], [`domain`], [`record_message`]), health ([`health`]) and the stored
//! documents ([`stored`]).

#![warn(unreachable_pub)]

pub(crate) mod admission;
pub(crate) mod adopt;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod callback;
pub mod config;
pub mod domain;
pub(crate) mod gate;
pub mod health;
pub(crate) mod limits;
pub mod notification;
mod percent;
pub mod proto;
pub(crate) mod secret;
pub(crate) mod service;
pub(crate) mod sidecar;
pub mod startup;
pub mod stored;
pub(crate) mod telemetry;

pub use adopt::run as adopt;
pub use api::convert::record_message;
