//! The spans the apps add to a trace, and the W3C trace context they carry across the broker.
//!
//! | Span | Kind | Parent |
//! |---|---|---|
//! | `<service>/<method>` | server | the `traceparent` the call arrived with (daprd's span) |
//! | `dapr.<block> <Method> [<target>]` | client | the current span; sent to daprd as `traceparent` |
//! | `stage <event type>` | producer | the request; its context is kept in the staged event |
//! | `relay`, `deliveries`, `outbox batch`, `index batch` | internal | the one origin when the batch has one, else the current span; linked to every origin |
//! | `publish <event type>` | producer | the staged event; the CloudEvent's `traceparent` on task-events |
//! | `handle <route>` | consumer | the delivered event's `traceparent` |
//! | `verify` | internal | `handle` |
//! | `readiness probe` | internal | none: the probe's sidecar calls hang under it |
//!
//! Every span here has target [`SPANS`], which only the OpenTelemetry layer enables: log lines
//! keep the request span's fields, and without that layer (no OTLP endpoint) these call sites
//! are disabled once and cost a cached check each, with nothing recorded.
//!
//! Spans are made for sampled traces only. With the default sampler (and any `parentbased_*`
//! one) a span continuing a trace its caller did not sample is dropped at its end; making it
//! anyway would cost a request most of what tracing every request costs. So a trace that
//! arrives unsampled (daprd's `samplingRate` below 1) gets no span here: its `traceparent` is
//! passed on as it came, to the sidecar and in the events, and the spans that would have been
//! its children (sidecar calls, staging, verification) are not made either; nor is a batch none
//! of whose origins was sampled. A trace that starts here (a call without `traceparent`, a batch
//! without origins, the readiness probe) is sampled or not before its first span is made
//! ([`super::traces::sample_root`]), for the same reason.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, Status, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span meant for the trace backend only.
pub(crate) const SPANS: &str = "task_api::spans";

/// How a span that may continue a `traceparent` begins.
enum Start {
    /// Not made: the trace it would belong to is not sampled.
    Dropped,
    /// A trace of its own, sampled.
    Root,
    /// A child of the caller's span.
    Continuing(SpanContext),
}

impl Start {
    fn from(traceparent: Option<&str>) -> Self {
        match traceparent.and_then(parse) {
            Some(parent) if super::traces::follows_the_caller() && !parent.is_sampled() => {
                Start::Dropped
            }
            Some(parent) => Start::Continuing(parent),
            None if super::traces::sample_root() => Start::Root,
            None => Start::Dropped,
        }
    }

    /// Makes `span` (not started yet) a child of the caller's span, when it continues one.
    fn parent(self, span: &Span) {
        if let Start::Continuing(parent) = self
            && !span.is_disabled()
        {
            let _ = span.set_parent(Context::new().with_remote_span_context(parent));
        }
    }
}

/// Whether the current span is part of no sampled trace, so its children would be dropped (or
/// would start traces of their own for work done for an unsampled one).
fn outside_a_sampled_trace() -> bool {
    super::traces::follows_the_caller()
        && !Span::current().context().span().span_context().is_sampled()
}

/// The server span of one gRPC call (`path` is `/<service>/<method>`), continuing `parent` (the
/// incoming `traceparent`) or starting a trace.
pub(crate) fn server(path: &str, parent: Option<&str>) -> Span {
    let start = Start::from(parent);
    if matches!(start, Start::Dropped) {
        return Span::none();
    }
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or(("", name));
    let span = tracing::info_span!(
        target: SPANS, "rpc.server",
        otel.name = name, otel.kind = "server",
        rpc.system = "grpc", rpc.service = service, rpc.method = method,
        rpc.grpc.status_code = Empty, otel.status_code = Empty,
    );
    start.parent(&span);
    span
}

/// Records a served call's gRPC code; the codes that mean the server failed mark the span as an
/// error (OpenTelemetry's rule for gRPC servers).
pub(crate) fn record_server_code(span: &Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    use tonic::Code::*;
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.set_status(Status::error(format!("{code:?}")));
    }
}

/// The client span of one call to the sidecar: `dapr.state GetBulkState`,
/// `dapr.pubsub BulkPublishEvent outbox/task-events-outbox`, `dapr.invoke notification-service/notify`.
pub(crate) fn sidecar(block: &str, method: &str, target: Option<(&str, &str)>) -> Span {
    if outside_a_sampled_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPANS, "dapr.call",
        otel.name = %SidecarName { block, method, target },
        otel.kind = "client", rpc.system = "grpc",
        rpc.service = "dapr.proto.runtime.v1.Dapr", rpc.method = method,
        rpc.grpc.status_code = Empty,
    )
}

