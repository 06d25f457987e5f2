//! The background work of a running app: wait for the sidecar and the components, load the API
//! key, then keep readiness in step with what the app depends on and refresh the key, until
//! shutdown.

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};
use tracing::Instrument;

use super::{
    KeyRefresh, OnComponents, Requirement, StartupError, components::wait_for_components, until,
};
use crate::{
    health::Readiness,
    service::chain,
    sidecar::{Dependencies, Sidecar},
    telemetry::spans,
};

/// How often a ready app checks that its sidecar, state store and broker still work.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed probes in a row before the app reports itself not ready (within ~3 s).
const PROBE_FAILURES: u32 = 2;
/// How long background tasks get to end after the server stopped.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

pub(super) struct Background {
    pub(crate) name: &'static str,
    pub(crate) sidecar: Sidecar,
    pub(crate) wait: Duration,
    pub(crate) requirements: Vec<Requirement>,
    pub(crate) dependencies: Dependencies,
    pub(crate) readiness: Readiness,
    pub(crate) api_key: Option<KeyRefresh>,
    pub(crate) on_components: Option<OnComponents>,
}

impl Background {
    /// Starts the background work; the receiver learns why the app could not become ready.
    pub(super) fn spawn(
        self,
        stopped: watch::Receiver<bool>,
    ) -> (tokio::sync::oneshot::Receiver<StartupError>, JoinHandle<()>) {
        let (fatal, fatal_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            if let Err(error) = self.become_ready().await {
                let _ = fatal.send(error);
                return;
            }
            let Self {
                dependencies,
                readiness,
                api_key,
                ..
            } = self;
            let refresh = async {
                if let Some(KeyRefresh { key, secret, every }) = api_key {
                    key.refresh_until(secret, every, until(stopped.clone()))
                        .await;
                }
            };
            tokio::join!(
                watch_dependencies(dependencies, readiness, until(stopped.clone())),
                refresh
            );
        });
        (fatal_rx, handle)
    }

    async fn become_ready(&self) -> Result<(), StartupError> {
        let metadata = wait_for_components(&self.sidecar, self.wait, &self.requirements).await?;
        if let Some(learn) = &self.on_components {
            learn(&metadata);
        }
        if let Some(refresh) = &self.api_key {
            refresh
                .key
                .load(&refresh.secret)
                .await
                .map_err(StartupError::ApiKey)?;
            tracing::info!(store = %refresh.secret.store, secret = %refresh.secret.name, "API key loaded");
        }
        self.readiness.set(true).await;
        tracing::info!(
            app = self.name,
            app_id = %metadata.id,
            dapr_version = %metadata.runtime_version,
            "ready: the Dapr sidecar answers and every component is there"
        );
        Ok(())
    }
}

/// Keeps readiness in step with what the app depends on, until `stop`: not ready after a few
/// failed probes in a row, ready again on the first probe that passes. Probes log at debug;
/// only the changes are told.
async fn watch_dependencies(
    dependencies: Dependencies,
    readiness: Readiness,
    stop: impl Future<Output = ()>,
) {
    let probing = async {
        let mut failures = 0;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            match dependencies
                .check()
                .instrument(spans::readiness_probe())
                .await
            {
                Ok(()) => {
                    if failures >= PROBE_FAILURES {
                        tracing::info!("the sidecar, state store and broker work again: ready");
                    }
                    failures = 0;
                    readiness.set(true).await;
                }
                Err(error) => {
                    failures += 1;
                    tracing::debug!(error = %chain(&error), "readiness probe failed");
                    if failures == PROBE_FAILURES {
                        tracing::warn!(error = %chain(&error), "not ready");
                        readiness.set(false).await;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = probing => {}
        () = stop => {}
    }
}

/// Waits for the background work to end after the server stopped (cancelling it if it takes
/// too long).
pub(super) async fn finish(
    name: &'static str,
    mut background: JoinHandle<()>,
) -> Result<(), StartupError> {
    if tokio::time::timeout(BACKGROUND_GRACE, &mut background)
        .await
        .is_err()
    {
        tracing::warn!(
            app = name,
            "background tasks did not stop in time; cancelled"
        );
        background.abort();
    }
    tracing::info!(app = name, "stopped");
    Ok(())
}
