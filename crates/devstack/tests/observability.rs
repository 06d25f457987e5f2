//! daprd's traces and metrics in real backends: two sidecars export their spans over OTLP to a
//! Jaeger the test starts (the stack renders components/config.yaml with its address), and a
//! Prometheus the test starts scrapes both sidecars' metrics ports.
//!
//! One service invocation, caller sidecar → callee sidecar → a minimal app, must come out of
//! Jaeger's query API as one trace whose spans all hang together, and the app must have been
//! handed a `traceparent` naming a span of that trace (the app's own spans will hang there).

use std::time::Duration;

use dapr::dapr::proto::{
    common::v1::InvokeRequest,
    runtime::v1::{InvokeServiceRequest, dapr_client::DaprClient},
};
use dapr_app::{App, Callbacks, Invocation, Reply};
use devstack::{Jaeger, LogSink, Prometheus, ScrapeTarget, Stack, jaeger::Trace};
use tonic::Status;

/// Answers every invocation with the `traceparent` daprd handed it.
struct TraceparentEcho;

impl App for TraceparentEcho {
    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        let traceparent = call
            .metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Reply::bytes("text/plain", traceparent.into_bytes()))
    }
}

async fn start_echo_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(Callbacks::new(TraceparentEcho).into_routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

/// Invokes `greet` on the callee through the caller's sidecar; returns the traceparent the app
/// received.
async fn invoke(dapr: &mut DaprClient<tonic::transport::Channel>) -> String {
    let response = dapr
        .invoke_service(InvokeServiceRequest {
            id: "callee".into(),
            message: Some(InvokeRequest {
                method: "greet".into(),
                data: None,
                content_type: "text/plain".into(),
                http_extension: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8(response.data.map(|any| any.value).unwrap_or_default()).unwrap()
}

/// W3C `00-<trace id>-<parent span id>-<flags>` → (trace id, parent span id).
fn parse_traceparent(header: &str) -> (String, String) {
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {header:?}");
    assert_eq!(parts[3], "01", "the request is not sampled: {header:?}");
    (parts[1].to_string(), parts[2].to_string())
}

/// The trace with `trace_id`, once it holds spans of both sidecars and `app_parent`.
fn complete_trace(traces: &[Trace], trace_id: &str, app_parent: &str) -> Option<Trace> {
    traces
        .iter()
        .find(|t| {
            t.trace_id == trace_id
                && t.spans_of("caller").next().is_some()
                && t.spans_of("callee").next().is_some()
                && t.span(app_parent).is_some()
        })
        .cloned()
}

/// One root, on the caller; every callee span descends from a caller span; the span the app
/// was told to continue is the callee sidecar's.
fn assert_one_connected_trace(trace: &Trace, app_parent: &str) {
    let outline = trace.outline();
    assert!(
        trace.orphans().is_empty(),
        "spans without their parent:\n{outline}"
    );
    let roots = trace.roots();
    assert_eq!(roots.len(), 1, "one root span:\n{outline}");
    assert_eq!(trace.service_of(roots[0]), Some("caller"), "{outline}");
    // The callee's spans descend from the caller's: the context crossed between the sidecars.
    for span in trace.spans_of("callee") {
        let mut ancestor = trace.parent_of(span);
        while let Some(parent) = ancestor.filter(|p| trace.service_of(p) == Some("callee")) {
            ancestor = trace.parent_of(parent);
        }
        let ancestor = ancestor.unwrap_or_else(|| {
            panic!("{} has no caller ancestor:\n{outline}", span.operation_name)
        });
        assert_eq!(trace.service_of(ancestor), Some("caller"), "{outline}");
    }
    // The span the app was told to continue is the callee sidecar's.
    let parent = trace.span(app_parent).unwrap();
    assert_eq!(trace.service_of(parent), Some("callee"), "{outline}");
}

/// Both sidecars are scraped, and the invocation shows in daprd's own counters.
async fn assert_both_sidecars_counted(prometheus: &Prometheus) {
    prometheus
        .wait_for(r#"up{job="daprd"} == 1"#, Duration::from_secs(30), |up| {
            (up.len() == 2).then_some(())
        })
        .await
        .unwrap();
    let sent =
        r#"sum by (app_id) (dapr_runtime_service_invocation_req_sent_total{app_id="caller"})"#;
    let received =
        r#"sum by (app_id) (dapr_runtime_service_invocation_req_recv_total{app_id="callee"})"#;
    for query in [sent, received] {
        prometheus
            .wait_for(query, Duration::from_secs(30), |samples| {
                samples.iter().find(|s| s.value >= 1.0).map(|_| ())
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn daprd_spans_reach_jaeger_and_its_metrics_reach_prometheus() {
    let jaeger = Jaeger::start(LogSink::Capture).await.unwrap();
    let stack = Stack::builder()
        .otlp_endpoint(&jaeger.otlp_grpc_address())
        .start()
        .await
        .unwrap();
    let app_port = start_echo_app().await;
    let callee = stack
        .sidecar("callee")
        .unwrap()
        .app_port(app_port)
        .start()
        .await
        .unwrap();
    let caller = stack.sidecar("caller").unwrap().start().await.unwrap();
    let prometheus = Prometheus::start(
        &[
            ScrapeTarget::local("daprd", caller.metrics_port()).path("/"),
            ScrapeTarget::local("daprd", callee.metrics_port()).path("/"),
        ],
        LogSink::Capture,
    )
    .await
    .unwrap();

    let mut dapr = DaprClient::new(caller.channel().await.unwrap());
    let traceparent = invoke(&mut dapr).await;
    let (trace_id, app_parent) = parse_traceparent(&traceparent);

    let trace = jaeger
        .wait_for_traces("caller", Duration::from_secs(30), |traces| {
            complete_trace(traces, &trace_id, &app_parent)
        })
        .await
        .unwrap();
    assert_one_connected_trace(&trace, &app_parent);
    // Looked up by id, the trace is the same.
    let by_id = jaeger.trace(&trace_id).await.unwrap().unwrap();
    assert_eq!(by_id.spans.len(), trace.spans.len());
    assert!(
        jaeger
            .services()
            .await
            .unwrap()
            .contains(&"callee".to_string())
    );

    assert_both_sidecars_counted(&prometheus).await;
}

#[test]
fn missing_backends_name_the_install_command() {
    let error = devstack::ObservabilityBinaries::locate_in(std::path::Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("tools/observability/install.sh"), "{error}");
}
