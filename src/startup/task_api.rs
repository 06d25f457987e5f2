//! task-api's parts: the use cases over the Dapr ports, its service and its callbacks.

use dapr::dapr::proto::runtime::v1::GetMetadataResponse;
use dapr_app::Callbacks;
use tonic::service::Routes;

use super::{AppSpec, KeyRefresh, Requirement, StartupError};
use crate::{
    api::TaskApi,
    auth::{ApiKey, AuthPolicy},
    callback::{Subscriptions, TaskCallbacks},
    config::{AuthConfig, TaskApiConfig},
    domain::EventKey,
    health::Readiness,
    proto::{self, task::v1::task_service_server::TaskServiceServer},
    secret::Secret,
    service::{
        Alarms, EventHandler, Relay, Tasks,
        in_flight::InFlight,
        outbox::Outbox,
        pacing::{Pacing, Waits},
        publisher::Publisher,
        relay,
        store::dead_letters::DeadLetters,
        tasks::Retention,
    },
    sidecar::{
        Dapr, DaprBroker, DaprJobs, DaprNotifier, Dependencies, Sidecar, StateStore, Topics,
        secrets::ApiKeySecret,
    },
    telemetry::metrics::METRICS,
};

/// The broker types that cannot carry the outbox: they deliver inside the publish call.
const NOT_DURABLE: &[&str] = &["pubsub.in-memory"];
/// The broker type on which batches that wait for company pay (see [`crate::service::pacing`]).
const GATHERING_BROKER: &str = "pubsub.redis";

/// task-api's use cases, wired to its sidecar.
pub(crate) struct UseCases {
    pub(crate) tasks: Tasks<Dapr>,
    pub(crate) events: EventHandler<Dapr>,
    pub(crate) outbox: Outbox<DaprBroker>,
    pub(crate) state: StateStore,
    /// How long the event path's batches wait, learned once the sidecar names its brokers.
    pub(crate) pacing: Pacing,
}

/// The use cases over the sidecar. `app_token` is the secret the event signing key is derived
/// from. Must be called within a tokio runtime.
pub(crate) fn use_cases(config: &TaskApiConfig, sidecar: &Sidecar, app_token: &Secret) -> UseCases {
    let state = StateStore::new(sidecar.clone(), &config.state_store);
    let broker = broker(config, sidecar);
    let outbox = Outbox::new(broker.clone());
    let in_flight = InFlight::default();
    report_unpublished(in_flight.clone());
    let retention = Retention {
        tombstones: config.tombstone_ttl,
        request_ids: config.request_id_ttl,
    };
    let key = EventKey::derive(app_token.expose().as_bytes());
    let pacing = Pacing::default();
    let publisher = Publisher::new(
        state.clone(),
        broker.clone(),
        key.clone(),
        config.tombstone_ttl,
        in_flight.clone(),
        pacing.clone(),
    );
    let tasks = Tasks::<Dapr>::new(
        state.clone(),
        outbox.clone(),
        in_flight.clone(),
        retention,
        publisher.clone(),
    );
    let relay = Relay::new(relay::Dependencies {
        store: state.clone(),
        outbox: outbox.clone(),
        alarms: Alarms::new(tasks.records().clone(), DaprJobs::new(sidecar.clone())),
        in_flight,
        publisher,
    });
    let events = EventHandler::new(
        tasks.clone(),
        relay,
        DaprNotifier::new(
            sidecar.clone(),
            &config.notification_app_id,
            config.notify_timeout,
        ),
        broker,
        DeadLetters::new(state.clone()),
        key,
    );
    UseCases {
        tasks,
        events,
        outbox,
        state,
        pacing,
    }
}

/// The waits that suit the brokers task-api's events and staged copies go through: gathering
/// only when both are Redis streams.
fn waits_for(metadata: &GetMetadataResponse, config: &TaskApiConfig) -> Waits {
    let type_of = |name: &str| {
        metadata
            .registered_components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.r#type.as_str())
    };
    let gathering = [&config.pubsub, &config.outbox_pubsub]
        .iter()
        .all(|name| type_of(name) == Some(GATHERING_BROKER));
    if gathering {
        Waits::GATHERING
    } else {
        Waits::SHORT
    }
}

/// The broker with task-api's topics.
fn broker(config: &TaskApiConfig, sidecar: &Sidecar) -> DaprBroker {
    DaprBroker::new(
        sidecar.clone(),
        Topics {
            pubsub: config.pubsub.clone(),
            events: config.topic.clone(),
            retry: config.retry_topic.clone(),
            outbox_pubsub: config.outbox_pubsub.clone(),
            outbox: config.outbox_topic.clone(),
            outbox_retry: config.outbox_retry_topic.clone(),
        },
    )
}

