//! task-api: a gRPC task service that runs as a Dapr application (`app-protocol grpc`), and the
//! notification-service it calls.
//!
//! Data flows one way through the layers:
//!
//! ```text
//! api/ (TaskService) ◀── task routes ──┐
//!    │                                 │
//!    │     callback/ (AppCallback, via dapr-app)
//!    │                                 │ events, dead letters
//!    └───────────────▶ service/ ◀──────┘
//!                        ├──▶ domain/   (pure rules: Task, Title, status changes)
//!                        └──▶ sidecar/  (the only code that calls the sidecar)
//! ```
//!
//! `domain` knows nothing of gRPC or Dapr. Only `sidecar` calls the Dapr sidecar. `callback`
//! and `notification` answer daprd through the `dapr-app` crate, which implements the
//! AppCallback interfaces. Errors of the use cases become a `tonic::Status` in one place,
//! [`api::status`]; the edges that refuse a call before any use case runs (`auth`, `limits`, the
//! codec in `proto`, routing in `callback`) build theirs where they refuse it.

pub mod adopt;
pub mod api;
pub mod auth;
pub mod callback;
pub mod config;
pub mod domain;
pub mod health;
pub mod limits;
pub mod notification;
mod percent;
pub mod proto;
pub mod secret;
pub mod service;
pub mod sidecar;
pub mod startup;
pub mod telemetry;
