//! The only code that talks to Dapr: the service layer's ports implemented over the process's
//! one channel to its sidecar (state, pub/sub, jobs, invocation), plus the sidecar's metadata,
//! secrets and the readiness probes.

mod broker;
mod client;
mod dependencies;
mod jobs;
mod notify;
pub(crate) mod secrets;
mod state;
mod store_kind;
mod witness;

pub(crate) use broker::{DaprBroker, Topics};
pub(crate) use client::{Sidecar, SidecarError};
pub(crate) use dependencies::Dependencies;
pub(crate) use jobs::DaprJobs;
pub(crate) use notify::DaprNotifier;
pub(crate) use state::StateStore;

use tonic::Status;
use tracing::Instrument;

use crate::{
    service::ports::Ports,
    telemetry::{metrics::METRICS, spans},
};

/// One call to the sidecar, as the metrics and the trace name it.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    /// `building_block` and `operation` of `task_api_sidecar_call_duration_seconds`.
    block: &'static str,
    operation: &'static str,
    /// The method of the Dapr API (`dapr.proto.runtime.v1.Dapr`).
    method: &'static str,
    /// What it addresses: (pub/sub component, topic) or (app id, method).
    target: Option<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    const fn new(block: &'static str, operation: &'static str, method: &'static str) -> Self {
        Self {
            block,
            operation,
            method,
            target: None,
        }
    }

    const fn on(self, component: &'a str, name: &'a str) -> Self {
        Self {
            target: Some((component, name)),
            ..self
        }
    }
}

/// Runs one sidecar call in its client span (whose context is the `traceparent` daprd gets),
/// recording its duration and outcome.
async fn timed<T>(
    call: Call<'_>,
    future: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let timer = METRICS.sidecar_timer(call.block, call.operation);
    let span = spans::sidecar(call.block, call.method, call.target);
    let result = future.instrument(span.clone()).await;
    timer.finish(result.is_ok());
    spans::record_client_outcome(&span, result.as_ref().err().map(Status::code));
    result
}

/// The ports as Dapr provides them.
#[derive(Debug, Clone)]
pub(crate) struct Dapr;

impl Ports for Dapr {
    type Store = StateStore;
    type Broker = DaprBroker;
    type Scheduler = DaprJobs;
    type Notifier = DaprNotifier;
}
