//! The tonic server of an app: its layers (request log, metadata limits, authentication,
//! admission), server reflection, and a bounded drain on shutdown.

use std::time::Duration;

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use super::{StartupError, until};
use crate::{
    admission::AdmissionLayer,
    auth::AuthPolicy,
    gate::GateLayer,
    health::Readiness,
    limits::{self, MetadataLimit},
    service::chain,
    telemetry::RequestLogLayer,
};

/// How long shutdown waits for in-flight calls (a client holding a stream open would otherwise
/// hold it forever); below Kubernetes' default 30 s grace period.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

pub(super) struct Server {
    pub(crate) name: &'static str,
    pub(crate) routes: Routes,
    pub(crate) descriptors: &'static [u8],
    pub(crate) auth: AuthPolicy,
    /// Callers' calls worked on at once.
    pub(crate) max_concurrent_calls: usize,
}

impl Server {
    /// Serves until `shutdown` completes or `fatal` reports that the app cannot become ready;
    /// then closes readiness, tells the background work to stop, and drains (bounded).
    pub(super) async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        fatal: oneshot::Receiver<StartupError>,
        readiness: Readiness,
        stop: watch::Sender<bool>,
        stopped: watch::Receiver<bool>,
    ) -> Result<(), StartupError> {
        let name = self.name;
        let (failed_tx, failed) = oneshot::channel();
        let draining = async move {
            tokio::select! {
                () = shutdown => tracing::info!(app = name, "shutting down: draining in-flight requests"),
                Ok(error) = fatal => { let _ = failed_tx.send(error); }
            }
            readiness.close().await;
            let _ = stop.send(true);
        };
        let serving = tonic::transport::Server::builder()
            .http2_max_header_list_size(limits::H2_MAX_HEADER_LIST_BYTES)
            .layer(RequestLogLayer)
            .layer(GateLayer(MetadataLimit))
            .layer(GateLayer(self.auth))
            .layer(AdmissionLayer::new(self.max_concurrent_calls))
            .add_routes(with_reflection(self.routes, self.descriptors))
            .serve_with_incoming_shutdown(incoming(listener), draining);
        let drain_limit = async {
            until(stopped).await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = drain_limit => {
                tracing::warn!(app = name, "calls still open {DRAIN_LIMIT:?} after shutdown began; stopping without them");
                Ok(())
            }
        };
        if let Ok(error) = failed.await {
            tracing::error!(app = name, "cannot start: {}", chain(&error));
            return Err(error);
        }
        Ok(served?)
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames would otherwise wait for
/// the peer's delayed ACK (tens of milliseconds) before going out.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        })
    })
}

/// Adds server reflection (v1 and v1alpha, so every grpcurl works) for the app's own service,
/// grpc.health.v1, and the google.rpc error details its errors carry.
fn with_reflection(routes: Routes, descriptors: &'static [u8]) -> Routes {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = routes;
    match builder().build_v1() {
        Ok(service) => routes = routes.add_service(service),
        Err(error) => tracing::warn!(%error, "reflection v1 unavailable"),
    }
    match builder().build_v1alpha() {
        Ok(service) => routes = routes.add_service(service),
        Err(error) => tracing::warn!(%error, "reflection v1alpha unavailable"),
    }
    routes
}
