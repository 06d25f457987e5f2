//! Which callbacks must carry the app token.
//!
//! daprd sends every call to its app with metadata `dapr-api-token` set to its
//! `APP_API_TOKEN`, except three: `ListTopicSubscriptions`, `ListInputBindings` and
//! `HealthCheck`, which it makes without one (and which read nothing). Every other callback
//! changes or reads the app's data or hands it an event, so whoever can reach the app's port
//! could forge them; an app checks the token on exactly those. [`AppTokenLayer`] does so for
//! a server, leaving the app's own services to the app.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

/// The metadata key daprd sends the token under.
pub const METADATA_KEY: &str = "dapr-api-token";

const CALLBACK: &str = "/dapr.proto.runtime.v1.AppCallback/";
const CALLBACK_ALPHA: &str = "/dapr.proto.runtime.v1.AppCallbackAlpha/";
const CALLBACK_HEALTH: &str = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/";
/// The callbacks daprd makes without a token.
const OPEN: [&str; 3] = [
    "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
    "/dapr.proto.runtime.v1.AppCallback/ListInputBindings",
    "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
];

/// What a callback path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// daprd sends it without the token; it reads nothing.
    Open,
    /// Only the sidecar may call it: the token is required.
    AppToken,
}

/// What the gRPC `path` requires, or `None` when it is not a callback.
pub fn access(path: &str) -> Option<Access> {
    if OPEN.contains(&path) {
        Some(Access::Open)
    } else if path.starts_with(CALLBACK)
        || path.starts_with(CALLBACK_ALPHA)
        || path.starts_with(CALLBACK_HEALTH)
    {
        Some(Access::AppToken)
    } else {
        None
    }
}

/// Whether `headers` carry `token`, compared in time that does not depend on where they differ.
pub fn presented(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get(METADATA_KEY)
        .is_some_and(|value| bool::from(value.as_bytes().ct_eq(token)))
}

/// UNAUTHENTICATED for a callback called without the token.
pub fn refused() -> Status {
    Status::unauthenticated(
        "missing or wrong dapr-api-token: this callback is only for the app's Dapr sidecar",
    )
}

/// Requires the token on the callbacks that need it; other paths pass untouched.
#[derive(Clone)]
pub struct AppTokenLayer {
    token: Arc<[u8]>,
}

impl AppTokenLayer {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.as_bytes().into(),
        }
    }
}

impl std::fmt::Debug for AppTokenLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppTokenLayer([redacted])")
    }
}

impl<S> Layer<S> for AppTokenLayer {
    type Service = AppTokenCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AppTokenCheck {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AppTokenCheck<S> {
    inner: S,
    token: Arc<[u8]>,
}

impl<S, B, R> Service<Request<B>> for AppTokenCheck<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let needs_token = access(request.uri().path()) == Some(Access::AppToken);
        if needs_token && !presented(request.headers(), &self.token) {
            return Box::pin(async { Ok(refused().into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_token_less_callbacks_are_open() {
        for path in OPEN {
            assert_eq!(access(path), Some(Access::Open), "{path}");
        }
        for path in [
            "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
            "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent",
            "/dapr.proto.runtime.v1.AppCallback/OnJobEvent",
            "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
            "/dapr.proto.runtime.v1.AppCallback/SomethingNew",
        ] {
            assert_eq!(access(path), Some(Access::AppToken), "{path}");
        }
        assert_eq!(access("/task.v1.TaskService/CreateTask"), None);
        assert_eq!(access("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn the_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!presented(&headers, b"secret"));
        headers.insert(METADATA_KEY, "secre".parse().unwrap());
        assert!(!presented(&headers, b"secret"));
        headers.insert(METADATA_KEY, "secret".parse().unwrap());
        assert!(presented(&headers, b"secret"));
    }
}
