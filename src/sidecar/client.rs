//! The process's one gRPC channel to its Dapr sidecar.
//!
//! tonic multiplexes every call over that channel's HTTP/2 connection, so handlers clone the
//! client (cheap: a handle) instead of connecting per request.

use std::time::{Duration, Instant};

use dapr::dapr::proto::runtime::v1::{
    GetMetadataRequest, GetMetadataResponse, dapr_client::DaprClient,
};
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{config::SidecarConfig, telemetry};

/// The generated Dapr client over the shared channel.
pub type DaprGrpc = DaprClient<InterceptedService<Channel, Outbound>>;

/// Why a call to the sidecar failed, in the terms the service layer acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SidecarError {
    /// The sidecar, or the store or broker behind it, did not do it; trying again later may
    /// work. The operation may or may not have taken effect.
    #[error("{0}")]
    Unavailable(String),
    /// The ETag sent no longer matches the stored one.
    #[error("ETag mismatch: {0}")]
    EtagMismatch(String),
    /// The ETag sent is not one the state store could have issued.
    #[error("malformed ETag: {0}")]
    InvalidEtag(String),
    /// The app called through the sidecar refused the request as invalid; sending it again will
    /// not help.
    #[error("refused as invalid: {0}")]
    Refused(String),
    /// A stored value this service cannot read.
    #[error("the value stored under {key:?} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the Dapr sidecar answered {code:?}: {message}")]
    Failed { code: Code, message: String },
    /// The settings that say how to reach the sidecar cannot be used.
    #[error("{0}")]
    InvalidSettings(String),
}

/// Codes meaning "not now": the call may succeed later.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

impl SidecarError {
    /// A state-store call's failure. daprd answers ABORTED for a stale ETag and
    /// INVALID_ARGUMENT for a malformed one (the only invalid part a request of ours can have);
    /// INTERNAL means the store itself failed (unreachable, timed out).
    pub fn from_state(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Aborted => SidecarError::EtagMismatch(message),
            Code::InvalidArgument => SidecarError::InvalidEtag(message),
            Code::Internal => {
                SidecarError::Unavailable(format!("the state store failed: {message}"))
            }
            code if transient(code) => {
                SidecarError::Unavailable(format!("the Dapr sidecar is unreachable: {message}"))
            }
            code => SidecarError::Failed { code, message },
        }
    }

    /// A publish's failure: INTERNAL means the broker did not take the message.
    pub fn from_broker(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Internal => SidecarError::Unavailable(format!("the broker failed: {message}")),
            code if transient(code) => {
                SidecarError::Unavailable(format!("the Dapr sidecar is unreachable: {message}"))
            }
            code => SidecarError::Failed { code, message },
        }
    }

    /// A service invocation's failure: the callee's INVALID_ARGUMENT is a refusal; everything
    /// else may pass.
    pub fn from_invoke(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => SidecarError::Refused(message),
            _ => SidecarError::Unavailable(format!(
                "the call failed ({:?}): {message}",
                status.code()
            )),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, SidecarError::Unavailable(_))
    }
}

impl From<Status> for SidecarError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            code if transient(code) => {
                SidecarError::Unavailable(format!("the Dapr sidecar is unreachable: {message}"))
            }
            code => SidecarError::Failed { code, message },
        }
    }
}

/// Adds `dapr-api-token` and the current request's `traceparent` to every outbound call.
#[derive(Debug, Clone)]
pub struct Outbound {
    token: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Outbound {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(dapr::client::API_TOKEN_METADATA_KEY, token.clone());
        }
        if let Some(traceparent) = telemetry::current_traceparent()
            && let Ok(value) = MetadataValue::try_from(traceparent.as_bytes())
        {
            request.metadata_mut().insert("traceparent", value);
        }
        Ok(request)
    }
}

/// The sidecar: a cloneable handle on the shared channel.
#[derive(Debug, Clone)]
pub struct Sidecar {
    grpc: DaprGrpc,
    endpoint: String,
}

impl Sidecar {
    /// Prepares the channel; it connects on first use and reconnects after a sidecar restart.
    pub fn connect_lazy(config: &SidecarConfig) -> Result<Self, SidecarError> {
        let invalid = || {
            SidecarError::InvalidSettings(format!(
                "DAPR_GRPC_ENDPOINT {:?} is not a valid endpoint",
                config.endpoint
            ))
        };
        let channel = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|_| invalid())?
            // A sidecar that is gone is reported quickly, as UNAVAILABLE.
            .connect_timeout(Duration::from_secs(1))
            .timeout(config.call_timeout)
            .tcp_nodelay(true)
            // daprd sends error details in trailers; past h2's default 16 KiB header-list
            // limit a long one would surface only as an opaque protocol error.
            .http2_max_header_list_size(256 * 1024)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let token = match &config.api_token {
            Some(token) => {
                let mut value: MetadataValue<Ascii> = token.expose().parse().map_err(|_| {
                    SidecarError::InvalidSettings(
                        "DAPR_API_TOKEN holds characters not allowed in gRPC metadata".into(),
                    )
                })?;
                // Kept out of Debug output.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            grpc: DaprClient::with_interceptor(channel, Outbound { token }),
            endpoint: config.endpoint.clone(),
        })
    }

    /// A client for one call (or a few); clones share the channel.
    pub fn grpc(&self) -> DaprGrpc {
        self.grpc.clone()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The sidecar's own description: app id, components, subscriptions.
    pub async fn metadata(&self) -> Result<GetMetadataResponse, SidecarError> {
        let mut request = tonic::Request::new(GetMetadataRequest {});
        request.set_timeout(Duration::from_secs(2));
        Ok(self.grpc().get_metadata(request).await?.into_inner())
    }

    /// Polls until the sidecar answers, for at most `wait`.
    pub async fn wait_until_answering(
        &self,
        wait: Duration,
    ) -> Result<GetMetadataResponse, SidecarError> {
        let started = Instant::now();
        let mut last_error;
        loop {
            match self.metadata().await {
                Ok(metadata) => return Ok(metadata),
                Err(e) => last_error = e,
            }
            if started.elapsed() >= wait {
                return Err(SidecarError::Unavailable(format!(
                    "the Dapr sidecar at {} did not answer within {wait:?} (last error: {last_error})",
                    self.endpoint
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Retries of an optimistic read-modify-write: short, jittered, growing pauses so concurrent
/// writers of one key spread out instead of colliding again.
pub async fn backoff(attempt: u32) {
    let ceiling_ms = (5u64 << attempt.min(6)).min(200);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling_ms))).await;
}
