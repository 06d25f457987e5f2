//! Logging: one line per request outcome, carrying the W3C trace id of the call.
//!
//! The `traceparent` a request arrives with (daprd sets one on every call it makes, and direct
//! callers may send their own; a call without one gets a new one) is kept for the duration of
//! the request, so calls made to the sidecar while serving it carry it on and the sidecar's
//! spans join the same trace. Every line logged while serving it is inside a `request` span
//! with the trace id, the method and the caller; the outcome line carries them itself.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::{Instrument, Subscriber};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter, prelude::*};

use crate::config::LogFormat;

tokio::task_local! {
    static TRACEPARENT: Option<HeaderValue>;
}

/// The `traceparent` of the request being served, if any.
pub fn current_traceparent() -> Option<HeaderValue> {
    TRACEPARENT.try_with(Clone::clone).ok().flatten()
}

/// The trace id of the request being served, if any.
pub fn current_trace_id() -> Option<String> {
    let traceparent = current_traceparent()?;
    trace_id(traceparent.to_str().ok()?).map(str::to_string)
}

/// The apps' subscriber, writing to `writer`. `RUST_LOG` filters (default `info`).
pub fn subscriber<W>(format: LogFormat, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    // The request span's fields (trace id, method, caller) on every line.
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Text => Box::new(registry.with(fmt::layer().with_writer(writer))),
    }
}

/// Installs the apps' subscriber on stdout.
pub fn init(format: LogFormat) {
    // A second init (tests start several apps in one process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber(format, std::io::stdout));
}

/// `future` with the current request's trace context and span, for work spawned while serving
/// it.
pub fn in_this_request<F: Future>(future: F) -> impl Future<Output = F::Output> {
    TRACEPARENT.scope(
        current_traceparent(),
        future.instrument(tracing::Span::current()),
    )
}

/// The trace id of a `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

/// A fresh W3C `traceparent` (version 00, sampled).
fn new_traceparent() -> Option<HeaderValue> {
    let trace = format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..));
    let span = format!("{:016x}", fastrand::u64(1..));
    HeaderValue::from_str(&format!("00-{trace}-{span}-01")).ok()
}

/// Logs each request's outcome and keeps its `traceparent` for outbound calls.
#[derive(Debug, Clone, Default)]
pub struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestLog<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestLog<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_string();
        // A call without a trace context starts one, so its log line and its calls to the
        // sidecar share an id.
        let traceparent = request
            .headers()
            .get("traceparent")
            .cloned()
            .or_else(new_traceparent);
        let caller = request
            .headers()
            .get("dapr-caller-app-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let trace_id = traceparent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id)
            .unwrap_or("-")
            .to_string();
        // At error level so that the span, and with it the trace id on every line logged inside
        // it, is there whatever level the filter lets through.
        let span = tracing::error_span!(
            "request",
            trace_id = %trace_id,
            grpc.method = %method,
            caller = caller.as_deref().unwrap_or("-"),
        );
        span.in_scope(|| tracing::debug!("request started"));
        let started = Instant::now();
        Box::pin(TRACEPARENT.scope(traceparent, async move {
            let result = inner.call(request).instrument(span).await;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let caller = caller.as_deref().unwrap_or("-");
            match &result {
                Ok(response) => {
                    // Unary errors travel as trailers-only responses: the status is a header.
                    // Without one, the call succeeded.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(tonic::Code::from)
                        .unwrap_or(tonic::Code::Ok);
                    let message = response
                        .headers()
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .map(crate::percent::decode)
                        .unwrap_or_default();
                    log_outcome(&method, code, &message, elapsed_ms, &trace_id, caller);
                }
                Err(error) => tracing::error!(
                    grpc.method = %method, duration_ms = elapsed_ms, trace_id = %trace_id,
                    caller, "request failed in transport: {error}"
                ),
            }
            result
        }))
    }
}

fn log_outcome(
    method: &str,
    code: tonic::Code,
    message: &str,
    elapsed_ms: f64,
    trace_id: &str,
    caller: &str,
) {
    let quiet = method.starts_with("/grpc.health.v1.")
        || method.ends_with("/HealthCheck")
        || method.starts_with("/grpc.reflection.");
    let code_name = format!("{code:?}");
    match code {
        tonic::Code::Ok if quiet => tracing::debug!(
            grpc.method = method, grpc.code = %code_name, duration_ms = elapsed_ms,
            trace_id, caller, "request"
        ),
        tonic::Code::Ok => tracing::info!(
            grpc.method = method, grpc.code = %code_name, duration_ms = elapsed_ms,
            trace_id, caller, "request"
        ),
        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => tracing::error!(
            grpc.method = method, grpc.code = %code_name, duration_ms = elapsed_ms,
            trace_id, caller, grpc.message = message, "request"
        ),
        _ => tracing::warn!(
            grpc.method = method, grpc.code = %code_name, duration_ms = elapsed_ms,
            trace_id, caller, grpc.message = message, "request"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// Every line logged while serving a request carries its trace id, also from work spawned
    /// for it; and calls made for it see its traceparent.
    #[tokio::test]
    async fn lines_inside_a_request_carry_its_trace_id() {
        let captured = Captured::default();
        let _default =
            tracing::subscriber::set_default(subscriber(LogFormat::Json, captured.clone()));
        let inner = tower::service_fn(|_: Request<()>| async {
            tracing::warn!("inside");
            let seen = tokio::spawn(in_this_request(async {
                tracing::warn!("spawned");
                current_trace_id()
            }))
            .await
            .unwrap();
            assert_eq!(seen.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut service = RequestLogLayer.layer(inner);
        let request = Request::builder()
            .uri("/task.v1.TaskService/GetTask")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .unwrap();
        service.call(request).await.unwrap();
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let trace_of = |message: &str| {
            let line = lines
                .iter()
                .find(|l| l["message"] == message)
                .unwrap_or_else(|| panic!("no line {message:?} in {output}"));
            line["span"]["trace_id"]
                .as_str()
                .or(line["trace_id"].as_str())
                .map(str::to_string)
        };
        for message in ["inside", "spawned", "request"] {
            assert_eq!(
                trace_of(message).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{message}: {output}"
            );
        }
    }

    #[test]
    fn new_trace_contexts_are_valid() {
        let header = new_traceparent().unwrap();
        assert!(trace_id(header.to_str().unwrap()).is_some());
    }

    #[test]
    fn reads_the_trace_id_of_a_traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
