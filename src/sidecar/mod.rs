//! The only code that talks to Dapr: state keys and documents, ETags, topics, invocation and
//! secrets, all through the process's one channel to its sidecar.

mod client;
pub mod dead_letters;
mod dependencies;
pub mod index;
pub mod jobs;
pub mod notifications;
pub mod notify;
pub mod outbox;
pub mod requests;
pub mod secrets;
pub mod state;
pub mod tasks;

pub use client::{DaprGrpc, Sidecar, SidecarError, backoff};
pub use dependencies::Dependencies;
pub use state::{StateStore, Versioned};
