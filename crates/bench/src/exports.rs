//! `observe`'s backends and the proof that what the apps and sidecars exported reached them.
//!
//! An export that does not arrive costs nothing, and a benchmark of it would prove nothing: at
//! the end of each configuration that exports, Prometheus must have scraped every target and
//! counted every call the load made, and Jaeger must hold, for each request measured, a trace
//! with task-api's own span of it and spans of its sidecar; and no app may have dropped spans.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use devstack::{
    Jaeger, LogSink, Prometheus, ScrapeTarget,
    jaeger::{Span, Trace},
    prometheus::Sample,
};
use serde::Serialize;

use crate::{
    error::{BenchError, Result, Unseen, setup},
    load::Scenario,
    system::{App, System},
};

/// How long spans may take to reach Jaeger's query API: the apps' batch exporter sends every
/// 5 s (OTEL_BSP_SCHEDULE_DELAY's default, which the benchmark keeps), then Jaeger batches.
const SPANS_WITHIN: Duration = Duration::from_secs(30);
/// How long Prometheus may take to scrape: a few of its 1 s intervals.
const SCRAPED_WITHIN: Duration = Duration::from_secs(15);
/// Traces asked for per poll; any one that holds both services' spans will do.
const TRACES_PER_POLL: usize = 20;
/// What an app's span processor logs (at warn) the first time its queue is full and a span is
/// dropped.
const SPANS_DROPPED: &str = "dropped a Span";

/// What the backends were seen to receive at the end of a configuration's runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    /// `up` of each scraped target (`job instance`), as Prometheus last scraped it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub up: BTreeMap<String, f64>,
    /// GetTask and CreateTask calls task-api counted, as Prometheus scraped them, and the calls
    /// the load client saw answered (pool creation and warm-ups included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scraped_task_api_calls: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_api_calls_answered: Option<u64>,
    /// The services Jaeger holds spans of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jaeger_services: Option<Vec<String>>,
    /// Per request, a trace holding task-api's own span of it and its sidecar's spans.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub traces: BTreeMap<&'static str, TraceSeen>,
}

/// One trace found in Jaeger.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSeen {
    pub trace_id: String,
    /// Spans of the trace emitted by task-api itself (the Rust SDK) and by its daprd.
    pub task_api_spans: usize,
    pub sidecar_spans: usize,
}

/// The backends a configuration exports to, started with its system.
#[derive(Default)]
pub struct Backends {
    pub jaeger: Option<Jaeger>,
    pub prometheus: Option<Prometheus>,
}

impl Backends {
    /// Their processes, whose CPU is counted beside the apps': on this machine they share the
    /// cores with everything measured.
    pub fn pids(&mut self) -> Vec<u32> {
        let jaeger = self.jaeger.as_mut().map(|j| j.process().pid());
        let prometheus = self.prometheus.as_mut().map(|p| p.process().pid());
        jaeger.into_iter().chain(prometheus).collect()
    }

    /// The last `lines` log lines of each, for a failed run.
    pub fn log_tails(&mut self, lines: usize) -> String {
        let mut out = String::new();
        if let Some(jaeger) = &mut self.jaeger {
            let tail = jaeger.process().log_tail(lines);
            out.push_str(&format!("----- Jaeger -----\n{tail}\n"));
        }
        if let Some(prometheus) = &mut self.prometheus {
            let tail = prometheus.process().log_tail(lines);
            out.push_str(&format!("----- Prometheus -----\n{tail}\n"));
        }
        out
    }

    /// Starts Prometheus scraping each app (`job` = its name) and each sidecar (`job="daprd"`),
    /// as `scripts/run --observe` does.
    pub async fn scrape(&mut self, system: &System) -> Result<()> {
        let mut targets = Vec::new();
        for app in [&system.task_api, &system.notifications] {
            targets.push(ScrapeTarget::local(app.name, metrics_port(app)?));
            targets.push(ScrapeTarget::local("daprd", app.sidecar.metrics_port()).path("/"));
        }
        self.prometheus = Some(Prometheus::start(&targets, LogSink::Capture).await?);
        Ok(())
    }
}

