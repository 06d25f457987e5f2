//! notification-service: receives task-api's notifications through Dapr service invocation.

use std::process::ExitCode;

use task_api::{
    config::{NotificationConfig, Settings},
    notification,
    startup::shutdown_signal,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Settings::from_env_and_args(std::env::args().skip(1))
        .and_then(|settings| NotificationConfig::from_settings(&settings))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("notification-service: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.server.log_format);
    let app = match notification::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