/// The name of a sidecar call's span: an invocation is named by what it invokes alone.
struct SidecarName<'a> {
    block: &'a str,
    method: &'a str,
    target: Option<(&'a str, &'a str)>,
}

impl std::fmt::Display for SidecarName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            block,
            method,
            target,
        } = self;
        match target {
            Some((app, name)) if *block == "invoke" => write!(f, "dapr.invoke {app}/{name}"),
            Some((component, name)) => write!(f, "dapr.{block} {method} {component}/{name}"),
            None => write!(f, "dapr.{block} {method}"),
        }
    }
}

/// Records how a sidecar call ended.
pub(crate) fn record_client_outcome(span: &Span, code: Option<tonic::Code>) {
    let code = code.unwrap_or(tonic::Code::Ok);
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.set_status(Status::error(format!("{code:?}")));
    }
}

/// Ends each span of `spans`, marked as failed where its work did not succeed.
pub(crate) fn end_each(spans: Vec<Span>, succeeded: impl Iterator<Item = bool>) {
    for (span, succeeded) in spans.into_iter().zip(succeeded) {
        if !succeeded {
            span.set_status(Status::error("failed"));
        }
    }
}

/// A change staging its event: its context travels in the staged event.
pub(crate) fn stage(event_type: &str) -> Span {
    if outside_a_sampled_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPANS, "stage",
        otel.name = %format_args!("stage {event_type}"), otel.kind = "producer",
        event.r#type = event_type,
    )
}

/// One event published to task-events, continuing the change that staged it (`staged`).
pub(crate) fn publish(event_type: &str, staged: Option<&str>) -> Span {
    let start = Start::from(staged);
    if matches!(start, Start::Dropped) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS, "publish",
        otel.name = %format_args!("publish {event_type}"), otel.kind = "producer",
        event.r#type = event_type,
    );
    start.parent(&span);
    span
}

/// One delivered event handled on `route`, continuing the trace it was published in.
pub(crate) fn handle(route: &str, traceparent: Option<&str>) -> Span {
    let start = Start::from(traceparent);
    if matches!(start, Start::Dropped) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS, "handle",
        otel.name = %format_args!("handle {route}"), otel.kind = "consumer",
        route = route,
    );
    start.parent(&span);
    span
}

/// One readiness probe of the sidecar, the state store and the broker: its calls make one
/// trace, not one each.
pub(crate) fn readiness_probe() -> Span {
    if !super::traces::sample_root() {
        return Span::none();
    }
    tracing::info_span!(target: SPANS, "readiness probe", otel.kind = "internal")
}

/// Checking that an event is real: its signature, or the stored task for the original's shape.
pub(crate) fn verify() -> Span {
    if outside_a_sampled_trace() {
        return Span::none();
    }
    tracing::info_span!(target: SPANS, "verify", otel.kind = "internal")
}

/// One piece of work done for several origins at once (each a `traceparent`, `None` for one
/// without a trace): linked to each, and a child of the origin when there is only one, so a
/// lone request's trace stays one tree.
pub(crate) fn batch<'a>(
    name: &'static str,
    origins: impl IntoIterator<Item = Option<&'a str>>,
) -> Span {
    let contexts: Vec<SpanContext> = origins.into_iter().flatten().filter_map(parse).collect();
    let dropped = if contexts.is_empty() {
        !super::traces::sample_root()
    } else {
        super::traces::follows_the_caller() && contexts.iter().all(|c| !c.is_sampled())
    };
    if dropped {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS, "batch",
        otel.name = name, otel.kind = "internal", batch.origins = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let (parent, links) = parent_and_links(contexts);
    span.record("batch.origins", links.len());
    if let Some(parent) = &parent {
        // A span not started yet always takes its parent.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
    }
    for link in links {
        // The link to the parent says so (OpenTelemetry's `opentracing.ref_type`): Jaeger
        // otherwise lets a link's default type, FOLLOWS_FROM, replace the parent reference.
        let child_of = parent.as_ref().is_some_and(|p| same_span(p, &link));
        let attributes = if child_of {
            vec![KeyValue::new("opentracing.ref_type", "child_of")]
        } else {
            Vec::new()
        };
        span.add_link_with_attributes(link, attributes);
    }
    span
}

/// The parent of a batch (its only distinct origin, if it has exactly one) and its links (every
/// distinct origin, in order).
fn parent_and_links(contexts: Vec<SpanContext>) -> (Option<SpanContext>, Vec<SpanContext>) {
    let mut links: Vec<SpanContext> = Vec::with_capacity(contexts.len());
    for context in contexts {
        if !links.iter().any(|seen| same_span(seen, &context)) {
            links.push(context);
        }
    }
    let parent = match links.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    };
    (parent, links)
}

