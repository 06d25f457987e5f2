//! Logging and tracing: one line per request outcome, carrying the W3C trace id of the call;
//! and, when an OTLP endpoint is configured ([`traces`]), the spans of [`spans`] exported to it.
//!
//! The `traceparent` a request arrives with (daprd sets one on every call it makes, and direct
//! callers may send their own; a call without one gets a new one) is kept for the duration of
//! the request. Every line logged while serving it is inside a `request` span with the trace id,
//! the method and the caller; the outcome line carries them itself. Calls made to the sidecar
//! while serving it carry the trace on: with spans exported, as the context of their own client
//! span (a child of the request's server span); without, as the `traceparent` the request came
//! with, so the sidecar's spans still join the caller's trace.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::{Instrument, Span, Subscriber, level_filters::LevelFilter};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt, filter_fn},
    fmt,
    fmt::MakeWriter,
    prelude::*,
};

use crate::config::LogFormat;

pub(crate) mod metrics;
#[cfg(test)]
pub(crate) mod recorded;
pub(crate) mod spans;
pub(crate) mod traces;

use metrics::METRICS;
use spans::SPANS;
pub(crate) use traces::Traces;

tokio::task_local! {
    static TRACEPARENT: Option<HeaderValue>;
}

/// The `traceparent` of the request being served, if any.
pub(crate) fn current_traceparent() -> Option<HeaderValue> {
    TRACEPARENT.try_with(Clone::clone).ok().flatten()
}

/// The `traceparent` of the request being served, as text: what work done for it carries when
/// it has no span of its own (spans not exported, or the trace not sampled).
pub(crate) fn request_traceparent() -> Option<String> {
    current_traceparent()?.to_str().ok().map(str::to_string)
}

/// The `traceparent` to send with a call to the sidecar: the current span's when spans are
/// exported, else the request's.
pub(crate) fn outbound_traceparent() -> Option<HeaderValue> {
    spans::current_traceparent()
        .and_then(|traceparent| HeaderValue::from_str(&traceparent).ok())
        .or_else(current_traceparent)
}

/// The trace id of the request being served, if any.
pub(crate) fn current_trace_id() -> Option<String> {
    let traceparent = current_traceparent()?;
    trace_id(traceparent.to_str().ok()?).map(str::to_string)
}

/// The apps' subscriber, writing log lines to `writer` (`RUST_LOG` filters them, default
/// `info`) and, given a tracer, recording the spans of [`spans`] into it.
pub(crate) fn subscriber<W>(
    format: LogFormat,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The trace backend's spans stay out of the log lines, whatever RUST_LOG says.
    let logs = env.and(filter_fn(|m| m.target() != SPANS).with_max_level_hint(LevelFilter::TRACE));
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            // Only the spans meant for it, whatever RUST_LOG says.
            .with_filter(filter_fn(|m| m.target() == SPANS).with_max_level_hint(LevelFilter::INFO))
    });
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Json => Box::new(
            registry.with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    // The request span's fields (trace id, method, caller) on every line.
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer)
                    .with_filter(logs),
            ),
        ),
        LogFormat::Text => {
            Box::new(registry.with(fmt::layer().with_writer(writer).with_filter(logs)))
        }
    }
}

/// Installs the apps' subscriber on stdout, logging only.
pub fn init(format: LogFormat) {
    // A second init (tests start several apps in one process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber(format, std::io::stdout, None));
}

