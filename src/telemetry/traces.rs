//! Exporting spans over OTLP/gRPC, when the standard OpenTelemetry environment asks for it.
//!
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on; the
//! SDK reads the rest as usual: `OTEL_SERVICE_NAME` (default: the app id), `OTEL_TRACES_SAMPLER`
//! and its argument (default: follow the caller's sampling decision, daprd's), `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `_HEADERS`. Unset, or with `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`, no OpenTelemetry layer is installed at all.
//!
//! The SDK's own complaints (an unreachable collector: every failed batch) are logged under
//! targets `opentelemetry_sdk` and `opentelemetry-otlp`.
//!
//! Only the gRPC protocol is built in (the HTTP one would bring an HTTP client into an app that
//! reaches everything through its sidecar), so another `OTEL_EXPORTER_OTLP_PROTOCOL` turns export
//! off with an error in the log rather than sending to a receiver that cannot answer.

use std::{sync::OnceLock, time::Duration};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};

/// How long shutdown waits for the last spans to be sent.
const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// Why spans are not exported although an endpoint is set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TracesError {
    #[error(
        "{variable}={value:?}: only grpc is supported; traces are not exported (set it to grpc or unset it)"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("the OTLP exporter could not be built; traces are not exported")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Whether the environment (`var`) asks for spans to be exported.
pub(crate) fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, TracesError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if endpoint.is_none() || disabled || no_exporter {
        return Ok(false);
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = set(variable) {
            if value.trim().eq_ignore_ascii_case("grpc") {
                break;
            }
            return Err(TracesError::Protocol { variable, value });
        }
    }
    Ok(true)
}

/// The sampler the SDK builds from the environment, and its argument, as an operator would
/// spell them: (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
pub(crate) fn sampler() -> (String, Option<String>) {
    let set = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    (
        set("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into()),
        set("OTEL_TRACES_SAMPLER_ARG"),
    )
}

/// Whether the sampler follows the caller's decision (the default `parentbased_always_on`, and
/// every `parentbased_*` sampler): then a span continuing an unsampled trace would be dropped,
/// and [`super::spans`] does not make it.
pub(crate) fn follows_the_caller() -> bool {
    static FOLLOWS: OnceLock<bool> = OnceLock::new();
    *FOLLOWS.get_or_init(|| sampler().0.starts_with("parentbased_"))
}

/// The share of the traces starting in this process that are sampled, for the samplers whose
/// decision on such a root this process takes itself (`parentbased_always_on`,
/// `parentbased_always_off`, `parentbased_traceidratio` with its argument, 1 when it is missing
/// or not a number, as the OpenTelemetry specification has it); `None` leaves it to the SDK.
fn root_ratio(sampler: &str, argument: Option<&str>) -> Option<f64> {
    match sampler {
        "parentbased_always_on" => Some(1.0),
        "parentbased_always_off" => Some(0.0),
        "parentbased_traceidratio" => Some(
            argument
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|ratio| ratio.is_finite())
                .map_or(1.0, |ratio| ratio.clamp(0.0, 1.0)),
        ),
        _ => None,
    }
}

#[cfg(test)]
thread_local! {
    /// A root ratio for this thread's tests, instead of the environment's.
    pub(crate) static TEST_ROOT_RATIO: std::cell::Cell<Option<f64>> =
        const { std::cell::Cell::new(None) };
}

fn roots() -> Option<f64> {
    #[cfg(test)]
    if let Some(ratio) = TEST_ROOT_RATIO.with(std::cell::Cell::get) {
        return Some(ratio);
    }
    static ROOTS: OnceLock<Option<f64>> = OnceLock::new();
    *ROOTS.get_or_init(|| {
        let (sampler, argument) = sampler();
        root_ratio(&sampler, argument.as_deref())
    })
}

/// Whether a trace starting here (no `traceparent` to follow) is sampled, drawn before its
/// first span is made: the SDK's sampler decides only when a span starts, after the span and
/// everything under it has cost what a sampled one does. With the samplers of [`root_ratio`],
/// the SDK is then told to sample every root it sees (and to follow the caller otherwise), so
/// that roots are not sampled twice.
pub(crate) fn sample_root() -> bool {
    roots().is_none_or(|ratio| ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio))
}

/// The span export of the process; [`Traces::shutdown`] sends what is still buffered.
#[derive(Debug, Default)]
pub(crate) struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// No export.
    pub(crate) fn off() -> Self {
        Self::default()
    }

    /// A batching OTLP/gRPC exporter for `app` (the default service name). Needs a tokio
    /// runtime: the exporter's channel runs on it.
    pub(crate) fn export(app: &str) -> Result<Self, TracesError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(TracesError::Exporter)?;
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
        let resource = if named {
            Resource::builder().build()
        } else {
            Resource::builder()
                .with_service_name(app.to_string())
                .build()
        };
        let mut builder = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource);
        if roots().is_some() {
            // Roots are drawn in `sample_root`; the SDK follows the caller, or that draw.
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        }
        let provider = builder.build();
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// The tracer the OpenTelemetry layer records into, when exporting.
    pub(crate) fn tracer(&self) -> Option<opentelemetry_sdk::trace::Tracer> {
        self.provider.as_ref().map(|p| p.tracer("task-api"))
    }

    /// Sends the spans still buffered and stops exporting (bounded by [`FLUSH_LIMIT`]).
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's batch processor runs on a thread of its own and is waited for synchronously.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_LIMIT)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "spans not all exported at shutdown"),
            Err(error) => tracing::warn!(%error, "spans not all exported at shutdown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn an_endpoint_turns_export_on() {
        assert!(!wanted(env(&[])).unwrap());
        assert!(!wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap());
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(wanted(env(&[endpoint])).unwrap());
        assert!(
            wanted(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317"
            )]))
            .unwrap()
        );
        assert!(!wanted(env(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")])).unwrap());
        assert!(!wanted(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).unwrap());
    }

    #[test]
    fn roots_are_sampled_here_at_the_parent_based_samplers_ratio() {
        assert_eq!(root_ratio("parentbased_always_on", None), Some(1.0));
        assert_eq!(root_ratio("parentbased_always_off", None), Some(0.0));
        let ratio = |argument| root_ratio("parentbased_traceidratio", argument);
        assert_eq!(ratio(Some("0.1")), Some(0.1));
        assert_eq!(ratio(Some("2")), Some(1.0));
        assert_eq!(ratio(Some("-1")), Some(0.0));
        assert_eq!(ratio(Some("NaN")), Some(1.0));
        assert_eq!(ratio(Some("one in ten")), Some(1.0));
        assert_eq!(ratio(None), Some(1.0));
        // Samplers that do not follow the caller, or that this process cannot draw for, are the
        // SDK's alone.
        assert_eq!(root_ratio("traceidratio", Some("0.1")), None);
        assert_eq!(root_ratio("always_on", None), None);
        assert_eq!(root_ratio("parentbased_jaeger_remote", None), None);
    }

    #[test]
    fn only_the_grpc_protocol_exports() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(wanted(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap());
        let error = wanted(env(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{error}");
        // The traces-specific setting wins.
        assert!(
            wanted(env(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]))
            .unwrap()
        );
    }
}
