//! Jobs from the Dapr scheduler and input binding events.

use std::collections::HashMap;

use dapr::dapr::proto::runtime::v1::{BindingEventRequest, JobEventRequest};

/// A job that fired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    /// The name it was scheduled under.
    pub name: String,
    /// The data it was scheduled with (the `Any`'s value).
    pub data: Vec<u8>,
    /// The type URL of the `Any` it was scheduled with (`""` for raw bytes).
    pub type_url: String,
}

impl From<JobEventRequest> for Job {
    fn from(request: JobEventRequest) -> Self {
        let (data, type_url) = match request.data {
            Some(any) => (any.value, any.type_url),
            None => (Vec::new(), String::new()),
        };
        Self {
            name: request.name,
            data,
            type_url,
        }
    }
}

/// An event from an input binding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BindingEvent {
    /// The name of the binding component.
    pub name: String,
    /// What the binding delivered (empty for a cron binding).
    pub data: Vec<u8>,
    /// What the binding adds about it (headers, keys, ...), by component type.
    pub metadata: HashMap<String, String>,
}

impl From<BindingEventRequest> for BindingEvent {
    fn from(request: BindingEventRequest) -> Self {
        Self {
            name: request.name,
            data: request.data,
            metadata: request.metadata,
        }
    }
}