/// Installs the apps' subscriber on stdout, exporting spans as service `app` when the
/// environment asks for it (see [`traces`]). The answer flushes them at shutdown.
pub(crate) fn init_with_traces(format: LogFormat, app: &str) -> Traces {
    let (traces, problem) = match traces::wanted(|name| std::env::var(name).ok()) {
        Ok(false) => (Traces::off(), None),
        Ok(true) => match Traces::export(app) {
            Ok(traces) => (traces, None),
            Err(error) => (Traces::off(), Some(error)),
        },
        Err(error) => (Traces::off(), Some(error)),
    };
    let installed = tracing::subscriber::set_global_default(subscriber(
        format,
        std::io::stdout,
        traces.tracer(),
    ))
    .is_ok();
    if let Some(problem) = problem {
        tracing::error!("{}", crate::service::chain(&problem));
    } else if installed && traces.tracer().is_some() {
        spans::note_exported();
        let (sampler, argument) = traces::sampler();
        tracing::info!(
            sampler,
            sampler.argument = argument.as_deref().unwrap_or("-"),
            "exporting spans over OTLP/gRPC"
        );
    }
    traces
}

/// The trace id of a `traceparent` header (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

/// A fresh W3C `traceparent` (version 00), flagged sampled or not.
fn new_traceparent(sampled: bool) -> Option<HeaderValue> {
    let trace = format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..));
    let span = format!("{:016x}", fastrand::u64(1..));
    let flags = if sampled { "01" } else { "00" };
    HeaderValue::from_str(&format!("00-{trace}-{span}-{flags}")).ok()
}

/// Logs each request's outcome and keeps its `traceparent` for outbound calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestLog<S> {
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
        let served = Served::begin(&request);
        let traceparent = served.traceparent.clone();
        Box::pin(TRACEPARENT.scope(traceparent, async move {
            let result = inner
                .call(request)
                .instrument(served.server.clone())
                .instrument(served.log.clone())
                .await;
            served.finish(&result);
            result
        }))
    }
}

/// One call being served: what its log lines and its spans need.
struct Served {
    method: String,
    caller: Option<String>,
    trace_id: String,
    /// The trace context its calls to the sidecar continue.
    traceparent: Option<HeaderValue>,
    /// The span its log lines are in.
    log: Span,
    /// Its server span in the exported trace (disabled when nothing is exported).
    server: Span,
    started: Instant,
}

impl Served {
    fn begin<B>(request: &Request<B>) -> Self {
        let method = request.uri().path().to_string();
        let incoming = request.headers().get("traceparent").cloned();
        // Health checks and reflection would fill the trace backend with probes.
        let server = if quiet(&method) {
            Span::none()
        } else {
            spans::server(&method, incoming.as_ref().and_then(|v| v.to_str().ok()))
        };
        // The server span's context when it is exported (it continues the incoming one, or
        // starts a trace); otherwise the incoming one, or a fresh one, so that the log line and
        // the calls to the sidecar share an id. A fresh one while spans are exported belongs to
        // a trace not sampled here, and says so, so that daprd records none of it either.
        let traceparent = spans::traceparent_of(&server)
            .and_then(|traceparent| HeaderValue::from_str(&traceparent).ok())
            .or(incoming)
            .or_else(|| new_traceparent(!spans::exported()));
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
        let log = tracing::error_span!(
            "request",
            trace_id = %trace_id,
            grpc.method = %method,
            caller = caller.as_deref().unwrap_or("-"),
        );
        log.in_scope(|| tracing::debug!("request started"));
        Self {
            method,
            caller,
            trace_id,
            traceparent,
            log,
            server,
            started: Instant::now(),
        }
    }

    /// Counts, logs and ends the call.
    fn finish<R, E: std::fmt::Display>(&self, result: &Result<Response<R>, E>) {
        let elapsed = self.started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let caller = self.caller.as_deref().unwrap_or("-");
        let (method, trace_id) = (self.method.as_str(), self.trace_id.as_str());
        match result {
            Ok(response) => {
                let (code, message) = grpc_status(response);
                record(method, code, elapsed);
                spans::record_server_code(&self.server, code);
                log_outcome(method, code, &message, elapsed_ms, trace_id, caller);
            }
            Err(error) => {
                spans::record_server_code(&self.server, tonic::Code::Unknown);
                tracing::error!(
                    grpc.method = %method, duration_ms = elapsed_ms, trace_id = %trace_id,
                    caller, "request failed in transport: {error}"
                )
            }
        }
    }
}

