//! notification-service: the second Dapr app. task-api invokes its `notify` method through
//! Dapr; it records each notification once (per idempotency key) in its own state store and
//! logs it. Operators and tests read them back with `notification.v1.NotificationService` or
//! the `notifications` invoke method.

mod api;
mod callbacks;

use dapr_app::Callbacks;
use tonic::service::Routes;

use crate::{
    auth::AuthPolicy,
    config::NotificationConfig,
    health::Readiness,
    proto::{self, notification::v1::notification_service_server::NotificationServiceServer},
    sidecar::{Dependencies, Sidecar, StateStore, notifications::NotificationStore},
    startup::{AppParts, Application, StartupError, state_store_requirement},
};

/// Builds notification-service, bound and ready to run.
pub async fn build(config: NotificationConfig) -> Result<Application, StartupError> {
    let app_token = config
        .app_api_token
        .clone()
        .ok_or(StartupError::NoAppToken {
            port: config.server.port,
        })?;
    let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
    let state = StateStore::new(sidecar.clone(), &config.state_store);
    let store = NotificationStore::new(state.clone());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter, &["notification.v1.NotificationService"]).await;
    let callbacks = callbacks::NotificationCallbacks::new(store.clone(), readiness.clone());
    let routes = Callbacks::new(callbacks)
        .add_to(Routes::new(NotificationServiceServer::new(
            api::NotificationApi::new(store),
        )))
        .add_service(health_service);
    let parts = AppParts {
        name: "notification-service",
        dependencies: Dependencies::new(sidecar.clone()).with_state_store(state),
        sidecar,
        sidecar_wait: config.sidecar.wait,
        requirements: vec![state_store_requirement(&config.state_store)],
        routes,
        descriptors: proto::NOTIFICATION_DESCRIPTORS,
        // Reached only through Dapr: callers need the token their sidecar adds.
        auth: AuthPolicy::sidecar_only(app_token),
        readiness,
        api_key: None,
    };
    Application::bind(config.server.address(), parts).await
}
