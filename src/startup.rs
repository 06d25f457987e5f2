//! Building and running an app: one tonic server per process carrying the app's own service,
//! the AppCallback interfaces, `grpc.health.v1` and server reflection, on one port.
//!
//! The port serves from the first instant (daprd asks for subscriptions as soon as it accepts
//! connections), while readiness waits for the sidecar in the background. Shutdown closes
//! readiness for good, stops every background task, lets in-flight requests finish, and returns.

use std::{
    future::Future,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use dapr::dapr::proto::runtime::v1::GetMetadataResponse;
use dapr_app::Callbacks;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::{
    api::TaskApi,
    auth::{ApiKey, AuthLayer, AuthPolicy, KeySource},
    callback::{Subscriptions, TaskCallbacks},
    config::{AuthConfig, ConfigError, LogFormat, Settings, TaskApiConfig},
    health::Readiness,
    limits::{self, MetadataLimitLayer},
    proto::{self, task::v1::task_service_server::TaskServiceServer},
    secret::Secret,
    service::{Alarms, EventHandler, Relay, Tasks},
    sidecar::{
        Dependencies, Sidecar, SidecarError, StateStore, dead_letters::DeadLetters,
        index::TaskIndex, jobs::Jobs, notify::Notifier, outbox::Outbox, requests::CreateRequests,
        secrets::ApiKeySecret, tasks::TaskStore,
    },
    telemetry::{self, RequestLogLayer},
};

/// How often a ready app checks that its sidecar, state store and broker still work.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Failed probes in a row before the app reports itself not ready (within ~3 s).
const PROBE_FAILURES: u32 = 2;
/// How long shutdown waits for in-flight calls (a client holding a stream open would otherwise
/// hold it forever); below Kubernetes' default 30 s grace period.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// How long background tasks get to end after the server stopped.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// Why an app could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "APP_API_TOKEN is not set. Without it anyone who reaches port {port} could call the app's Dapr callbacks, which change tasks and take events. Set APP_API_TOKEN to the token the sidecar sends (the sidecar's own APP_API_TOKEN; on Kubernetes the Secret named by dapr.io/app-token-secret)"
    )]
    NoAppToken { port: u16 },
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
    ApiKey(String),
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

/// The API key an app reads once its sidecar answers, and again every `every` until shutdown.
pub struct KeyRefresh {
    pub key: ApiKey,
    pub secret: ApiKeySecret,
    pub every: Duration,
}

/// The API key in the app's secret store, as auth wants it.
struct SecretStoreKey(ApiKeySecret);

impl KeySource for SecretStoreKey {
    async fn fetch(&self) -> Result<Secret, String> {
        self.0.fetch().await.map_err(|e| e.to_string())
    }
}

/// What an app is made of.
pub struct AppParts {
    pub name: &'static str,
    pub sidecar: Sidecar,
    /// How long start-up waits for the sidecar and its components.
    pub sidecar_wait: Duration,
    pub requirements: Vec<Requirement>,
    /// What readiness checks once the app is up.
    pub dependencies: Dependencies,
    /// The app's services, callbacks and health; reflection is added from `descriptors`.
    pub routes: Routes,
    /// The descriptor set of the app's own service, for reflection.
    pub descriptors: &'static [u8],
    pub auth: AuthPolicy,
    pub readiness: Readiness,
    pub api_key: Option<KeyRefresh>,
}

/// An app bound to its port, not serving yet.
pub struct Application {
    listener: TcpListener,
    parts: AppParts,
}

impl Application {
    /// Binds `address` (port 0 picks a free one).
    pub async fn bind(address: SocketAddr, parts: AppParts) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        Ok(Self { listener, parts })
    }

    /// task-api: TaskService and the AppCallback interfaces.
    pub async fn task_api(config: TaskApiConfig) -> Result<Self, StartupError> {
        let address = config.server.address();
        Self::bind(address, task_api_parts(config).await?).await
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn readiness(&self) -> Readiness {
        self.parts.readiness.clone()
    }

    /// Serves until `shutdown` completes, or until the app cannot become ready (then fails).
    /// Either way readiness closes for good, the background tasks stop, and in-flight requests
    /// finish before this returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self { listener, parts } = self;
        let AppParts {
            name,
            sidecar,
            sidecar_wait,
            requirements,
            dependencies,
            routes,
            descriptors,
            auth,
            readiness,
            api_key,
        } = parts;
        tracing::info!(app = name, address = ?listener.local_addr().ok(), "listening; waiting for the Dapr sidecar at {} (up to {sidecar_wait:?})", sidecar.endpoint());

        let (stop, stopped) = watch::channel(false);
        let drain_limit = {
            let stopped = stopped.clone();
            async move {
                until(stopped).await;
                tokio::time::sleep(DRAIN_LIMIT).await;
            }
        };
        let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<StartupError>();
        let background = tokio::spawn({
            let readiness = readiness.clone();
            async move {
                let ready =
                    become_ready(&sidecar, sidecar_wait, &requirements, api_key.as_ref()).await;
                match ready {
                    Ok(metadata) => {
                        readiness.set(true).await;
                        tracing::info!(
                            app = name,
                            app_id = %metadata.id,
                            dapr_version = %metadata.runtime_version,
                            "ready: the Dapr sidecar answers and every component is there"
                        );
                        let refresh = async {
                            if let Some(KeyRefresh { key, secret, every }) = api_key {
                                key.refresh_until(
                                    SecretStoreKey(secret),
                                    every,
                                    until(stopped.clone()),
                                )
                                .await;
                            }
                        };
                        tokio::join!(
                            watch_dependencies(dependencies, readiness, until(stopped.clone())),
                            refresh
                        );
                    }
                    Err(error) => {
                        let _ = fatal_tx.send(error);
                    }
                }
            }
        });

        let mut fatal = None;
        let draining = {
            let readiness = readiness.clone();
            let fatal = &mut fatal;
            async move {
                tokio::select! {
                    () = shutdown => tracing::info!(app = name, "shutting down: draining in-flight requests"),
                    Ok(error) = fatal_rx => *fatal = Some(error),
                }
                readiness.close().await;
                let _ = stop.send(true);
            }
        };
        let serving = tonic::transport::Server::builder()
            .http2_max_header_list_size(limits::H2_MAX_HEADER_LIST_BYTES)
            .layer(RequestLogLayer)
            .layer(MetadataLimitLayer)
            .layer(AuthLayer(auth))
            .add_routes(with_reflection(routes, descriptors))
            .serve_with_incoming_shutdown(incoming(listener), draining);
        let served = tokio::select! {
            served = serving => served,
            () = drain_limit => {
                tracing::warn!(app = name, "calls still open {DRAIN_LIMIT:?} after shutdown began; stopping without them");
                Ok(())
            }
        };
        // The server is done; so are the background tasks, or they are stopped.
        let mut background = background;
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
        if let Some(error) = fatal {
            tracing::error!(app = name, "cannot start: {error}");
            return Err(error);
        }
        served?;
        tracing::info!(app = name, "stopped");
        Ok(())
    }
}

