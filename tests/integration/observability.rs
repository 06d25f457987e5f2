//! The apps' traces and metrics in real backends: task-api and notification-service run as their
//! real binaries, exporting spans over OTLP to a Jaeger the test starts, beside sidecars that
//! export theirs to the same Jaeger; a Prometheus the test starts scrapes both apps and both
//! sidecars.
//!
//! A change sent through another app's sidecar (gRPC proxying) must come out of Jaeger's query
//! API as one trace, from that caller's sidecar down to notification-service, whose spans all
//! hang together; the metrics must follow a scripted load.

use std::time::Duration;

use devstack::{
    Jaeger, LogSink, Prometheus, ScrapeTarget, Sidecar, Stack,
    jaeger::{Span, Trace},
};
use task_api::proto::task::v1::{self as pb, task_service_client::TaskServiceClient};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::common::{BinaryApp, WithHeader};

/// The app id of the caller whose sidecar proxies the calls to task-api.
const CALLER: &str = "reporting";
/// How long spans may take to reach Jaeger: the exporters' batching and Jaeger's own.
const SPANS_ARRIVE_WITHIN: Duration = Duration::from_secs(60);

/// Jaeger, a stack whose sidecars export to it, both apps as binaries exporting to it, and a
/// caller's sidecar.
struct Rig {
    jaeger: Jaeger,
    stack: Stack,
    task_api: BinaryApp,
    notifications: BinaryApp,
    caller: Sidecar,
}

impl Rig {
    async fn start() -> Rig {
        let jaeger = Jaeger::start(LogSink::Capture).await.unwrap();
        let stack = Stack::builder()
            .otlp_endpoint(&jaeger.otlp_grpc_address())
            .start()
            .await
            .unwrap();
        let endpoint = jaeger.otlp_grpc_endpoint();
        // No OTEL_SERVICE_NAME: each app names itself by its app id.
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        let notifications = BinaryApp::start(&stack, "notification-service", &env).await;
        let task_api = BinaryApp::start(&stack, "task-api", &env).await;
        let caller = stack.sidecar(CALLER).unwrap().start().await.unwrap();
        Rig {
            jaeger,
            stack,
            task_api,
            notifications,
            caller,
        }
    }

    /// TaskService through the caller's sidecar (task-api's sidecar adds the app token).
    async fn proxied(&self) -> TaskServiceClient<InterceptedService<Channel, WithHeader>> {
        TaskServiceClient::with_interceptor(
            self.caller.channel().await.unwrap(),
            WithHeader("dapr-app-id", "task-api".into()),
        )
    }

