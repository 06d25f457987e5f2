//! Who may call what, decided once per request by gRPC path, before any handler runs.
//!
//! | Calls | Needs |
//! |---|---|
//! | `grpc.health.v1`, server reflection | nothing |
//! | `ListTopicSubscriptions`, `ListInputBindings`, `HealthCheck` (daprd sends them without a token; they read and change nothing) | nothing |
//! | every other AppCallback / AppCallbackAlpha method | `dapr-api-token` = `APP_API_TOKEN` |
//! | the app's own service (TaskService, NotificationService) | `dapr-api-token` = `APP_API_TOKEN` (calls through the sidecar), or the API key (`authorization: Bearer <key>` or `x-api-key`) when the app has one |
//!
//! `APP_API_TOKEN` is required: an app without it refuses to start, so no configuration leaves
//! the callbacks (which read and change tasks, and take events) open to whoever reaches the
//! port. Secrets are compared in constant time and never logged.

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::Duration,
};

use dapr_app::token::{self, Access};
use http::HeaderMap;
use tonic::Status;

use crate::{gate::Gate, secret::Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Open,
    SidecarToken,
    Caller,
}

fn policy(path: &str) -> Policy {
    if path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.") {
        return Policy::Open;
    }
    match token::access(path) {
        Some(Access::Open) => Policy::Open,
        Some(Access::AppToken) => Policy::SidecarToken,
        None => Policy::Caller,
    }
}

/// Where the API key comes from (the app's secret store, in practice).
pub(crate) trait KeySource: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The current key; the error says why it could not be read.
    fn fetch(&self) -> impl Future<Output = Result<Secret, Self::Error>> + Send;
}

/// The accepted API key, refreshed from its source in the background.
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiKey(Arc<RwLock<Option<Secret>>>);

impl ApiKey {
    /// Reads the key now.
    pub(crate) async fn load<S: KeySource>(&self, source: &S) -> Result<(), S::Error> {
        let key = source.fetch().await?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(())
    }

    /// Reads the key again every `interval` until `stop` completes, so a rotated key takes
    /// effect without a restart. A failed read keeps the last key.
    pub(crate) async fn refresh_until(
        &self,
        source: impl KeySource,
        interval: Duration,
        stop: impl Future<Output = ()>,
    ) {
        let refresh = async {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match self.load(&source).await {
                    Ok(()) => tracing::debug!("API key refreshed"),
                    Err(error) => tracing::warn!(
                        error = %crate::service::chain(&error),
                        "API key refresh failed; keeping the last key"
                    ),
                }
            }
        };
        tokio::select! {
            () = refresh => {}
            () = stop => {}
        }
    }

    fn matches(&self, presented: &str) -> Option<bool> {
        let current = self.0.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(current.matches(presented.as_bytes()))
    }
}

/// The rules for one server.
#[derive(Debug, Clone)]
pub(crate) struct AuthPolicy {
    /// `APP_API_TOKEN`.
    app_token: Secret,
    /// `None` when the app takes no API key (AUTH_DISABLED, or an app without one).
    api_key: Option<ApiKey>,
    /// Whether callers of the app's own service may come without any credentials
    /// (AUTH_DISABLED=true).
    open_service: bool,
}

impl AuthPolicy {
    /// Callers of the app's own service need the app token or `api_key`.
    pub(crate) fn new(app_token: Secret, api_key: ApiKey) -> Self {
        Self {
            app_token,
            api_key: Some(api_key),
            open_service: false,
        }
    }

    /// Callers of the app's own service need the app token (they come through the sidecar).
    pub(crate) fn sidecar_only(app_token: Secret) -> Self {
        Self {
            app_token,
            api_key: None,
            open_service: false,
        }
    }

    /// Callers of the app's own service need nothing (AUTH_DISABLED=true); callbacks still need
    /// the app token.
    pub(crate) fn open_service(app_token: Secret) -> Self {
        Self {
            app_token,
            api_key: None,
            open_service: true,
        }
    }
}

