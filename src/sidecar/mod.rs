//! The only code that talks to Dapr: state keys and documents, ETags, topics, invocation and
//! secrets, all through the process's one channel to its sidecar.

mod client;
pub mod dead_letters;
pub mod events;
pub mod index;
pub mod notifications;
pub mod notify;
pub mod processed;
pub mod secrets;
pub mod state;
pub mod tasks;

pub use client::{DaprGrpc, Sidecar, SidecarError, backoff};
pub use state::{StateStore, Versioned};
