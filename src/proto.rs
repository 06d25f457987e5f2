//! Code generated from `proto/` by build.rs.

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

/// The descriptor set server reflection serves (task.v1 and notification.v1).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptors");