/// Completes once `stopped` says so.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// task-api's parts: its use cases over the sidecar, its service and callbacks.
async fn task_api_parts(config: TaskApiConfig) -> Result<AppParts, StartupError> {
    let app_token = config
        .app_api_token
        .clone()
        .ok_or(StartupError::NoAppToken {
            port: config.server.port,
        })?;
    let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
    let state = StateStore::new(sidecar.clone(), &config.state_store);
    let store = TaskStore::new(state.clone(), config.tombstone_ttl);
    let outbox = Outbox::new(
        sidecar.clone(),
        &config.pubsub,
        &config.outbox_topic,
        &config.topic,
    );
    let alarms = Alarms::new(store.clone(), Jobs::new(sidecar.clone()));
    let tasks = Tasks::new(
        store.clone(),
        TaskIndex::new(state.clone()),
        outbox.clone(),
        CreateRequests::new(state.clone(), config.request_id_ttl),
        alarms.clone(),
    );
    let events = EventHandler::new(
        tasks.clone(),
        Relay::new(store, outbox.clone(), alarms),
        Notifier::new(
            sidecar.clone(),
            &config.notification_app_id,
            config.notify_timeout,
        ),
        DeadLetters::new(state.clone()),
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter, &["task.v1.TaskService"]).await;
    let api = TaskApi::new(tasks.clone());
    let callbacks = TaskCallbacks::new(
        tasks,
        events,
        Subscriptions::new(&config, outbox.clone()),
        readiness.clone(),
    );
    let routes = Callbacks::new(callbacks)
        .add_to(Routes::new(TaskServiceServer::new(api)))
        .add_service(health_service);

    let mut requirements = vec![
        state_store_requirement(&config.state_store),
        Requirement {
            kind: "pubsub",
            name: config.pubsub.clone(),
            setting: "PUBSUB_NAME",
        },
    ];
    let (auth, api_key) = match &config.auth {
        AuthConfig::Disabled => {
            tracing::warn!("AUTH_DISABLED=true: direct callers need no API key");
            (AuthPolicy::open_service(app_token), None)
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
            let refresh = KeyRefresh {
                key: key.clone(),
                secret: ApiKeySecret::new(sidecar.clone(), secret_store, secret_name, secret_key),
                every: *refresh,
            };
            (AuthPolicy::new(app_token, key), Some(refresh))
        }
    };
    Ok(AppParts {
        name: "task-api",
        dependencies: Dependencies::new(sidecar.clone())
            .with_state_store(state)
            .with_broker(outbox),
        sidecar,
        sidecar_wait: config.sidecar.wait,
        requirements,
        routes,
        descriptors: proto::TASK_DESCRIPTORS,
        auth,
        readiness,
        api_key,
    })
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

/// Waits for the sidecar and its components (both bounded by `wait`), then reads the API key.
async fn become_ready(
    sidecar: &Sidecar,
    wait: Duration,
    requirements: &[Requirement],
    api_key: Option<&KeyRefresh>,
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
    if let Some(refresh) = api_key {
        refresh
            .key
            .load(&SecretStoreKey(refresh.secret.clone()))
            .await
            .map_err(StartupError::ApiKey)?;
        tracing::info!(store = %refresh.secret.store, secret = %refresh.secret.name, "API key loaded");
    }
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

/// Keeps readiness in step with what the app depends on, until `stop`: not ready after a few
/// failed probes in a row, ready again on the first probe that passes.
async fn watch_dependencies(
    dependencies: Dependencies,
    readiness: Readiness,
    stop: impl Future<Output = ()>,
) {
    let probing = async {
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
    };
    tokio::select! {
        () = probing => {}
        () = stop => {}
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

/// A required component, for notification-service too.
pub fn state_store_requirement(name: &str) -> Requirement {
    Requirement {
        kind: "state",
        name: name.to_string(),
        setting: "STATE_STORE_NAME",
    }
}