    /// The trace holding the one call to `method` served by task-api, once `complete` says it
    /// has every span it should (fails with what was seen after [`SPANS_ARRIVE_WITHIN`]).
    async fn trace_of(&self, method: &str, complete: impl Fn(&Trace) -> bool) -> Trace {
        let name = format!("task.v1.TaskService/{method}");
        self.jaeger
            .wait_for_traces("task-api", SPANS_ARRIVE_WITHIN, |traces| {
                traces
                    .iter()
                    .find(|t| app_span(t, "task-api", &name).is_some() && complete(t))
                    .cloned()
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Whether `span` was emitted by one of the apps (the Rust SDK), not by a sidecar (Go).
fn by_an_app(trace: &Trace, span: &Span) -> bool {
    trace.processes.get(&span.process_id).is_some_and(|p| {
        p.tags
            .iter()
            .any(|t| t.key == "telemetry.sdk.language" && t.value == "rust")
    })
}

/// The span named `name` that app `service` emitted.
fn app_span<'a>(trace: &'a Trace, service: &'a str, name: &str) -> Option<&'a Span> {
    trace
        .spans_of(service)
        .find(|s| s.operation_name == name && by_an_app(trace, s))
}

/// Like [`app_span`], failing with the trace's outline.
fn expect_span<'a>(trace: &'a Trace, service: &'a str, name: &str) -> &'a Span {
    app_span(trace, service, name)
        .unwrap_or_else(|| panic!("no {name:?} of {service}:\n{}", trace.outline()))
}

/// Whether `span` descends from `ancestor`.
fn descends_from(trace: &Trace, span: &Span, ancestor: &Span) -> bool {
    let mut current = trace.parent_of(span);
    while let Some(parent) = current {
        if parent.span_id == ancestor.span_id {
            return true;
        }
        current = trace.parent_of(parent);
    }
    false
}

/// Asserts that `child`'s parent is `parent`.
fn assert_child(trace: &Trace, child: &Span, parent: &Span) {
    assert_eq!(
        trace.parent_of(child).map(|p| p.span_id.as_str()),
        Some(parent.span_id.as_str()),
        "{} should be a child of {}:\n{}",
        child.operation_name,
        parent.operation_name,
        trace.outline()
    );
}

/// The spans a completion's trace must hold before it is looked at.
fn completion_arrived(trace: &Trace) -> bool {
    trace.orphans().is_empty()
        && app_span(trace, "task-api", "handle notify").is_some()
        && app_span(trace, "task-api", "dapr.invoke notification-service/notify").is_some()
        && trace
            .spans_of("notification-service")
            .any(|s| by_an_app(trace, s))
        && trace.spans_of(CALLER).next().is_some()
}

/// The one root is the caller's sidecar span; task-api's sidecar span of the call descends from
/// it, and so does task-api's request span. daprd 1.18.3 proxies a gRPC call with the metadata
/// it came with, so the app is handed the caller's sidecar span as parent: task-api's sidecar
/// span and the request span are siblings.
fn assert_request_path(trace: &Trace, method: &str) -> Span {
    let outline = trace.outline();
    assert!(trace.orphans().is_empty(), "orphans:\n{outline}");
    let roots = trace.roots();
    assert_eq!(roots.len(), 1, "one root:\n{outline}");
    let root = roots[0];
    assert_eq!(trace.service_of(root), Some(CALLER), "{outline}");
    let path = format!("/task.v1.TaskService/{method}");
    let sidecar = trace
        .spans_of("task-api")
        .find(|s| s.operation_name == path && !by_an_app(trace, s))
        .unwrap_or_else(|| panic!("no sidecar span of task-api for {path}:\n{outline}"));
    assert!(descends_from(trace, sidecar, root), "{outline}");
    let request = expect_span(trace, "task-api", &format!("task.v1.TaskService/{method}"));
    let parent = trace
        .parent_of(request)
        .unwrap_or_else(|| panic!("the request span has no parent:\n{outline}"));
    assert!(!by_an_app(trace, parent), "a sidecar's span:\n{outline}");
    assert!(
        parent.span_id == root.span_id || descends_from(trace, parent, root),
        "{outline}"
    );
    request.clone()
}

/// A completion sent through the caller's sidecar is one trace: the caller's sidecar,
/// task-api's sidecar, task-api's request with its sidecar calls, the staged event, its
/// publish, the delivery to task-api, its verification, the notify invocation and
/// notification-service's request, each the child of the one before.
#[tokio::test]
async fn a_completion_is_one_trace_from_the_callers_sidecar_to_notification_service() {
    let rig = Rig::start().await;
    let mut client = rig.proxied().await;
    let task = client
        .create_task(pb::CreateTaskRequest {
            title: "Follow one change".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let created = rig
        .trace_of("CreateTask", |t| {
            t.orphans().is_empty() && app_span(t, "task-api", "handle noted").is_some()
        })
        .await;
    assert_staged_and_published(&created, "CreateTask", "task.created");
    client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: task.id.clone(),
            status: pb::TaskStatus::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let completed = rig.trace_of("UpdateTaskStatus", completion_arrived).await;
    let publish = assert_staged_and_published(&completed, "UpdateTaskStatus", "task.completed");
    assert_delivered_and_notified(&completed, &publish);
    println!("{}", completed.outline());
    screenshot(&rig.jaeger, &completed);
}

/// With `OBSERVABILITY_SCREENSHOT=<file.png>`, photographs the completion's trace with
/// scripts/screenshot-trace (the README's picture is made so).
fn screenshot(jaeger: &Jaeger, trace: &Trace) {
    let Some(out) = std::env::var_os("OBSERVABILITY_SCREENSHOT") else {
        return;
    };
    let status = std::process::Command::new(devstack::repo_root().join("scripts/screenshot-trace"))
        .arg(jaeger.ui_url())
        .arg("--trace")
        .arg(&trace.trace_id)
        .arg(devstack::repo_root().join(out))
        .status()
        .expect("scripts/screenshot-trace runs");
    assert!(status.success(), "scripts/screenshot-trace failed");
}

/// The request's path, its sidecar calls, its `stage` span, and the `publish` span continuing
/// it; returns the publish span.
fn assert_staged_and_published(trace: &Trace, method: &str, event_type: &str) -> Span {
    let request = assert_request_path(trace, method);
    let calls: Vec<&Span> = trace
        .spans_of("task-api")
        .filter(|s| s.operation_name.starts_with("dapr.state "))
        .filter(|s| trace.parent_of(s).map(|p| &p.span_id) == Some(&request.span_id))
        .collect();
    assert!(
        !calls.is_empty(),
        "the request's state calls:\n{}",
        trace.outline()
    );
    for call in &calls {
        // daprd's own span of the call is the child of task-api's client span.
        assert!(
            trace.spans.iter().any(|s| !by_an_app(trace, s)
                && trace.parent_of(s).map(|p| &p.span_id) == Some(&call.span_id)),
            "no sidecar span under {}:\n{}",
            call.operation_name,
            trace.outline()
        );
    }
    let stage = expect_span(trace, "task-api", &format!("stage {event_type}"));
    assert_child(trace, stage, &request);
    let publish = expect_span(trace, "task-api", &format!("publish {event_type}"));
    assert_child(trace, publish, stage);
    // Whoever published it, the writer right after its commit or the relay from the staged
    // copy, did so in a batch span under the stage span, with the publish call under that.
    let publishing = "dapr.pubsub PublishEvent pubsub/task-events";
    let batches: Vec<&Span> = trace
        .spans_of("task-api")
        .filter(|s| {
            matches!(s.operation_name.as_str(), "direct publish" | "relay")
                && trace.parent_of(s).map(|p| &p.span_id) == Some(&stage.span_id)
        })
        .collect();
    assert!(
        batches.iter().any(|batch| trace
            .spans_of("task-api")
            .any(|s| s.operation_name == publishing
                && trace.parent_of(s).map(|p| &p.span_id) == Some(&batch.span_id))),
        "no publish call under a direct publish or relay span under the stage span:\n{}",
        trace.outline()
    );
    publish.clone()
}

/// The delivery continues the publish; it is verified and notified, and notification-service's
/// request descends from the notify invocation.
fn assert_delivered_and_notified(trace: &Trace, publish: &Span) {
    let handle = expect_span(trace, "task-api", "handle notify");
    assert_child(trace, handle, publish);
    let verify = expect_span(trace, "task-api", "verify");
    assert_child(trace, verify, handle);
    let invoke = expect_span(trace, "task-api", "dapr.invoke notification-service/notify");
    assert_child(trace, invoke, handle);
    let received = expect_span(
        trace,
        "notification-service",
        "dapr.proto.runtime.v1.AppCallback/OnInvoke",
    );
    assert!(
        descends_from(trace, received, invoke),
        "notification-service's request under the invocation:\n{}",
        trace.outline()
    );
    let sidecars: Vec<&Span> = trace
        .spans_of("notification-service")
        .filter(|s| !by_an_app(trace, s))
        .collect();
    assert!(
        sidecars.iter().any(|s| descends_from(trace, s, invoke)),
        "notification-service's sidecar in between:\n{}",
        trace.outline()
    );
}

/// The value of a PromQL expression that sums to one sample; 0 while nothing matches.
async fn value(prometheus: &Prometheus, promql: &str) -> f64 {
    let samples = prometheus.query(promql).await.unwrap();
    samples.first().map_or(0.0, |s| s.value)
}

/// Waits until `promql` evaluates to `expected` (the scrapes lag the apps by a second or two).
async fn wait_for_value(prometheus: &Prometheus, promql: &str, expected: f64) {
    prometheus
        .wait_for(promql, Duration::from_secs(30), |samples| {
            let value = samples.first().map_or(0.0, |s| s.value);
            (value == expected).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Prometheus scraping both apps and both sidecars.
async fn scraping(rig: &Rig) -> Prometheus {
    let prometheus = Prometheus::start(
        &[
            ScrapeTarget::local("task-api", rig.task_api.metrics_port),
            ScrapeTarget::local("notification-service", rig.notifications.metrics_port),
            ScrapeTarget::local("daprd", rig.task_api.sidecar.metrics_port()).path("/"),
            ScrapeTarget::local("daprd", rig.notifications.sidecar.metrics_port()).path("/"),
        ],
        LogSink::Capture,
    )
    .await
    .unwrap();
    wait_for_value(&prometheus, "sum(up)", 4.0).await;
    prometheus
}

const CREATES: &str = r#"sum(rpc_server_duration_seconds_count{job="task-api",rpc_service="task.v1.TaskService",rpc_method="CreateTask",rpc_grpc_status_code="0"})"#;
const RETRIED: &str = r#"sum(task_api_notifications_total{job="task-api",outcome="retry"})"#;
const SENT: &str = r#"sum(task_api_notifications_total{job="task-api",outcome="sent"})"#;
const DELIVERED_LATENCY: &str =
    r#"sum(task_api_notification_latency_seconds_count{job="task-api"})"#;
/// The publish calls task-api's sidecar served (staging, relaying, readiness probes).
const SIDECAR_PUBLISHES: &str = r#"sum(dapr_grpc_io_server_completed_rpcs{job="daprd",app_id="task-api",grpc_server_method=~"/dapr.proto.runtime.v1.Dapr/(Bulk)?PublishEvent",grpc_server_status="OK"})"#;
/// The invocations from task-api notification-service's sidecar received.
const INVOKED: &str = r#"sum(dapr_runtime_service_invocation_req_recv_total{job="daprd",app_id="notification-service",src_app_id="task-api"})"#;
const RECEIVED: &str =
    r#"sum(notification_service_notifications_total{job="notification-service",outcome="new"})"#;

/// N creates raise task-api's request counter by N; with notification-service stopped, a
/// completion is retried and its latency is not recorded until notification-service is back.
#[tokio::test]
async fn prometheus_follows_the_requests_and_a_notification_outage() {
    let mut rig = Rig::start().await;
    let prometheus = scraping(&rig).await;
    let mut client = rig.proxied().await;
    let (before, published) = (
        value(&prometheus, CREATES).await,
        value(&prometheus, SIDECAR_PUBLISHES).await,
    );
    let mut ids = Vec::new();
    for n in 0..5 {
        let request = pb::CreateTaskRequest {
            title: format!("counted {n}"),
            ..Default::default()
        };
        ids.push(client.create_task(request).await.unwrap().into_inner().id);
    }
    wait_for_value(&prometheus, CREATES, before + 5.0).await;
    // task-api's sidecar counts the same work on its side: each create staged its event.
    prometheus
        .wait_for(SIDECAR_PUBLISHES, Duration::from_secs(30), |s| {
            s.first().filter(|s| s.value >= published + 5.0).map(|_| ())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    rig.notifications.kill();
    let (retried, latency) = (
        value(&prometheus, RETRIED).await,
        value(&prometheus, DELIVERED_LATENCY).await,
    );
    complete(&mut client, &ids[0]).await;
    prometheus
        .wait_for(RETRIED, Duration::from_secs(30), |s| {
            s.first().filter(|s| s.value > retried).map(|_| ())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Still down: nothing delivered, so no latency recorded, scrape after scrape.
    for _ in 0..3 {
        tokio::time::sleep(devstack::prometheus::SCRAPE_INTERVAL).await;
        assert_eq!(value(&prometheus, DELIVERED_LATENCY).await, latency);
        assert_eq!(value(&prometheus, SENT).await, 0.0);
    }
    rig.notifications.start_again(&rig.stack).await;
    wait_for_value(&prometheus, DELIVERED_LATENCY, latency + 1.0).await;
    wait_for_value(&prometheus, SENT, 1.0).await;
    wait_for_value(&prometheus, RECEIVED, 1.0).await;
    assert!(value(&prometheus, INVOKED).await >= 1.0);
}

async fn complete(
    client: &mut TaskServiceClient<InterceptedService<Channel, WithHeader>>,
    id: &str,
) {
    client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: id.to_string(),
            status: pb::TaskStatus::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}
