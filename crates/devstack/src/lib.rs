//! The local Dapr runtime that task-api runs on, started from code.
//!
//! One place knows how to start Redis, PostgreSQL, Kafka, the Dapr scheduler and a daprd per app, and how
//! to stop them again: the integration tests, the run command (`devstack up`) and the benchmark
//! all use this crate. [`kubernetes`] starts a local Kubernetes control plane with Dapr's;
//! Jaeger and Prometheus ([`jaeger`], [`prometheus`]) observe them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), devstack::Error> {
//! use devstack::{ComponentSet, Stack};
//! let stack = Stack::builder().components(ComponentSet::Redis).start().await?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! // ... serve the app on `listener` ...
//! let port = listener.local_addr().unwrap().port();
//! let sidecar = stack.sidecar("task-api")?.app_port(port).start().await?;
//! let mut dapr = sidecar.dapr_client().await?;
//! # let _ = &mut dapr; Ok(()) }
//! ```
//!
//! Every process binds to 127.0.0.1 only, on ports picked free at start. Dropping a handle stops
//! its process; a handle dropped while the thread panics (a failing test) prints the process log
//! first.

mod binaries;
mod error;
pub mod http;
pub mod jaeger;
mod kafka;
pub mod kubernetes;
mod observability;
mod ports;
mod postgres;
mod process;
pub mod prometheus;
mod redis;
mod resources;
mod scheduler;
mod sentry;
mod sidecar;
mod stack;

pub mod walkthrough;

pub use binaries::{Binaries, install_command};
pub use error::Error;
pub use jaeger::Jaeger;
pub use kafka::{Kafka, PARTITIONS as KAFKA_PARTITIONS, TopicOffsets};
pub use observability::{ObservabilityBinaries, QueryError};
pub use ports::{ensure_free, free_port};
pub use postgres::Postgres;
pub use process::{LogSink, ManagedProcess};
pub use prometheus::{Prometheus, ScrapeTarget};
pub use redis::{GroupBacklog, Redis, command_calls as redis_command_calls, ping as redis_answers};
pub use resources::{ComponentSet, cache_dir, repo_root};
pub use scheduler::Scheduler;
pub use sentry::Sentry;
pub use sidecar::{Sidecar, SidecarBuilder};
pub use stack::{AppProcess, Stack, StackBuilder};

/// The API key the stack writes into its local secret store for task-api.
pub const DEV_API_KEY_SECRET: &str = "task-api-auth";
/// The field of [`DEV_API_KEY_SECRET`] that holds the key.
pub const DEV_API_KEY_FIELD: &str = "api-key";
