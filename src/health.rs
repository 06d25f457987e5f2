//! The two questions health asks, answered through `grpc.health.v1`:
//!
//! - service `liveness`: is the process alive? SERVING from the first instant; never depends on
//!   the sidecar, so a slow sidecar start does not get the pod killed in a loop.
//! - service `""` and the app's own services: can it serve? SERVING only while the sidecar
//!   answers. Kubernetes readiness probes and daprd's app health check ask this.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tonic_health::{ServingStatus, server::HealthReporter};

/// The health service name for liveness probes.
pub(crate) const LIVENESS: &str = "liveness";

/// Whether the app can serve, shared by the health service and the AppCallback health check.
#[derive(Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    /// Set when shutdown begins: from then on the app stays not ready.
    closed: Arc<AtomicBool>,
    /// One change at a time, so a probe's late "ready" cannot overtake the close.
    changing: Arc<tokio::sync::Mutex<()>>,
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
}

impl Readiness {
    /// Starts not ready; `services` are the names reported alongside `""`.
    pub(crate) async fn new(reporter: HealthReporter, services: &[&'static str]) -> Self {
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let readiness = Self {
            ready: Arc::new(AtomicBool::new(false)),
            closed: Arc::new(AtomicBool::new(false)),
            changing: Arc::default(),
            reporter,
            services: services.iter().copied().chain([""]).collect(),
        };
        readiness.publish(false).await;
        readiness
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The answer to daprd's app health check (`--enable-app-health-check`): healthy while
    /// ready. While unhealthy, daprd holds back topic events, bindings and jobs.
    pub(crate) fn app_health(&self) -> Result<(), tonic::Status> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(tonic::Status::unavailable(
                "not ready: the Dapr sidecar is not answering (yet)",
            ))
        }
    }

    /// Reports ready or not; once [`Readiness::close`] was called, never ready again.
    pub(crate) async fn set(&self, ready: bool) {
        let _one_at_a_time = self.changing.lock().await;
        let ready = ready && !self.closed.load(Ordering::Acquire);
        if self.ready.swap(ready, Ordering::AcqRel) != ready {
            crate::telemetry::metrics::METRICS
                .ready
                .set(i64::from(ready));
            self.publish(ready).await;
        }
    }

    /// Not ready from now on, whatever a probe finds: the app is shutting down.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.set(false).await;
    }

    async fn publish(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in self.services.iter() {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}
