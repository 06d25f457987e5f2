//! Which callbacks must carry the app token.
//!
//! daprd sends every call to its app with metadata `dapr-api-token` set to its
//! `APP_API_TOKEN`, except three: `ListTopicSubscriptions`, `ListInputBindings` and
//! `HealthCheck`, which it makes without one (and which read nothing). Every other callback
//! changes or reads the app's data or hands it an event, so whoever can reach the app's port
//! could forge them; an app checks the token on exactly those, before any handler runs (in a
//! tower layer in front of its server, which sees each call's path):
//!
//! ```
//! use dapr_app::token::{self, Access};
//! use http::HeaderMap;
//! use tonic::Status;
//!
//! fn check(path: &str, headers: &HeaderMap, app_token: &str) -> Result<(), Status> {
//!     let needs_token = token::access(path) == Some(Access::AppToken);
//!     if needs_token && !token::presented(headers, app_token.as_bytes()) {
//!         return Err(token::refused());
//!     }
//!     Ok(())
//! }
//!
//! let mut headers = HeaderMap::new();
//! let topic_event = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent";
//! assert!(check(topic_event, &headers, "s3cret").is_err());
//! headers.insert(token::METADATA_KEY, "s3cret".parse().unwrap());
//! assert!(check(topic_event, &headers, "s3cret").is_ok());
//! ```

use http::HeaderMap;
use subtle::ConstantTimeEq;
use tonic::Status;

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
