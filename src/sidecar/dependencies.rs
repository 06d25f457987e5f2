//! What an app needs working to serve, checked through its sidecar: the sidecar itself, the
//! state store behind it and (for task-api) the broker.
//!
//! The checks write nothing but, for the broker, a probe message, and only when no event was
//! staged for a while (staging proves the broker as well): an idle app adds one small message
//! every few seconds to a stream trimmed by age, a busy one none.

use std::{future::Future, time::Duration};

use super::{Sidecar, SidecarError, StateStore};
use crate::service::{
    outbox::Outbox,
    ports::{BrokerError, KeyValueStore, StoreError},
};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A key nobody writes: reading it proves the store answers.
const PROBE_KEY: &str = "readiness-probe";
/// A staging publish this recent proves the broker without a probe.
const BROKER_PROVEN_FOR: Duration = Duration::from_secs(3);

/// What did not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("the Dapr sidecar")]
    Sidecar(#[source] SidecarError),
    #[error("the state store")]
    StateStore(#[source] StoreError),
    #[error("the broker")]
    Broker(#[source] BrokerError),
    #[error("{0}: no answer within {PROBE_TIMEOUT:?}")]
    TimedOut(&'static str),
}

#[derive(Clone)]
pub(crate) struct Dependencies {
    sidecar: Sidecar,
    state: Option<StateStore>,
    broker: Option<Outbox<super::DaprBroker>>,
}

impl Dependencies {
    pub(crate) fn new(sidecar: Sidecar) -> Self {
        Self {
            sidecar,
            state: None,
            broker: None,
        }
    }

    pub(crate) fn with_state_store(mut self, state: StateStore) -> Self {
        self.state = Some(state);
        self
    }

    pub(crate) fn with_broker(mut self, outbox: Outbox<super::DaprBroker>) -> Self {
        self.broker = Some(outbox);
        self
    }

    /// Whether everything answers now; the error names what does not.
    pub(crate) async fn check(&self) -> Result<(), ProbeError> {
        within("the Dapr sidecar", async {
            self.sidecar
                .metadata()
                .await
                .map(|_| ())
                .map_err(ProbeError::Sidecar)
        })
        .await?;
        if let Some(state) = &self.state {
            within("the state store", async {
                state
                    .get(PROBE_KEY)
                    .await
                    .map(|_| ())
                    .map_err(ProbeError::StateStore)
            })
            .await?;
        }
        if let Some(outbox) = &self.broker {
            let proven = outbox
                .proven_since()
                .is_some_and(|since| since < BROKER_PROVEN_FOR);
            if !proven {
                within("the broker", async {
                    outbox.probe().await.map_err(ProbeError::Broker)
                })
                .await?;
            }
        }
        Ok(())
    }
}

async fn within(
    what: &'static str,
    call: impl Future<Output = Result<(), ProbeError>>,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::TimedOut(what)),
    }
}
