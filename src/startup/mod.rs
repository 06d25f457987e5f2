//! Building and running an app: one tonic server per process carrying the app's own service,
//! the AppCallback interfaces, `grpc.health.v1` and server reflection, on one port.
//!
//! The port serves from the first instant (daprd asks for subscriptions as soon as it accepts
//! connections), while readiness waits for the sidecar in the background. Shutdown closes
//! readiness for good, stops every background task, lets in-flight requests finish, and returns.
//!
//! | Module | Concern |
//! |---|---|
//! | `task_api` | task-api's parts: the use cases over the Dapr ports, its service and callbacks |
//! | `components` | waiting for the sidecar and the components the app needs |
//! | `readiness` | keeping readiness in step with the sidecar, store and broker |
//! | `server` | the tonic server: layers, reflection, draining |
//! | `heap` | handing memory a burst freed back to the system |
//! | `binary` | an app binary's `main`: settings, logging, signals, exit codes |

mod binary;
mod components;
mod heap;
mod readiness;
mod server;
pub(crate) mod task_api;

use std::{net::SocketAddr, time::Duration};

use dapr::dapr::proto::runtime::v1::GetMetadataResponse;
use tokio::{net::TcpListener, sync::watch};
use tonic::service::Routes;

pub use crate::telemetry::init as init_logging;
pub use binary::run_binary;
pub(crate) use components::Requirement;
pub use components::StartupError;

use crate::{
    auth::{ApiKey, AuthPolicy},
    config::{DEFAULT_MAX_CONCURRENT_CALLS, TaskApiConfig},
    health::Readiness,
    sidecar::{Dependencies, Sidecar, secrets::ApiKeySecret},
    telemetry::metrics,
};

/// The API key an app reads once its sidecar answers, and again every `every` until shutdown.
pub(crate) struct KeyRefresh {
    pub(crate) key: ApiKey,
    pub(crate) secret: ApiKeySecret,
    pub(crate) every: Duration,
}

/// What an app learns from its sidecar's components once they are all there.
pub(crate) type OnComponents = Box<dyn Fn(&GetMetadataResponse) + Send + Sync>;

/// What an app is made of: built with [`AppSpec::new`] and its `with_*` methods.
pub(crate) struct AppSpec {
    name: &'static str,
    sidecar: Sidecar,
    sidecar_wait: Duration,
    requirements: Vec<Requirement>,
    dependencies: Dependencies,
    routes: Routes,
    descriptors: &'static [u8],
    auth: AuthPolicy,
    readiness: Readiness,
    api_key: Option<KeyRefresh>,
    on_components: Option<OnComponents>,
    metrics: Option<SocketAddr>,
    max_concurrent_calls: usize,
}

impl AppSpec {
    /// An app serving `routes` (its service, callbacks and health; reflection is added from
    /// `descriptors`), admitting callers by `auth`.
    pub(crate) fn new(
        name: &'static str,
        sidecar: Sidecar,
        routes: Routes,
        descriptors: &'static [u8],
        auth: AuthPolicy,
        readiness: Readiness,
    ) -> Self {
        Self {
            name,
            dependencies: Dependencies::new(sidecar.clone()),
            sidecar,
            sidecar_wait: Duration::from_secs(60),
            requirements: Vec::new(),
            routes,
            descriptors,
            auth,
            readiness,
            api_key: None,
            on_components: None,
            metrics: None,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS.get(),
        }
    }

    /// Serves `/metrics` on `address` too.
    pub(crate) fn with_metrics(mut self, address: Option<SocketAddr>) -> Self {
        self.metrics = address;
        self
    }

    /// Callers' calls worked on at once (see [`crate::admission`]).
    pub(crate) fn with_max_concurrent_calls(mut self, calls: usize) -> Self {
        self.max_concurrent_calls = calls;
        self
    }

    /// How long start-up waits for the sidecar and its components.
    pub(crate) fn with_sidecar_wait(mut self, wait: Duration) -> Self {
        self.sidecar_wait = wait;
        self
    }

    /// A component the sidecar must have before the app is ready.
    pub(crate) fn with_requirement(mut self, requirement: Requirement) -> Self {
        self.requirements.push(requirement);
        self
    }

    /// What readiness checks once the app is up.
    pub(crate) fn with_dependencies(mut self, dependencies: Dependencies) -> Self {
        self.dependencies = dependencies;
        self
    }

    /// Called with the sidecar's metadata once every required component is there, before the
    /// app reports ready.
    pub(crate) fn on_components(mut self, learn: OnComponents) -> Self {
        self.on_components = Some(learn);
        self
    }

    /// The API key, read once the sidecar answers and refreshed until shutdown.
    pub(crate) fn with_api_key(mut self, refresh: KeyRefresh) -> Self {
        self.api_key = Some(refresh);
        self
    }
}

/// An app bound to its port, not serving yet.
pub struct Application {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    spec: AppSpec,
}

impl Application {
    /// Binds `address` (port 0 picks a free one).
    pub(crate) async fn bind(address: SocketAddr, spec: AppSpec) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        let metrics = match spec.metrics {
            Some(address) => Some(
                metrics::bind(address)
                    .await
                    .map_err(|source| StartupError::Bind { address, source })?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics,
            spec,
        })
    }

    /// task-api: TaskService and the AppCallback interfaces.
    pub async fn task_api(config: TaskApiConfig) -> Result<Self, StartupError> {
        let address = config.server.address();
        Self::bind(address, task_api::spec(config).await?).await
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn readiness(&self) -> Readiness {
        self.spec.readiness.clone()
    }

    /// Serves until `shutdown` completes, or until the app cannot become ready (then fails).
    /// Either way readiness closes for good, the background tasks stop, and in-flight requests
    /// finish before this returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            metrics,
            spec,
        } = self;
        let AppSpec {
            name,
            routes,
            descriptors,
            auth,
            readiness,
            max_concurrent_calls,
            ..
        } = spec;
        tracing::info!(app = name, address = ?listener.local_addr().ok(), "listening; waiting for the Dapr sidecar at {} (up to {:?})", spec.sidecar.endpoint(), spec.sidecar_wait);
        let (stop, stopped) = watch::channel(false);
        if let Some(metrics) = metrics {
            tokio::spawn(metrics::serve(metrics, until(stopped.clone())));
        }
        tokio::spawn(heap::give_back_free_memory(until(stopped.clone())));
        let background = readiness::Background {
            name,
            sidecar: spec.sidecar,
            wait: spec.sidecar_wait,
            requirements: spec.requirements,
            dependencies: spec.dependencies,
            readiness: readiness.clone(),
            api_key: spec.api_key,
            on_components: spec.on_components,
        };
        let (fatal, background) = background.spawn(stopped.clone());
        let server = server::Server {
            name,
            routes,
            descriptors,
            auth,
            max_concurrent_calls,
        };
        server
            .serve(listener, shutdown, fatal, readiness, stop, stopped)
            .await?;
        readiness::finish(name, background).await
    }
}

/// Completes once `stopped` says so.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
