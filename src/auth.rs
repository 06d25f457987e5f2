//! Who may call what, decided once per request by gRPC path, before any handler runs.
//!
//! | Calls | Needs |
//! |---|---|
//! | `grpc.health.v1`, server reflection | nothing |
//! | `ListTopicSubscriptions`, `ListInputBindings`, `HealthCheck` (daprd sends them without a token) | nothing |
//! | every other AppCallback / AppCallbackAlpha method | `dapr-api-token` = `APP_API_TOKEN`, when that is set |
//! | TaskService and anything else | `dapr-api-token` = `APP_API_TOKEN` (calls through the sidecar), or the API key (`authorization: Bearer <key>` or `x-api-key`) |
//!
//! Secrets are compared in constant time and never logged.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::sidecar::secrets::ApiKeySecret;

const CALLBACK: &str = "/dapr.proto.runtime.v1.AppCallback/";
const CALLBACK_ALPHA: &str = "/dapr.proto.runtime.v1.AppCallbackAlpha/";
/// Callbacks daprd makes without `dapr-api-token`.
const OPEN_CALLBACKS: [&str; 3] = [
    "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
    "/dapr.proto.runtime.v1.AppCallback/ListInputBindings",
    "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Open,
    SidecarToken,
    Caller,
}

fn policy(path: &str) -> Policy {
    if path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
        || OPEN_CALLBACKS.contains(&path)
    {
        Policy::Open
    } else if path.starts_with(CALLBACK) || path.starts_with(CALLBACK_ALPHA) {
        Policy::SidecarToken
    } else {
        Policy::Caller
    }
}

/// The accepted API key, refreshed from the secret store in the background.
#[derive(Debug, Clone, Default)]
pub struct ApiKey(Arc<RwLock<Option<Arc<str>>>>);

impl ApiKey {
    /// Reads the key now; fails if the secret store or the secret is missing.
    pub async fn load(
        &self,
        secret: &ApiKeySecret,
    ) -> Result<(), crate::sidecar::secrets::SecretError> {
        let key = secret.fetch().await?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key.into());
        Ok(())
    }

    /// Re-reads the key every `interval`, so a rotated key takes effect without a restart. A
    /// failed read keeps the last key.
    pub fn refresh_every(
        &self,
        secret: ApiKeySecret,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let key = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match key.load(&secret).await {
                    Ok(()) => {
                        tracing::debug!(store = %secret.store, secret = %secret.name, "API key refreshed")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "API key refresh failed; keeping the last key")
                    }
                }
            }
        })
    }

    fn matches(&self, presented: &str) -> Option<bool> {
        let current = self.0.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(bool::from(current.as_bytes().ct_eq(presented.as_bytes())))
    }
}

/// The rules for one server.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// `APP_API_TOKEN`.
    app_token: Option<Arc<str>>,
    /// `None` when API keys are disabled.
    api_key: Option<ApiKey>,
}

impl AuthPolicy {
    pub fn new(app_token: Option<String>, api_key: Option<ApiKey>) -> Self {
        Self {
            app_token: app_token.map(Into::into),
            api_key,
        }
    }

    /// Decides one request by its path and headers.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Status> {
        let sidecar_token_ok = || {
            let presented = headers.get(dapr::client::API_TOKEN_METADATA_KEY);
            match (&self.app_token, presented) {
                (Some(expected), Some(presented)) => {
                    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
                }
                _ => false,
            }
        };
        match policy(path) {
            Policy::Open => Ok(()),
            Policy::SidecarToken if self.app_token.is_none() || sidecar_token_ok() => Ok(()),
            Policy::SidecarToken => Err(Status::unauthenticated(
                "missing or wrong dapr-api-token: this callback is only for the app's Dapr sidecar",
            )),
            Policy::Caller if sidecar_token_ok() => Ok(()),
            Policy::Caller => match &self.api_key {
                None => Ok(()),
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

/// Applies an [`AuthPolicy`] in front of every service of a server.
#[derive(Debug, Clone)]
pub struct AuthLayer(pub AuthPolicy);

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    policy: AuthPolicy,
}

impl<S, B, R> Service<Request<B>> for Authenticated<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.policy.check(request.uri().path(), request.headers()) {
            Ok(()) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
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

    fn policy_with_key(app_token: Option<&str>) -> AuthPolicy {
        let key = ApiKey::default();
        *key.0.write().unwrap() = Some("s3cret".into());
        AuthPolicy::new(app_token.map(str::to_string), Some(key))
    }

    const CREATE: &str = "/task.v1.TaskService/CreateTask";
    const TOPIC: &str = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent";

    #[test]
    fn callers_need_the_api_key() {
        let auth = policy_with_key(None);
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
        let auth = policy_with_key(Some("tok"));
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
    fn callbacks_need_the_token_only_when_one_is_set() {
        let open = policy_with_key(None);
        assert!(open.check(TOPIC, &headers(&[])).is_ok());
        let guarded = policy_with_key(Some("tok"));
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
        for path in OPEN_CALLBACKS {
            assert!(guarded.check(path, &headers(&[])).is_ok(), "{path}");
        }
        assert!(
            guarded
                .check("/grpc.health.v1.Health/Check", &headers(&[]))
                .is_ok()
        );
    }

    #[test]
    fn a_key_not_yet_loaded_is_unavailable_not_unauthenticated() {
        let auth = AuthPolicy::new(None, Some(ApiKey::default()));
        let status = auth
            .check(CREATE, &headers(&[("x-api-key", "any")]))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
