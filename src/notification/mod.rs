//! notification-service: the second Dapr app. task-api invokes its `notify` method through
//! Dapr; it keeps each notification once (per idempotency key) in its own state store and logs
//! it. Operators and tests read them back with `notification.v1.NotificationService` or the
//! `notifications` invoke method.
//!
//! | Module | Concern |
//! |---|---|
//! | `inbox` | the use case: keep a notification once, list a task's |
//! | `store` | the stored documents (bounded per task, expiring) |
//! | `api` | `notification.v1.NotificationService` |
//! | `callbacks` | what daprd calls: invocation of `notify` and `notifications` |

mod api;
mod callbacks;
mod inbox;
mod store;

use dapr_app::Callbacks;
use tonic::service::Routes;

use crate::{
    auth::AuthPolicy,
    config::NotificationConfig,
    health::Readiness,
    proto::{self, notification::v1::notification_service_server::NotificationServiceServer},
    sidecar::{Dependencies, Sidecar, StateStore},
    startup::{AppSpec, Application, Requirement, StartupError},
};

/// Builds notification-service, bound and ready to run.
pub async fn build(config: NotificationConfig) -> Result<Application, StartupError> {
    let app_token = StartupError::require_app_token(&config.app_api_token, &config.server)?;
    let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
    let state = StateStore::new(sidecar.clone(), &config.state_store);
    let inbox = inbox::Inbox::new(state.clone(), config.retention);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter, &["notification.v1.NotificationService"]).await;
    let callbacks = callbacks::NotificationCallbacks::new(inbox.clone(), readiness.clone());
    let routes = Callbacks::new(callbacks)
        .add_to(Routes::new(NotificationServiceServer::new(
            api::NotificationApi::new(inbox),
        )))
        .add_service(health_service);
    let spec = AppSpec::new(
        "notification-service",
        sidecar.clone(),
        routes,
        proto::NOTIFICATION_DESCRIPTORS,
        // Reached only through Dapr: callers need the token their sidecar adds.
        AuthPolicy::sidecar_only(app_token),
        readiness,
    )
    .with_sidecar_wait(config.sidecar.wait)
    .with_metrics(config.server.metrics_address())
    .with_max_concurrent_calls(config.server.max_concurrent_calls)
    .with_requirement(Requirement::new(
        "state",
        &config.state_store,
        "STATE_STORE_NAME",
    ))
    .with_dependencies(Dependencies::new(sidecar).with_state_store(state));
    Application::bind(config.server.address(), spec).await
}