/// The gRPC status of a response. Unary errors travel as trailers-only responses: the status is
/// a header. Without one, the call succeeded.
fn grpc_status<R>(response: &Response<R>) -> (tonic::Code, String) {
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
    (code, message)
}

/// Health checks and reflection: logged at debug when they succeed, and not traced.
fn quiet(method: &str) -> bool {
    method.starts_with("/grpc.health.v1.")
        || method.ends_with("/HealthCheck")
        || method.starts_with("/grpc.reflection.")
}

/// Event deliveries and subscription listings: logged at debug when they succeed (they are
/// counted in the metrics), so a quiet system logs nothing, while the readiness probe's
/// messages come round once a second.
fn routine(method: &str) -> bool {
    method.starts_with("/dapr.proto.runtime.v1.AppCallback")
        && (method.ends_with("TopicEvent")
            || method.ends_with("TopicEventAlpha1")
            || method.ends_with("/ListTopicSubscriptions"))
}

/// One call served, in `rpc_server_duration_seconds`. A path nothing serves (UNIMPLEMENTED) is
/// counted as `unknown`, so callers cannot mint label values.
fn record(path: &str, code: tonic::Code, elapsed: Duration) {
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some(named) if code != tonic::Code::Unimplemented => named,
        _ => ("unknown", "unknown"),
    };
    let code = (code as i32).to_string();
    METRICS
        .rpc_duration
        .with_label_values(&["grpc", service, method, code.as_str()])
        .observe(elapsed.as_secs_f64());
}

