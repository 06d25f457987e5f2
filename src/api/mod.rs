//! The gRPC face of task-api: `task.v1.TaskService`, the conversions between its messages and
//! the domain, and the one mapping of errors to statuses.

pub mod convert;
pub mod status;
mod tasks;

pub use tasks::TaskApi;
