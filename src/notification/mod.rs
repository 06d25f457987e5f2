//! notification-service: the second Dapr app. task-api invokes its `notify` method through
//! Dapr; it records each notification once (per idempotency key) in its own state store and
//! logs it. Operators and tests read them back with `notification.v1.NotificationService` or
//! the `notifications` invoke method.

mod api;
mod callbacks;

use dapr::dapr::proto::runtime::v1::{
    app_callback_alpha_server::AppCallbackAlphaServer,
    app_callback_health_check_server::AppCallbackHealthCheckServer,
    app_callback_server::AppCallbackServer,
};
use tonic::service::Routes;

use crate::{
    auth::AuthPolicy,
    config::NotificationConfig,
    health::Readiness,
    proto::notification::v1::notification_service_server::NotificationServiceServer,
    sidecar::{Dependencies, Sidecar, StateStore, notifications::NotificationStore},
    startup::{AppParts, Application, Requirement, StartupError, with_reflection},
};

/// Builds notification-service, bound and ready to run.
pub async fn build(config: NotificationConfig) -> Result<Application, StartupError> {
    let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
    let state = StateStore::new(sidecar.clone(), &config.state_store);
    let store = NotificationStore::new(state.clone());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter, &["notification.v1.NotificationService"]).await;
    let callbacks = callbacks::NotificationCallbacks::new(store.clone(), readiness.clone());
    let routes = Routes::new(NotificationServiceServer::new(api::NotificationApi::new(
        store,
    )))
    .add_service(AppCallbackServer::new(callbacks.clone()))
    .add_service(AppCallbackAlphaServer::new(callbacks.clone()))
    .add_service(AppCallbackHealthCheckServer::new(callbacks))
    .add_service(health_service);
    Application::build(AppParts {
        name: "notification-service",
        address: config.server.address(),
        sidecar_config: config.sidecar.clone(),
        dependencies: Dependencies::new(sidecar.clone()).with_state_store(state),
        sidecar,
        routes: with_reflection(routes),
        // Reached only through Dapr (and by operators): the sidecar token when one is set.
        auth: AuthPolicy::new(config.app_api_token.clone(), None),
        readiness,
        requirements: vec![Requirement {
            kind: "state",
            name: config.state_store.clone(),
            setting: "STATE_STORE_NAME",
        }],
        on_sidecar_ready: Box::new(|| Box::pin(async { Ok(()) })),
    })
    .await
}
