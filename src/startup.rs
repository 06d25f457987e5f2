//! Building and running an app: one tonic server per process carrying the app's own services,
//! the AppCallback interfaces, `grpc.health.v1` and server reflection, on one port.
//!
//! The port serves from the first instant (daprd asks for subscriptions as soon as it accepts
//! connections), while readiness waits for the sidecar in the background. Shutdown marks the
//! app not ready, lets in-flight requests finish, and returns.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dapr::dapr::proto::runtime::v1::{
    GetMetadataResponse, app_callback_alpha_server::AppCallbackAlphaServer,
    app_callback_health_check_server::AppCallbackHealthCheckServer,
    app_callback_server::AppCallbackServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::{
    api::TaskApi,
    auth::{ApiKey, AuthLayer, AuthPolicy},
    callback::{Subscriptions, TaskCallbacks},
    config::{AuthConfig, ConfigError, LogFormat, Settings, SidecarConfig, TaskApiConfig},
    health::Readiness,
    proto::{self, task::v1::task_service_server::TaskServiceServer},
    service::{EventHandler, Relay, Tasks},
    sidecar::{
        Dependencies, Sidecar, SidecarError, StateStore,
        dead_letters::DeadLetters,
        index::TaskIndex,
        notify::Notifier,
        outbox::Outbox,
        requests::CreateRequests,
        secrets::{ApiKeySecret, SecretError},
        tasks::TaskStore,
    },
    telemetry::{self, RequestLogLayer},
};

/// How often a ready app checks that its sidecar, state store and broker still work.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed probes in a row before the app reports itself not ready (within ~3 s).
const PROBE_FAILURES: u32 = 2;

/// Why an app could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error(
        "the Dapr sidecar has no {kind} component named {name:?} (it has: {available}); add one to its resources or set {setting}"
    )]
    MissingComponent {
        kind: &'static str,
        name: String,
        available: String,
        setting: &'static str,
    },
    #[error(
        "cannot read the API key: {0}. Provide the secret, or set AUTH_DISABLED=true to run without API keys"
    )]
    ApiKey(#[from] SecretError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A Dapr component the app needs: its kind (the type prefix) and name.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub kind: &'static str,
    pub name: String,
    /// The setting that names it, for the error message.
    pub setting: &'static str,
}

type ReadyHook =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), StartupError>> + Send>> + Send>;

/// An app bound to its port, not serving yet.
pub struct Application {
    name: &'static str,
    listener: TcpListener,
    routes: Routes,
    auth: AuthPolicy,
    readiness: Readiness,
    sidecar: Sidecar,
    dependencies: Dependencies,
    sidecar_wait: Duration,
    requirements: Vec<Requirement>,
    on_sidecar_ready: ReadyHook,
}

/// What an app is made of; see [`Application::build`].
pub struct AppParts {
    pub name: &'static str,
    pub address: SocketAddr,
    pub sidecar_config: SidecarConfig,
    pub sidecar: Sidecar,
    /// What readiness checks once the app is up.
    pub dependencies: Dependencies,
    pub routes: Routes,
    pub auth: AuthPolicy,
    pub readiness: Readiness,
    pub requirements: Vec<Requirement>,
    /// Runs once the sidecar answers, before the app reports ready (e.g. reading secrets).
    pub on_sidecar_ready: ReadyHook,
}

