//! Serving the callbacks (and the app's own services) until the app is told to stop.

use std::{future::Future, io, net::SocketAddr};

use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};

/// Why the app's server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound (in use, or not an address of this host).
    #[error("cannot listen on {address}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What the operating system answered.
        #[source]
        source: io::Error,
    },
    /// The server failed while serving.
    #[error("the app's gRPC server failed")]
    Serve {
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A listener on `address`, for [`serve`].
///
/// daprd dials its app on `127.0.0.1:<app-port>`, so the address must accept IPv4 loopback
/// connections: `127.0.0.1:<port>`, or `0.0.0.0:<port>` where other hosts must reach the app
/// too (a Kubernetes probe). Port 0 picks a free port; [`TcpListener::local_addr`] tells which.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Serves `routes` on `listener` until `shutdown` completes, then stops accepting connections,
/// lets the calls in flight finish and returns.
///
/// `routes` is a [`Router`](crate::Router), [`Callbacks`](crate::Callbacks), or tonic
/// [`Routes`] holding the callbacks beside the app's own services
/// (`Callbacks::new(app).add_to(Routes::new(my_service))`): daprd proxies gRPC calls for the
/// app to the same port as the callbacks.
///
/// ```no_run
/// # async fn run() -> Result<(), dapr_app::ServeError> {
/// use dapr_app::{EventStatus, Router, TopicEvent};
///
/// let router = Router::new().topic("pubsub", "orders", "/orders", |_: TopicEvent| async {
///     EventStatus::Success
/// });
/// let listener = dapr_app::bind("127.0.0.1:50051".parse().expect("an address")).await?;
/// let shutdown = async {
///     // A real app also waits for SIGTERM here.
///     let _ = tokio::signal::ctrl_c().await;
/// };
/// dapr_app::serve(listener, router, shutdown).await
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    routes: impl Into<Routes>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::builder()
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|source| ServeError::Serve { source })
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use dapr::dapr::proto::{
        common::v1::InvokeRequest, runtime::v1::app_callback_client::AppCallbackClient,
    };
    use tokio::sync::{Notify, oneshot};
    use tonic::Status;

    use super::*;
    use crate::{Invocation, Reply, Router};

    #[tokio::test]
    async fn shutdown_lets_the_call_in_flight_finish_then_returns() {
        let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (handler_started, handler_release) = (started.clone(), release.clone());
        let router = Router::new().invocation("slow", None, move |_: Invocation| {
            let (started, release) = (handler_started.clone(), handler_release.clone());
            async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, Status>(Reply::json(b"\"done\"".to_vec()))
            }
        });
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, async {
            let _ = stopped.await;
        }));

        let mut client = AppCallbackClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let call = tokio::spawn(async move {
            client
                .on_invoke(InvokeRequest {
                    method: "slow".into(),
                    ..Default::default()
                })
                .await
        });
        tokio::time::timeout(Duration::from_secs(5), started.notified())
            .await
            .expect("the call reached its handler");
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!server.is_finished(), "a call is still in flight");

        release.notify_one();
        let reply = call.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.data.unwrap().value, b"\"done\"");
        let served = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("drained once the call finished");
        assert!(served.unwrap().is_ok());
        assert!(
            AppCallbackClient::connect(format!("http://{address}"))
                .await
                .is_err(),
            "no longer listening"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_a_bind_error_naming_it() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address).await.unwrap_err();
        assert_eq!(error.to_string(), format!("cannot listen on {address}"));
        assert!(std::error::Error::source(&error).is_some());
    }
}
