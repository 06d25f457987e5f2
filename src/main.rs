//! task-api: serves `task.v1.TaskService` and Dapr's AppCallback on one port.

use std::process::ExitCode;

use task_api::{config::TaskApiConfig, startup};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary(
        "task-api",
        TaskApiConfig::from_settings,
        |config| config.server.log_format,
        startup::Application::task_api,
    )
    .await
}
