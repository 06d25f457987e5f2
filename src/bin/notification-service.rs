//! notification-service: receives task-api's notifications through Dapr service invocation.

use std::process::ExitCode;

use task_api::{config::NotificationConfig, notification, startup};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary(
        "notification-service",
        NotificationConfig::from_settings,
        |config| config.server.log_format,
        notification::build,
    )
    .await
}