fn log_outcome(
    method: &str,
    code: tonic::Code,
    message: &str,
    elapsed_ms: f64,
    trace_id: &str,
    caller: &str,
) {
    let code_name = format!("{code:?}");
    match code {
        tonic::Code::Ok if quiet(method) || routine(method) => tracing::debug!(
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

    /// Every line logged while serving a request carries its trace id, and calls made for it
    /// see its traceparent.
    #[tokio::test]
    async fn lines_inside_a_request_carry_its_trace_id() {
        let captured = Captured::default();
        let _default =
            tracing::subscriber::set_default(subscriber(LogFormat::Json, captured.clone(), None));
        let inner = tower::service_fn(|_: Request<()>| async {
            tracing::warn!("inside");
            let seen = async {
                tracing::warn!("nested");
                outbound_traceparent()
            }
            .await;
            assert_eq!(seen.unwrap().to_str().unwrap(), TRACEPARENT_SENT);
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut service = RequestLogLayer.layer(inner);
        service
            .call(get_task(Some(TRACEPARENT_SENT)))
            .await
            .unwrap();
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for message in ["inside", "nested", "request"] {
            assert_eq!(
                logged_trace_id(&output, message).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{message}: {output}"
            );
        }
    }

    const TRACEPARENT_SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn get_task(traceparent: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri("/task.v1.TaskService/GetTask");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        request.body(()).unwrap()
    }

    /// The trace id on the JSON line with `message`.
    fn logged_trace_id(output: &str, message: &str) -> Option<String> {
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let line = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no line {message:?} in {output}"));
        line["span"]["trace_id"]
            .as_str()
            .or(line["trace_id"].as_str())
            .map(str::to_string)
    }

    /// With spans exported, a call's server span continues the traceparent it came with, and
    /// a sidecar call made for it sends its own client span's context.
    #[tokio::test]
    async fn the_server_span_continues_the_incoming_trace_and_sidecar_calls_continue_it() {
        let (_default, recorded) = recorded::record();
        let inner = tower::service_fn(|_: Request<()>| async {
            let client = spans::sidecar("state", "GetState", None);
            let sent = client.in_scope(outbound_traceparent).unwrap();
            assert_eq!(
                Some(sent.to_str().unwrap().to_string()),
                spans::traceparent_of(&client)
            );
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut service = RequestLogLayer.layer(inner);
        service
            .call(get_task(Some(TRACEPARENT_SENT)))
            .await
            .unwrap();
        let sent = spans::parse(TRACEPARENT_SENT).unwrap();
        let server = recorded.one("task.v1.TaskService/GetTask");
        assert_eq!(server.span_context.trace_id(), sent.trace_id());
        assert_eq!(server.parent_span_id, sent.span_id());
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
        let client = recorded.one("dapr.state GetState");
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        assert_eq!(client.span_context.trace_id(), sent.trace_id());
    }

    /// A call without a trace context starts a trace, and its log line carries that trace's id.
    #[tokio::test]
    async fn a_call_without_a_trace_starts_one_under_the_id_it_logs() {
        let (_default, recorded) = recorded::record();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let inside = seen.clone();
        let inner = tower::service_fn(move |_: Request<()>| {
            let seen = inside.clone();
            async move {
                *seen.lock().unwrap() = current_trace_id();
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        });
        let mut service = RequestLogLayer.layer(inner);
        service.call(get_task(None)).await.unwrap();
        let server = recorded.one("task.v1.TaskService/GetTask");
        assert_eq!(server.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        let logged = seen.lock().unwrap().clone();
        assert_eq!(logged, Some(server.span_context.trace_id().to_string()));
    }

    /// Probes are served without a span: they would bury the traces of real calls.
    #[tokio::test]
    async fn health_checks_are_not_traced() {
        let (_default, recorded) = recorded::record();
        let inner = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut service = RequestLogLayer.layer(inner);
        let check = Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        service.call(check).await.unwrap();
        service.call(get_task(None)).await.unwrap();
        let names: Vec<String> = recorded
            .spans()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["task.v1.TaskService/GetTask"]);
    }

    #[test]
    fn new_trace_contexts_are_valid_and_say_whether_they_are_sampled() {
        for (sampled, flags) in [(true, "-01"), (false, "-00")] {
            let header = new_traceparent(sampled).unwrap();
            let header = header.to_str().unwrap();
            assert!(trace_id(header).is_some());
            assert!(header.ends_with(flags), "{header}");
        }
    }

    /// A trace that would start here and is not sampled costs no span: the call, its sidecar
    /// calls and a batch without origins record nothing, and the sidecar is told the trace is
    /// not sampled, under the id the log line carries.
    #[tokio::test]
    async fn a_root_not_sampled_here_makes_no_span_and_says_so_to_the_sidecar() {
        let (_default, recorded) = recorded::record();
        traces::TEST_ROOT_RATIO.with(|ratio| ratio.set(Some(0.0)));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let inside = seen.clone();
        let inner = tower::service_fn(move |_: Request<()>| {
            let seen = inside.clone();
            async move {
                let client = spans::sidecar("state", "GetState", None);
                let sent = client.in_scope(outbound_traceparent);
                *seen.lock().unwrap() = Some((sent, current_trace_id()));
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        });
        let mut service = RequestLogLayer.layer(inner);
        service.call(get_task(None)).await.unwrap();
        drop(spans::batch("outbox batch", [None]));
        drop(spans::readiness_probe());
        traces::TEST_ROOT_RATIO.with(|ratio| ratio.set(None));
        assert!(recorded.spans().is_empty(), "{:?}", recorded.spans());
        let (sent, logged) = seen.lock().unwrap().clone().unwrap();
        let sent = sent.expect("a traceparent for the sidecar");
        let sent = sent.to_str().unwrap();
        assert!(sent.ends_with("-00"), "{sent}");
        assert_eq!(logged.as_deref(), trace_id(sent));
        // Sampled at 1, the same call is traced.
        service.call(get_task(None)).await.unwrap();
        recorded.one("task.v1.TaskService/GetTask");
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
