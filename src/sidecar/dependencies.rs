//! What an app needs working to serve, checked through its sidecar: the sidecar itself, the
//! state store behind it and (for task-api) the broker.

use std::time::Duration;

use super::{Sidecar, SidecarError, StateStore, outbox::Outbox};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A key nobody writes: reading it proves the store answers.
const PROBE_KEY: &str = "readiness-probe";

#[derive(Debug, Clone)]
pub struct Dependencies {
    sidecar: Sidecar,
    state: Option<StateStore>,
    broker: Option<Outbox>,
}

impl Dependencies {
    pub fn new(sidecar: Sidecar) -> Self {
        Self {
            sidecar,
            state: None,
            broker: None,
        }
    }

    pub fn with_state_store(mut self, state: StateStore) -> Self {
        self.state = Some(state);
        self
    }

    pub fn with_broker(mut self, outbox: Outbox) -> Self {
        self.broker = Some(outbox);
        self
    }

    /// Whether everything answers now; the error names what does not.
    pub async fn check(&self) -> Result<(), String> {
        within("the Dapr sidecar", async {
            self.sidecar.metadata().await.map(|_| ())
        })
        .await?;
        if let Some(state) = &self.state {
            within("the state store", async {
                state.get(PROBE_KEY).await.map(|_| ())
            })
            .await?;
        }
        if let Some(broker) = &self.broker {
            within("the broker", broker.probe()).await?;
        }
        Ok(())
    }
}

async fn within(
    what: &str,
    call: impl std::future::Future<Output = Result<(), SidecarError>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!("{what}: no answer within {PROBE_TIMEOUT:?}")),
    }
}
