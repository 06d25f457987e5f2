//! task-api: serves `task.v1.TaskService` and Dapr's AppCallback on one port.
//! `task-api adopt` makes tasks another implementation stored listable (see `task_api::adopt`).

use std::process::ExitCode;

use task_api::{
    adopt,
    config::{Settings, TaskApiConfig},
    startup,
};

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("adopt") {
        let config = Settings::from_env_and_args(std::env::args().skip(2))
            .and_then(|settings| TaskApiConfig::from_settings(&settings));
        return match config {
            Ok(config) => adopt(config).await,
            Err(error) => {
                eprintln!("task-api adopt: {error}");
                ExitCode::from(2)
            }
        };
    }
    startup::run_binary(
        "task-api",
        TaskApiConfig::from_settings,
        |config| config.server.log_format,
        startup::Application::task_api,
    )
    .await
}