/// Sets the outbox gauges from `in_flight` before every scrape.
fn report_unpublished(in_flight: InFlight) {
    METRICS.on_scrape(move |metrics| {
        let (count, oldest) = in_flight.unpublished();
        metrics.outbox_pending.set(count as i64);
        metrics
            .outbox_oldest_age
            .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
    });
}

/// The components task-api needs from its sidecar.
fn requirements(config: &TaskApiConfig) -> Vec<Requirement> {
    vec![
        Requirement::new("state", &config.state_store, "STATE_STORE_NAME"),
        Requirement::new("pubsub", &config.pubsub, "PUBSUB_NAME").except(NOT_DURABLE),
        Requirement::new("pubsub", &config.outbox_pubsub, "OUTBOX_PUBSUB_NAME").except(NOT_DURABLE),
    ]
}

/// task-api as an app: TaskService and the AppCallback interfaces over its use cases.
pub(crate) async fn spec(config: TaskApiConfig) -> Result<AppSpec, StartupError> {
    let app_token = StartupError::require_app_token(&config.app_api_token, &config.server)?;
    let sidecar = Sidecar::connect_lazy(&config.sidecar)?;
    let UseCases {
        tasks,
        events,
        outbox,
        state,
        pacing,
    } = use_cases(&config, &sidecar, &app_token);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let readiness = Readiness::new(reporter, &["task.v1.TaskService"]).await;
    let callbacks = TaskCallbacks::new(
        tasks.clone(),
        events,
        Subscriptions::new(&config, pacing.clone()),
        readiness.clone(),
    );
    let routes = Callbacks::new(callbacks)
        .add_to(Routes::new(TaskServiceServer::new(TaskApi::new(tasks))))
        .add_service(health_service);
    let dependencies = Dependencies::new(sidecar.clone())
        .with_state_store(state)
        .with_broker(outbox);
    let (auth, api_key) = auth(&config, &sidecar, app_token);
    let mut spec = AppSpec::new(
        "task-api",
        sidecar,
        routes,
        proto::TASK_DESCRIPTORS,
        auth,
        readiness,
    )
    .with_sidecar_wait(config.sidecar.wait)
    .with_dependencies(dependencies)
    .with_metrics(config.server.metrics_address())
    .with_max_concurrent_calls(config.server.max_concurrent_calls)
    .on_components(learn_waits(config.clone(), pacing));
    for requirement in requirements(&config) {
        spec = spec.with_requirement(requirement);
    }
    if let Some((refresh, requirement)) = api_key {
        spec = spec.with_api_key(refresh).with_requirement(requirement);
    }
    Ok(spec)
}

/// Sets `pacing` from the sidecar's brokers.
fn learn_waits(config: TaskApiConfig, pacing: Pacing) -> super::OnComponents {
    Box::new(move |metadata| {
        let waits = waits_for(metadata, &config);
        tracing::info!(
            publish_spacing_ms = waits.publish_spacing.as_millis(),
            events_fill_ms = waits.events_fill.as_millis(),
            "event batching paced for the brokers"
        );
        pacing.learn(waits);
    })
}

/// Who may call task-api, and where its API key comes from.
fn auth(
    config: &TaskApiConfig,
    sidecar: &Sidecar,
    app_token: Secret,
) -> (AuthPolicy, Option<(KeyRefresh, Requirement)>) {
    match &config.auth {
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
            let key = ApiKey::default();
            let refresh = KeyRefresh {
                key: key.clone(),
                secret: ApiKeySecret::new(sidecar.clone(), secret_store, secret_name, secret_key),
                every: *refresh,
            };
            let requirement = Requirement::new(
                "secretstores",
                secret_store,
                "SECRET_STORE_NAME (or AUTH_DISABLED=true)",
            );
            (
                AuthPolicy::new(app_token, key),
                Some((refresh, requirement)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::components::metadata, *};
    use crate::config::Settings;

    #[test]
    fn batches_gather_only_when_events_and_staged_copies_both_go_through_redis() {
        let config = TaskApiConfig::from_settings(&Settings::default()).unwrap();
        let waits = |pubsub: &str, outbox: &str| {
            waits_for(
                &metadata(&[
                    ("statestore", "state.redis"),
                    ("pubsub", pubsub),
                    ("outbox", outbox),
                ]),
                &config,
            )
        };
        assert_eq!(waits("pubsub.redis", "pubsub.redis"), Waits::GATHERING);
        assert_eq!(waits("pubsub.kafka", "pubsub.kafka"), Waits::SHORT);
        assert_eq!(waits("pubsub.redis", "pubsub.kafka"), Waits::SHORT);
        assert_eq!(waits("pubsub.kafka", "pubsub.redis"), Waits::SHORT);
        assert_eq!(waits("pubsub.rabbitmq", "pubsub.rabbitmq"), Waits::SHORT);
    }
}
