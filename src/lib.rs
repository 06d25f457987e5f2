//! task-api: a gRPC task service that runs as a Dapr application (`app-protocol grpc`), and the
//! notification-service it calls.
//!
//! Data flows one way through the layers:
//!
//! ```text
//! api/ (TaskService)      ─┐
//! callback/ (AppCallback) ─┴─▶ service/ ──▶ domain/   (pure rules: Task, Title, status changes)
//!                                  └──────▶ sidecar/  (the only code that talks to Dapr)
//! ```
//!
//! `domain` knows nothing of gRPC or Dapr; only `sidecar` uses the `dapr` crate; only `api`,
//! `callback` and `notification` touch generated protobuf types or build a `tonic::Status`
//! (through [`api::status`], the one place that maps errors to statuses).

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
