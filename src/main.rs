//! task-api: serves `task.v1.TaskService` and Dapr's AppCallback on one port.

use std::process::ExitCode;

use task_api::{
    config::{Settings, TaskApiConfig},
    startup::{Application, shutdown_signal},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Settings::from_env_and_args(std::env::args().skip(1))
        .and_then(|settings| TaskApiConfig::from_settings(&settings))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("task-api: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.server.log_format);
    let app = match Application::task_api(config).await {
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
