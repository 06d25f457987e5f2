//! Code generated from `proto/` by build.rs, and the codec it uses.

pub mod codec;

pub mod task {
    pub mod v1 {
        tonic::include_proto!("task.v1");
    }
}

pub mod notification {
    pub mod v1 {
        tonic::include_proto!("notification.v1");
    }
}

/// What task-api's server reflection describes: task.v1.
pub const TASK_DESCRIPTORS: &[u8] = tonic::include_file_descriptor_set!("task_descriptors");
/// What notification-service's server reflection describes: notification.v1.
pub(crate) const NOTIFICATION_DESCRIPTORS: &[u8] =
    tonic::include_file_descriptor_set!("notification_descriptors");