impl Gate for AuthPolicy {
    /// Decides one request by its path and headers.
    fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Status> {
        let sidecar_token_ok = || {
            headers
                .get(dapr::client::API_TOKEN_METADATA_KEY)
                .is_some_and(|presented| self.app_token.matches(presented.as_bytes()))
        };
        match policy(path) {
            Policy::Open => Ok(()),
            Policy::SidecarToken if sidecar_token_ok() => Ok(()),
            Policy::SidecarToken => Err(token::refused()),
            Policy::Caller if self.open_service || sidecar_token_ok() => Ok(()),
            Policy::Caller => match &self.api_key {
                None => Err(Status::unauthenticated(
                    "call this service through Dapr (it adds the app token), e.g. with metadata dapr-app-id",
                )),
                Some(api_key) => match presented_key(headers).map(|k| api_key.matches(k)) {
                    Some(Some(true)) => Ok(()),
                    Some(None) => Err(Status::unavailable(
                        "the service is starting and has not read its API key yet; retry shortly",
                    )),
                    _ => Err(Status::unauthenticated(
                        "missing or invalid API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
                    )),
                },
            },
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn policy_with_key(app_token: &str) -> AuthPolicy {
        let key = ApiKey::default();
        *key.0.write().unwrap() = Some(Secret::new("s3cret"));
        AuthPolicy::new(Secret::new(app_token), key)
    }

    const CREATE: &str = "/task.v1.TaskService/CreateTask";
    const TOPIC: &str = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent";

    #[test]
    fn callers_need_the_api_key() {
        let auth = policy_with_key("tok");
        assert!(
            auth.check(CREATE, &headers(&[("authorization", "Bearer s3cret")]))
                .is_ok()
        );
        assert!(
            auth.check(CREATE, &headers(&[("x-api-key", "s3cret")]))
                .is_ok()
        );
        for bad in [
            headers(&[]),
            headers(&[("x-api-key", "wrong")]),
            headers(&[("authorization", "Basic s3cret")]),
            headers(&[("authorization", "Bearer s3cre")]),
        ] {
            let status = auth.check(CREATE, &bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn the_sidecar_token_replaces_the_api_key() {
        let auth = policy_with_key("tok");
        assert!(
            auth.check(CREATE, &headers(&[("dapr-api-token", "tok")]))
                .is_ok()
        );
        assert!(
            auth.check(CREATE, &headers(&[("dapr-api-token", "nope")]))
                .is_err()
        );
    }

    #[test]
    fn callbacks_always_need_the_token() {
        for guarded in [
            policy_with_key("tok"),
            AuthPolicy::open_service(Secret::new("tok")),
            AuthPolicy::sidecar_only(Secret::new("tok")),
        ] {
            assert_eq!(
                guarded.check(TOPIC, &headers(&[])).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
            assert!(
                guarded
                    .check(TOPIC, &headers(&[("dapr-api-token", "tok")]))
                    .is_ok()
            );
            assert!(
                guarded
                    .check(TOPIC, &headers(&[("x-api-key", "s3cret")]))
                    .is_err()
            );
            for path in [
                "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
                "/dapr.proto.runtime.v1.AppCallback/ListInputBindings",
                "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
            ] {
                assert!(guarded.check(path, &headers(&[])).is_ok(), "{path}");
            }
            assert!(
                guarded
                    .check("/grpc.health.v1.Health/Check", &headers(&[]))
                    .is_ok()
            );
        }
    }

    #[test]
    fn a_service_reached_only_through_dapr_needs_the_token() {
        let auth = AuthPolicy::sidecar_only(Secret::new("tok"));
        let list = "/notification.v1.NotificationService/ListNotifications";
        assert_eq!(
            auth.check(list, &headers(&[])).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(
            auth.check(list, &headers(&[("dapr-api-token", "tok")]))
                .is_ok()
        );
        assert!(
            auth.check(list, &headers(&[("dapr-api-token", "nope")]))
                .is_err()
        );
        let open = AuthPolicy::open_service(Secret::new("tok"));
        assert!(open.check(CREATE, &headers(&[])).is_ok(), "AUTH_DISABLED");
    }

    #[test]
    fn a_key_not_yet_loaded_is_unavailable_not_unauthenticated() {
        let auth = AuthPolicy::new(Secret::new("tok"), ApiKey::default());
        let status = auth
            .check(CREATE, &headers(&[("x-api-key", "any")]))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
