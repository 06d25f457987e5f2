//! The integration tests: the real apps (in process, on port 0) behind real daprd sidecars, with
//! real Redis, PostgreSQL and the Dapr scheduler and Sentry, all started by the tests themselves
//! through `devstack`. One test binary, one module per area.

mod access_control;
mod auth;
mod callbacks;
mod client_mistakes;
mod common;
mod compatibility;
mod dapr_etags;
mod dapr_outbox;
mod dependencies;
mod deploy_resources;
mod due_dates;
mod faults;
mod lifecycle;
mod listing;
mod observability;
mod run_command;
mod sidecar_calls;
mod soak;
mod task_service;
