//! The whole `main` of an app binary.

use std::process::ExitCode;

use super::{Application, StartupError};
use crate::{
    config::{ConfigError, LogFormat, Settings},
    service::chain,
    telemetry,
};

/// Reads the settings (environment and flags), starts logging (and span export, when the
/// OpenTelemetry environment asks for it; `name` is the default service name), builds the app,
/// serves until SIGTERM or SIGINT, and sends the spans still buffered. Exit code 2 for bad
/// settings, 1 when the app could not start or had to stop, 0 after a clean shutdown.
pub async fn run_binary<C, B, Fut>(
    name: &str,
    parse: impl FnOnce(&Settings) -> Result<C, ConfigError>,
    log_format: impl FnOnce(&C) -> LogFormat,
    build: B,
) -> ExitCode
where
    B: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<Application, StartupError>>,
{
    let config = match Settings::from_env_and_args(std::env::args().skip(1)).and_then(|s| parse(&s))
    {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{name}: {}", chain(&error));
            return ExitCode::from(2);
        }
    };
    let traces = telemetry::init_with_traces(log_format(&config), name);
    let code = match build(config).await {
        Ok(app) => match app.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(error) => {
            tracing::error!("cannot start: {}", chain(&error));
            ExitCode::FAILURE
        }
    };
    // After the last request has been served: its spans go out too.
    traces.shutdown().await;
    code
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the app");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