fn metrics_port(app: &App) -> Result<u16> {
    app.metrics_port
        .ok_or_else(|| setup(format!("{} was started without METRICS_PORT", app.name)))
}

fn not_observed(what: impl Into<String>, source: impl Into<Unseen>) -> BenchError {
    BenchError::NotObserved {
        what: what.into(),
        source: source.into(),
    }
}

/// Fails unless Prometheus' last scrape of each of its `targets` succeeded (`up` is 1).
pub async fn scraping(
    prometheus: &Prometheus,
    targets: usize,
    observed: &mut Observed,
) -> Result<()> {
    observed.up = prometheus
        .wait_for("up", SCRAPED_WITHIN, |samples| all_up(samples, targets))
        .await
        .map_err(|e| {
            let what = format!("Prometheus did not scrape all {targets} targets");
            not_observed(what, e)
        })?;
    Ok(())
}

/// `up` by `job instance`, once there are `targets` of them and all are 1.
fn all_up(samples: &[Sample], targets: usize) -> Option<BTreeMap<String, f64>> {
    if samples.len() != targets || samples.iter().any(|s| s.value != 1.0) {
        return None;
    }
    let name = |s: &Sample| {
        let label = |name| s.label(name).unwrap_or("?");
        format!("{} {}", label("job"), label("instance"))
    };
    Some(samples.iter().map(|s| (name(s), s.value)).collect())
}

/// Fails unless task-api's request count, as Prometheus scraped it, reached the calls the load
/// saw answered: the metrics were recorded and served, not merely an endpoint answering.
pub async fn counted(
    prometheus: &Prometheus,
    requests: &[Scenario],
    served: u64,
    observed: &mut Observed,
) -> Result<()> {
    let methods: Vec<&str> = requests.iter().map(|r| r.name()).collect();
    let promql = format!(
        "sum(rpc_server_duration_seconds_count{{job=\"task-api\",rpc_method=~\"{}\"}})",
        methods.join("|")
    );
    let count = prometheus
        .wait_for(&promql, SCRAPED_WITHIN, |samples| {
            let count = samples.first()?.value;
            (count >= served as f64).then_some(count)
        })
        .await
        .map_err(|e| {
            let what = format!("Prometheus did not count the {served} calls task-api answered");
            not_observed(what, e)
        })?;
    observed.scraped_task_api_calls = Some(count);
    observed.task_api_calls_answered = Some(served);
    Ok(())
}

/// Fails unless Jaeger has spans of task-api and, for each of `requests`, a trace holding
/// task-api's own span of it and spans of its daprd.
pub async fn traced(jaeger: &Jaeger, requests: &[Scenario], observed: &mut Observed) -> Result<()> {
    let services = jaeger
        .services()
        .await
        .map_err(|e| not_observed("Jaeger's services could not be read", e))?;
    if !services.iter().any(|s| s == "task-api") {
        let seen = Unseen::Missing(format!("services with spans: {services:?}"));
        return Err(not_observed("Jaeger received no span of task-api", seen));
    }
    observed.jaeger_services = Some(services);
    for request in requests {
        let operation = format!("task.v1.TaskService/{}", request.name());
        let seen = app_trace(jaeger, &operation).await?;
        observed.traces.insert(request.name(), seen);
    }
    Ok(())
}

/// Fails if an app's span processor dropped spans because its queue was full: spans never sent
/// cost less than spans sent, and the figures would understate what tracing costs.
pub fn none_dropped(system: &System) -> Result<()> {
    for app in [&system.task_api, &system.notifications] {
        if let Some(line) = app.process.log_lines_with(SPANS_DROPPED).into_iter().next() {
            let what = format!("{} dropped spans (its export queue was full)", app.name);
            return Err(not_observed(what, Unseen::Missing(line)));
        }
    }
    Ok(())
}