impl Application {
    /// Binds the port (0 picks a free one) and adds health and reflection to `routes`.
    pub async fn build(parts: AppParts) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(parts.address)
                .await
                .map_err(|source| StartupError::Bind {
                    address: parts.address,
                    source,
                })?;
        Ok(Self {
            name: parts.name,
            listener,
            routes: parts.routes,
            auth: parts.auth,
            readiness: parts.readiness,
            sidecar: parts.sidecar,
            dependencies: parts.dependencies,
            sidecar_wait: parts.sidecar_config.wait,
            requirements: parts.requirements,
            on_sidecar_ready: parts.on_sidecar_ready,
        })
    }

    /// task-api: TaskService and the AppCallback interfaces.
    pub async fn task_api(config: TaskApiConfig) -> Result<Self, StartupError> {
        let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
        let state = StateStore::new(sidecar.clone(), &config.state_store);
        let store = TaskStore::new(state.clone(), config.tombstone_ttl);
        let outbox = Outbox::new(
            sidecar.clone(),
            &config.pubsub,
            &config.outbox_topic,
            &config.topic,
        );
        let tasks = Tasks::new(
            store.clone(),
            TaskIndex::new(state.clone()),
            outbox.clone(),
            CreateRequests::new(state.clone(), config.request_id_ttl),
        );
        let events = EventHandler::new(
            tasks.clone(),
            Relay::new(store, outbox.clone()),
            Notifier::new(
                sidecar.clone(),
                &config.notification_app_id,
                config.notify_timeout,
            ),
            DeadLetters::new(state.clone()),
        );
        let dependencies = Dependencies::new(sidecar.clone())
            .with_state_store(state)
            .with_broker(outbox.clone());
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::new(reporter, &["task.v1.TaskService"]).await;
        let callbacks = TaskCallbacks::new(
            tasks.clone(),
            events,
            Subscriptions::new(&config, outbox.clone()),
            readiness.clone(),
        );

        let mut requirements = vec![
            Requirement {
                kind: "state",
                name: config.state_store.clone(),
                setting: "STATE_STORE_NAME",
            },
            Requirement {
                kind: "pubsub",
                name: config.pubsub.clone(),
                setting: "PUBSUB_NAME",
            },
        ];
        let (api_key, on_sidecar_ready): (Option<ApiKey>, ReadyHook) = match &config.auth {
            AuthConfig::Disabled => {
                tracing::warn!("AUTH_DISABLED=true: direct callers need no API key");
                (None, Box::new(|| Box::pin(async { Ok(()) })))
            }
            AuthConfig::ApiKey {
                secret_store,
                secret_name,
                secret_key,
                refresh,
            } => {
                requirements.push(Requirement {
                    kind: "secretstores",
                    name: secret_store.clone(),
                    setting: "SECRET_STORE_NAME (or AUTH_DISABLED=true)",
                });
                let key = ApiKey::default();
                let secret =
                    ApiKeySecret::new(sidecar.clone(), secret_store, secret_name, secret_key);
                let refresh = *refresh;
                let hook_key = key.clone();
                let hook: ReadyHook = Box::new(move || {
                    Box::pin(async move {
                        hook_key.load(&secret).await?;
                        tracing::info!(store = %secret.store, secret = %secret.name, "API key loaded");
                        hook_key.refresh_every(secret, refresh);
                        Ok(())
                    })
                });
                (Some(key), hook)
            }
        };

        let routes = Routes::new(TaskServiceServer::new(TaskApi::new(tasks)))
            .add_service(AppCallbackServer::new(callbacks.clone()))
            .add_service(AppCallbackAlphaServer::new(callbacks.clone()))
            .add_service(AppCallbackHealthCheckServer::new(callbacks))
            .add_service(health_service);
        Self::build(AppParts {
            name: "task-api",
            address: config.server.address(),
            sidecar_config: config.sidecar.clone(),
            sidecar,
            dependencies,
            routes: with_reflection(routes),
            auth: AuthPolicy::new(config.app_api_token.clone(), api_key),
            readiness,
            requirements,
            on_sidecar_ready,
        })
        .await
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves until `shutdown` completes (then drains in-flight requests), or until the app
    /// cannot become ready (then fails).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            name,
            listener,
            routes,
            auth,
            readiness,
            sidecar,
            dependencies,
            sidecar_wait,
            requirements,
            on_sidecar_ready,
        } = self;
        let local = listener.local_addr().ok();
        tracing::info!(app = name, address = ?local, "listening; waiting for the Dapr sidecar at {} (up to {sidecar_wait:?})", sidecar.endpoint());

        let fatal: Arc<Mutex<Option<StartupError>>> = Arc::default();
        let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<()>();
        let become_ready = tokio::spawn({
            let readiness = readiness.clone();
            let fatal = fatal.clone();
            async move {
                let result =
                    become_ready(&sidecar, sidecar_wait, &requirements, on_sidecar_ready).await;
                match result {
                    Ok(metadata) => {
                        readiness.set(true).await;
                        tracing::info!(
                            app = name,
                            app_id = %metadata.id,
                            dapr_version = %metadata.runtime_version,
                            "ready: the Dapr sidecar answers and every component is there"
                        );
                        watch_dependencies(dependencies, readiness).await;
                    }
                    Err(error) => {
                        *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        let _ = fatal_tx.send(());
                    }
                }
            }
        });

        let stop = {
            let readiness = readiness.clone();
            async move {
                tokio::select! {
                    () = shutdown => tracing::info!(app = name, "shutting down: draining in-flight requests"),
                    Ok(()) = fatal_rx => {}
                }
                readiness.set(false).await;
            }
        };
        let served = tonic::transport::Server::builder()
            .layer(RequestLogLayer)
            .layer(AuthLayer(auth))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listener), stop)
            .await;
        become_ready.abort();
        if let Some(error) = fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tracing::error!(app = name, "cannot start: {error}");
            return Err(error);
        }
        served?;
        tracing::info!(app = name, "stopped");
        Ok(())
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

