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
pub(super) type DaprGrpc = DaprClient<InterceptedService<Channel, Outbound>>;

/// Why the sidecar itself could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("DAPR_GRPC_ENDPOINT {endpoint:?} is not a valid endpoint")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("DAPR_API_TOKEN holds characters not allowed in gRPC metadata")]
    InvalidToken,
    #[error("the Dapr sidecar did not answer")]
    Unanswered(#[source] Status),
    #[error("the Dapr sidecar at {endpoint} did not answer within {waited:?}")]
    NotUp {
        endpoint: String,
        waited: Duration,
        #[source]
        last: Status,
    },
}

/// Codes meaning "not now": the call may succeed later.
pub(super) fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
    )
}

/// Adds `dapr-api-token` and the current trace context (`traceparent`: the call's client span
/// when spans are exported, else the request's) to every outbound call.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    token: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Outbound {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(dapr::client::API_TOKEN_METADATA_KEY, token.clone());
        }
        if let Some(traceparent) = telemetry::outbound_traceparent()
            && let Ok(value) = MetadataValue::try_from(traceparent.as_bytes())
        {
            request.metadata_mut().insert("traceparent", value);
        }
        Ok(request)
    }
}

/// The sidecar: a cloneable handle on the shared channel.
#[derive(Debug, Clone)]
pub(crate) struct Sidecar {
    grpc: DaprGrpc,
    endpoint: String,
}

impl Sidecar {
    /// Prepares the channel; it connects on first use and reconnects after a sidecar restart.
    pub(crate) fn connect_lazy(config: &SidecarConfig) -> Result<Self, SidecarError> {
        let channel = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|source| SidecarError::InvalidEndpoint {
                endpoint: config.endpoint.clone(),
                source,
            })?
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
                let mut value: MetadataValue<Ascii> = token
                    .expose()
                    .parse()
                    .map_err(|_| SidecarError::InvalidToken)?;
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
    pub(crate) fn grpc(&self) -> DaprGrpc {
        self.grpc.clone()
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The sidecar's own description: app id, components, subscriptions.
    pub(crate) async fn metadata(&self) -> Result<GetMetadataResponse, SidecarError> {
        let mut request = tonic::Request::new(GetMetadataRequest {});
        request.set_timeout(Duration::from_secs(2));
        let mut grpc = self.grpc();
        Ok(super::timed(
            super::Call::new("metadata", "get", "GetMetadata"),
            grpc.get_metadata(request),
        )
        .await
        .map_err(SidecarError::Unanswered)?
        .into_inner())
    }

    /// Polls until the sidecar answers, for at most `wait`.
    pub(crate) async fn wait_until_answering(
        &self,
        wait: Duration,
    ) -> Result<GetMetadataResponse, SidecarError> {
        let started = Instant::now();
        loop {
            let last = match self.metadata().await {
                Ok(metadata) => return Ok(metadata),
                Err(SidecarError::Unanswered(status)) => status,
                Err(other) => return Err(other),
            };
            if started.elapsed() >= wait {
                return Err(SidecarError::NotUp {
                    endpoint: self.endpoint.clone(),
                    waited: wait,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