/// A trace holding task-api's own span named `operation` and spans of its daprd, polled for
/// until [`SPANS_WITHIN`]. The sidecar exports under the same service name (its app id), so the
/// two are told apart by the SDK that emitted each span.
async fn app_trace(jaeger: &Jaeger, operation: &str) -> Result<TraceSeen> {
    let deadline = Instant::now() + SPANS_WITHIN;
    loop {
        let traces = jaeger
            .operation_traces("task-api", operation, TRACES_PER_POLL)
            .await
            .map_err(|e| not_observed("Jaeger's traces could not be read", e))?;
        let found = traces
            .iter()
            .map(|t| seen(t, operation))
            .find(|s| s.task_api_spans > 0 && s.sidecar_spans > 0);
        if let Some(found) = found {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let what = format!("Jaeger has no trace of {operation:?} from task-api and its daprd");
            let detail = format!(
                "after {SPANS_WITHIN:?}, {} traces, none with both; first: {}",
                traces.len(),
                traces.first().map_or_else(|| "-".into(), Trace::outline)
            );
            return Err(not_observed(what, Unseen::Missing(detail)));
        }
        // Poll interval; the deadline bounds the wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The spans of `trace` by who emitted them: task-api's own only when one of them is named
/// `operation`.
fn seen(trace: &Trace, operation: &str) -> TraceSeen {
    let by_app = |span: &&Span| language(trace, span) == Some("rust");
    let app: Vec<&Span> = trace.spans_of("task-api").filter(by_app).collect();
    let sidecar = trace.spans_of("task-api").filter(|s| !by_app(s)).count();
    let served = app.iter().any(|span| span.operation_name == operation);
    TraceSeen {
        trace_id: trace.trace_id.clone(),
        task_api_spans: if served { app.len() } else { 0 },
        sidecar_spans: sidecar,
    }
}

/// The `telemetry.sdk.language` of the process that emitted `span`.
fn language<'a>(trace: &'a Trace, span: &Span) -> Option<&'a str> {
    let process = trace.processes.get(&span.process_id)?;
    let tag = process
        .tags
        .iter()
        .find(|t| t.key == "telemetry.sdk.language")?;
    tag.value.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(job: &str, instance: &str, value: f64) -> Sample {
        let labels = [("job", job), ("instance", instance)];
        Sample {
            labels: labels.map(|(k, v)| (k.to_string(), v.to_string())).into(),
            value,
        }
    }

    #[test]
    fn every_target_must_be_up() {
        let a = up("task-api", "127.0.0.1:1", 1.0);
        let b = up("daprd", "127.0.0.1:2", 1.0);
        let down = up("daprd", "127.0.0.1:2", 0.0);
        let seen = all_up(&[a.clone(), b], 2).expect("both up");
        assert_eq!(seen.get("daprd 127.0.0.1:2"), Some(&1.0));
        assert_eq!(all_up(&[a.clone(), down], 2), None);
        assert_eq!(all_up(&[a], 2), None, "a target not scraped yet");
    }

    #[test]
    fn tells_the_app_from_its_sidecar_by_sdk() {
        let trace: Trace = serde_json::from_value(serde_json::json!({
            "traceID": "t1",
            "spans": [
                {"traceID": "t1", "spanID": "a", "operationName": "task.v1.TaskService/GetTask",
                 "startTime": 1, "duration": 1, "processID": "p1"},
                {"traceID": "t1", "spanID": "b", "operationName": "state get",
                 "startTime": 1, "duration": 1, "processID": "p1"},
                {"traceID": "t1", "spanID": "c", "operationName": "/dapr.proto.runtime.v1.Dapr/GetState",
                 "startTime": 1, "duration": 1, "processID": "p2"}
            ],
            "processes": {
                "p1": {"serviceName": "task-api",
                       "tags": [{"key": "telemetry.sdk.language", "value": "rust"}]},
                "p2": {"serviceName": "task-api",
                       "tags": [{"key": "telemetry.sdk.language", "value": "go"}]}
            }
        }))
        .expect("a trace");
        let get = seen(&trace, "task.v1.TaskService/GetTask");
        assert_eq!((get.task_api_spans, get.sidecar_spans), (2, 1));
        let create = seen(&trace, "task.v1.TaskService/CreateTask");
        assert_eq!((create.task_api_spans, create.sidecar_spans), (0, 1));
    }
}