/// Adds server reflection (v1 and v1alpha, so every grpcurl works) for the app's own services
/// and grpc.health.v1.
pub fn with_reflection(routes: Routes) -> Routes {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

/// Waits for the sidecar and its components (both bounded by `wait`), then runs the hook.
async fn become_ready(
    sidecar: &Sidecar,
    wait: Duration,
    requirements: &[Requirement],
    on_sidecar_ready: ReadyHook,
) -> Result<GetMetadataResponse, StartupError> {
    let started = Instant::now();
    let metadata = loop {
        let remaining = wait.saturating_sub(started.elapsed());
        let metadata = sidecar.wait_until_answering(remaining).await?;
        match missing_component(&metadata, requirements) {
            None => break metadata,
            Some(error) if started.elapsed() >= wait => return Err(error),
            // Components may still be initialising.
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    on_sidecar_ready().await?;
    Ok(metadata)
}

fn missing_component(
    metadata: &GetMetadataResponse,
    requirements: &[Requirement],
) -> Option<StartupError> {
    requirements.iter().find_map(|required| {
        let present = metadata.registered_components.iter().any(|c| {
            c.name == required.name && c.r#type.starts_with(&format!("{}.", required.kind))
        });
        (!present).then(|| StartupError::MissingComponent {
            kind: required.kind,
            name: required.name.clone(),
            available: metadata
                .registered_components
                .iter()
                .map(|c| format!("{} ({})", c.name, c.r#type))
                .collect::<Vec<_>>()
                .join(", "),
            setting: required.setting,
        })
    })
}

/// Keeps readiness in step with what the app depends on: not ready after a few failed probes in
/// a row, ready again on the first probe that passes.
async fn watch_dependencies(dependencies: Dependencies, readiness: Readiness) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        match dependencies.check().await {
            Ok(()) => {
                if failures >= PROBE_FAILURES {
                    tracing::info!("the sidecar, state store and broker work again: ready");
                }
                failures = 0;
                readiness.set(true).await;
            }
            Err(error) => {
                failures += 1;
                if failures == PROBE_FAILURES {
                    tracing::warn!(%error, "not ready");
                    readiness.set(false).await;
                }
            }
        }
    }
}

/// The whole `main` of an app binary: read the settings (environment and flags), start logging,
/// build the app, serve until SIGTERM or SIGINT. Exit code 2 for bad settings, 1 when the app
/// could not start or had to stop, 0 after a clean shutdown.
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
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(log_format(&config));
    let app = match build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
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