fn same_span(a: &SpanContext, b: &SpanContext) -> bool {
    a.trace_id() == b.trace_id() && a.span_id() == b.span_id()
}

/// Whether the process's subscriber exports spans (set once, when it is installed).
static EXPORTED: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
thread_local! {
    /// This thread's test subscriber exports spans (see `recorded`).
    pub(crate) static TEST_EXPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes that the process's subscriber exports spans (its OpenTelemetry layer is installed).
pub(crate) fn note_exported() {
    EXPORTED.store(true, Ordering::Relaxed);
}

/// Whether spans are recorded for the trace backend at all (an OTLP endpoint is set). A flag,
/// not `tracing::enabled!`: with per-layer filters, asking leaves the layers' answers behind for
/// the next span made on the thread, and the request's log span lost its fields.
pub(crate) fn exported() -> bool {
    #[cfg(test)]
    if TEST_EXPORTED.with(std::cell::Cell::get) {
        return true;
    }
    EXPORTED.load(Ordering::Relaxed)
}

/// The `traceparent` of `span`, when it is part of a trace.
pub(crate) fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let context = otel_span.span_context();
    context.is_valid().then(|| format(context))
}

/// The `traceparent` of the current span, when it is part of a trace.
pub(crate) fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// W3C `00-<trace id>-<span id>-<flags>`.
pub(crate) fn format(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The span context a W3C `traceparent` names, if it is a valid one.
pub(crate) fn parse(traceparent: &str) -> Option<SpanContext> {
    struct Only<'a>(&'a str);
    impl Extractor for Only<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    let context = TraceContextPropagator::new().extract(&Only(traceparent));
    let span = context.span();
    let context = span.span_context();
    context.is_valid().then(|| context.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const B: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
    const C: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

    fn contexts(traceparents: &[&str]) -> Vec<SpanContext> {
        traceparents.iter().filter_map(|t| parse(t)).collect()
    }

    #[test]
    fn traceparents_round_trip() {
        for traceparent in [A, C] {
            assert_eq!(
                parse(traceparent).map(|c| format(&c)).as_deref(),
                Some(traceparent)
            );
        }
        assert!(parse("garbage").is_none());
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn sidecar_calls_are_named_by_building_block_and_what_they_address() {
        let name = |block, method, target| {
            SidecarName {
                block,
                method,
                target,
            }
            .to_string()
        };
        assert_eq!(
            name("state", "GetBulkState", None),
            "dapr.state GetBulkState"
        );
        assert_eq!(
            name(
                "pubsub",
                "BulkPublishEvent",
                Some(("outbox", "task-events-outbox"))
            ),
            "dapr.pubsub BulkPublishEvent outbox/task-events-outbox"
        );
        assert_eq!(
            name(
                "invoke",
                "InvokeService",
                Some(("notification-service", "notify"))
            ),
            "dapr.invoke notification-service/notify"
        );
    }

    #[test]
    fn a_batch_of_one_origin_is_its_child_and_linked_to_it() {
        let (parent, links) = parent_and_links(contexts(&[A]));
        assert_eq!(parent.map(|p| format(&p)).as_deref(), Some(A));
        assert_eq!(links.len(), 1);
        // The same event delivered twice is still one origin.
        let (parent, links) = parent_and_links(contexts(&[A, A]));
        assert_eq!(parent.map(|p| format(&p)).as_deref(), Some(A));
        assert_eq!(links.len(), 1);
    }

    #[test]
    fn a_batch_of_many_origins_is_linked_to_each_and_has_none_as_parent() {
        let (parent, links) = parent_and_links(contexts(&[A, B, C, B]));
        assert!(parent.is_none());
        let linked: Vec<String> = links.iter().map(format).collect();
        assert_eq!(linked, [A, B, C]);
        let (parent, links) = parent_and_links(Vec::new());
        assert!(parent.is_none() && links.is_empty());
    }
}
