//! daprd's app health check (`--enable-app-health-check`): healthy while the app can serve and
//! its sidecar answers. While unhealthy, daprd holds back topic events, bindings and jobs.

use dapr::dapr::proto::runtime::v1::HealthCheckResponse;
use tonic::Status;

use crate::health::Readiness;

pub fn check(readiness: &Readiness) -> Result<HealthCheckResponse, Status> {
    if readiness.is_ready() {
        Ok(HealthCheckResponse {})
    } else {
        Err(Status::unavailable(
            "not ready: the Dapr sidecar is not answering (yet)",
        ))
    }
}
