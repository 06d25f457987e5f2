//! Waiting for the sidecar and the components an app needs, before it reports ready.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use dapr::dapr::proto::runtime::v1::GetMetadataResponse;

use crate::{
    config::{ConfigError, ServerConfig},
    secret::Secret,
    sidecar::{Sidecar, SidecarError, secrets::SecretError},
};

/// Why an app could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "APP_API_TOKEN is not set. Without it anyone who reaches port {port} could call the app's Dapr callbacks, which change tasks and take events. Set APP_API_TOKEN to the token the sidecar sends (the sidecar's own APP_API_TOKEN; on Kubernetes the Secret named by dapr.io/app-token-secret)"
    )]
    NoAppToken { port: u16 },
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
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
        "the {name:?} component is {found}, which cannot carry task-api's outbox: it delivers inside the publish call and keeps nothing; use a durable broker such as pubsub.redis or pubsub.kafka"
    )]
    UnsuitableBroker { name: String, found: String },
    #[error(
        "cannot read the API key. Provide the secret, or set AUTH_DISABLED=true to run without API keys"
    )]
    ApiKey(#[source] SecretError),
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
}

impl StartupError {
    /// The app token the sidecar sends: an app that serves Dapr callbacks does not start
    /// without one.
    pub(crate) fn require_app_token(
        token: &Option<Secret>,
        server: &ServerConfig,
    ) -> Result<Secret, Self> {
        token
            .clone()
            .ok_or(StartupError::NoAppToken { port: server.port })
    }
}

/// A Dapr component the app needs: its kind (the type prefix) and name.
#[derive(Debug, Clone)]
pub(crate) struct Requirement {
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    /// The setting that names it, for the error message.
    pub(crate) setting: &'static str,
    /// Component types that have the right kind but cannot serve (e.g. a broker that keeps
    /// nothing where the outbox needs a durable one).
    pub(crate) unsuitable: &'static [&'static str],
}

impl Requirement {
    pub(crate) fn new(kind: &'static str, name: &str, setting: &'static str) -> Self {
        Self {
            kind,
            name: name.to_string(),
            setting,
            unsuitable: &[],
        }
    }

    pub(crate) fn except(mut self, unsuitable: &'static [&'static str]) -> Self {
        self.unsuitable = unsuitable;
        self
    }
}

/// Waits for the sidecar and its components, both bounded by `wait`.
pub(super) async fn wait_for_components(
    sidecar: &Sidecar,
    wait: Duration,
    requirements: &[Requirement],
) -> Result<GetMetadataResponse, StartupError> {
    let started = Instant::now();
    loop {
        let remaining = wait.saturating_sub(started.elapsed());
        let metadata = sidecar.wait_until_answering(remaining).await?;
        match missing_component(&metadata, requirements) {
            None => return Ok(metadata),
            Some(error @ StartupError::UnsuitableBroker { .. }) => return Err(error),
            Some(error) if started.elapsed() >= wait => return Err(error),
            // Components may still be initialising.
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn missing_component(
    metadata: &GetMetadataResponse,
    requirements: &[Requirement],
) -> Option<StartupError> {
    requirements.iter().find_map(|required| {
        let prefix = format!("{}.", required.kind);
        let found = metadata
            .registered_components
            .iter()
            .find(|c| c.name == required.name && c.r#type.starts_with(&prefix));
        match found {
            Some(component) if required.unsuitable.contains(&component.r#type.as_str()) => {
                Some(StartupError::UnsuitableBroker {
                    name: component.name.clone(),
                    found: component.r#type.clone(),
                })
            }
            Some(_) => None,
            None => Some(StartupError::MissingComponent {
                kind: required.kind,
                name: required.name.clone(),
                available: metadata
                    .registered_components
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.r#type))
                    .collect::<Vec<_>>()
                    .join(", "),
                setting: required.setting,
            }),
        }
    })
}

/// Metadata naming `components` as (name, type).
#[cfg(test)]
pub(super) fn metadata(components: &[(&str, &str)]) -> GetMetadataResponse {
    use dapr::dapr::proto::runtime::v1::RegisteredComponents;
    GetMetadataResponse {
        registered_components: components
            .iter()
            .map(|(name, kind)| RegisteredComponents {
                name: name.to_string(),
                r#type: kind.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_unsuitable_component_is_named() {
        let needs = [
            Requirement::new("state", "statestore", "STATE_STORE_NAME"),
            Requirement::new("pubsub", "outbox", "OUTBOX_PUBSUB_NAME")
                .except(&["pubsub.in-memory"]),
        ];
        let ok = metadata(&[("statestore", "state.redis"), ("outbox", "pubsub.redis")]);
        assert!(missing_component(&ok, &needs).is_none());
        let missing = metadata(&[("statestore", "state.redis")]);
        let error = missing_component(&missing, &needs).unwrap().to_string();
        assert!(
            error.contains("\"outbox\"") && error.contains("OUTBOX_PUBSUB_NAME"),
            "{error}"
        );
        let in_memory = metadata(&[
            ("statestore", "state.redis"),
            ("outbox", "pubsub.in-memory"),
        ]);
        assert!(matches!(
            missing_component(&in_memory, &needs),
            Some(StartupError::UnsuitableBroker { .. })
        ));
    }
}
