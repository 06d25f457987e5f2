//! The gRPC face of task-api: `task.v1.TaskService`, the conversions between its messages and
//! the domain, and the one mapping of errors to statuses.

pub(crate) mod convert;
pub(crate) mod status;
mod tasks;

pub(crate) use tasks::TaskApi;
