//! A private Jaeger v2 all-in-one: OTLP receivers (gRPC and HTTP), in-memory trace storage and
//! the query API, each on a free 127.0.0.1 port; and a small client for that query API
//! (`/api/services`, `/api/traces`).
//!
//! The binary comes from `tools/observability/install.sh`. Its web UI is a placeholder page (the
//! Go module carries no built UI assets); the query API is complete.

use std::{collections::HashMap, process::Command, time::Duration};

use serde::Deserialize;

use crate::{
    Error, LogSink, ManagedProcess, ObservabilityBinaries, free_port,
    observability::{QueryError, encode_query_value, get_json, listens},
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Jaeger owned by this handle.
pub struct Jaeger {
    process: ManagedProcess,
    ports: Ports,
    // Dropped after the process: it holds the configuration file.
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    otlp_grpc: u16,
    otlp_http: u16,
    query_http: u16,
    query_grpc: u16,
}

impl Jaeger {
    /// Starts Jaeger and waits until its receivers accept connections and its query API answers.
    pub async fn start(sink: LogSink) -> Result<Self, Error> {
        let binaries = ObservabilityBinaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("task-api-jaeger-")
            .tempdir()
            .map_err(Error::io("the Jaeger directory"))?;
        let ports = Ports {
            otlp_grpc: free_port()?,
            otlp_http: free_port()?,
            query_http: free_port()?,
            query_grpc: free_port()?,
        };
        let config = dir.path().join("jaeger.yaml");
        std::fs::write(&config, config_yaml(ports)).map_err(Error::io("the Jaeger config"))?;
        let mut command = Command::new(&binaries.jaeger);
        command.arg("--config").arg(&config).current_dir(dir.path());
        let mut process = ManagedProcess::spawn("jaeger", command, sink)?;
        let Ports {
            otlp_grpc,
            otlp_http,
            query_http,
            ..
        } = ports;
        process
            .wait_until(
                READY_TIMEOUT,
                "the OTLP receivers and /api/services did not answer",
                || async move {
                    let up = listens(otlp_grpc).await
                        && listens(otlp_http).await
                        && get_json::<ServicesResponse>(query_http, "/api/services")
                            .await
                            .is_ok();
                    up.then_some(())
                },
            )
            .await?;
        Ok(Self {
            process,
            ports,
            _dir: dir,
        })
    }

    /// `127.0.0.1:<port>` of the OTLP/gRPC receiver, as daprd's `otel.endpointAddress` wants it.
    pub fn otlp_grpc_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.otlp_grpc)
    }

    /// `http://127.0.0.1:<port>` of the OTLP/gRPC receiver, as `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// wants it (with the default protocol, grpc).
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_grpc)
    }

    /// `http://127.0.0.1:<port>` of the OTLP/HTTP receiver (`/v1/traces` below it).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_http)
    }

    /// The port of the HTTP query API (and of the UI address).
    pub fn query_port(&self) -> u16 {
        self.ports.query_http
    }

    /// Where a person looks: the UI address, which serves the query API below `/api`.
    pub fn ui_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.ports.query_http)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// The service names Jaeger has received spans from.
    pub async fn services(&self) -> Result<Vec<String>, QueryError> {
        let response: ServicesResponse = get_json(self.ports.query_http, "/api/services").await?;
        Ok(response.data.unwrap_or_default())
    }

    /// Up to `limit` traces of the last hour that hold a span of `service`, newest first.
    pub async fn traces(&self, service: &str, limit: usize) -> Result<Vec<Trace>, QueryError> {
        let path = format!(
            "/api/traces?service={}&limit={limit}&lookback=1h",
            encode_query_value(service)
        );
        let response: TracesResponse = get_json(self.ports.query_http, &path).await?;
        Ok(response.data.unwrap_or_default())
    }

    /// [`Jaeger::traces`] narrowed to those holding a span of `service` named `operation`: under
    /// load, the newest traces of a service can all be of one request type.
    pub async fn operation_traces(
        &self,
        service: &str,
        operation: &str,
        limit: usize,
    ) -> Result<Vec<Trace>, QueryError> {
        let path = format!(
            "/api/traces?service={}&operation={}&limit={limit}&lookback=1h",
            encode_query_value(service),
            encode_query_value(operation)
        );
        let response: TracesResponse = get_json(self.ports.query_http, &path).await?;
        Ok(response.data.unwrap_or_default())
    }

    /// One trace by id (hex), `None` when Jaeger has no span of it.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Trace>, QueryError> {
        let path = format!("/api/traces/{}", encode_query_value(trace_id));
        match get_json::<TracesResponse>(self.ports.query_http, &path).await {
            Ok(response) => Ok(response.data.unwrap_or_default().into_iter().next()),
            Err(QueryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Polls [`Jaeger::traces`] of `service` until `found` picks something out of them (spans
    /// reach the query API only after the exporters' batching), or fails after `timeout`.
    pub async fn wait_for_traces<T>(
        &self,
        service: &str,
        timeout: Duration,
        mut found: impl FnMut(&[Trace]) -> Option<T>,
    ) -> Result<T, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Vec::new();
        loop {
            match self.traces(service, 50).await {
                Ok(traces) => {
                    if let Some(value) = found(&traces) {
                        return Ok(value);
                    }
                    last = traces;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(WaitError::Query(e));
                }
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitError::NotFound {
                    service: service.to_string(),
                    waited: timeout,
                    seen: summarize(&last),
                });
            }
            // Poll interval; the deadline bounds the wait.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Why [`Jaeger::wait_for_traces`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("no matching trace of service {service} within {waited:?}; traces seen:\n{seen}")]
    NotFound {
        service: String,
        waited: Duration,
        seen: String,
    },
}

fn summarize(traces: &[Trace]) -> String {
    let lines: Vec<String> = traces.iter().map(Trace::outline).collect();
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join("\n")
    }
}

/// The configuration: OTLP in, in-memory storage, the query API; everything on 127.0.0.1, and
/// Jaeger's own telemetry off (its metrics endpoint would bind 0.0.0.0:8888).
fn config_yaml(ports: Ports) -> String {
    let Ports {
        otlp_grpc,
        otlp_http,
        query_http,
        query_grpc,
    } = ports;
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    # Its own spans would go to the default OTLP address, 127.0.0.1:4317.
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  # Short batches: the tests wait on spans arriving.
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
    )
}

#[derive(Debug, Deserialize)]
struct ServicesResponse {
    data: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct TracesResponse {
    data: Option<Vec<Trace>>,
}

/// A trace as Jaeger's HTTP query API returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    /// Keyed by [`Span::process_id`].
    #[serde(default)]
    pub processes: HashMap<String, TraceProcess>,
}

/// One span; times are microseconds (start since the Unix epoch).
#[derive(Debug, Clone, Deserialize)]
pub struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(rename = "operationName")]
    pub operation_name: String,
    #[serde(default)]
    pub references: Vec<SpanReference>,
    #[serde(rename = "startTime")]
    pub start_time: u64,
    pub duration: u64,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(rename = "processID")]
    pub process_id: String,
}

/// A link to another span: `CHILD_OF` (the parent) or `FOLLOWS_FROM` (a span link).
#[derive(Debug, Clone, Deserialize)]
pub struct SpanReference {
    #[serde(rename = "refType")]
    pub ref_type: String,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: serde_json::Value,
}

/// The emitter of spans: its service name and resource attributes.
#[derive(Debug, Clone, Deserialize)]
pub struct TraceProcess {
    #[serde(rename = "serviceName")]
    pub service_name: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl Span {
    /// The value of attribute `key`, if the span has it.
    pub fn tag(&self, key: &str) -> Option<&serde_json::Value> {
        self.tags.iter().find(|t| t.key == key).map(|t| &t.value)
    }

    /// The span id of the parent, from the `CHILD_OF` reference.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.references
            .iter()
            .find(|r| r.ref_type == "CHILD_OF" && r.trace_id == self.trace_id)
            .map(|r| r.span_id.as_str())
    }
}

impl Trace {
    /// The service that emitted `span`.
    pub fn service_of(&self, span: &Span) -> Option<&str> {
        self.processes
            .get(&span.process_id)
            .map(|p| p.service_name.as_str())
    }

    /// The spans `service` emitted.
    pub fn spans_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        self.spans
            .iter()
            .filter(move |s| self.service_of(s) == Some(service))
    }

    pub fn span(&self, span_id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// The parent of `span` within this trace.
    pub fn parent_of(&self, span: &Span) -> Option<&Span> {
        span.parent_span_id().and_then(|id| self.span(id))
    }

    /// Spans without a parent reference.
    pub fn roots(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent_span_id().is_none())
            .collect()
    }

    /// Spans whose parent is not in the trace (not exported, or not yet arrived).
    pub fn orphans(&self) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| s.parent_span_id().is_some() && self.parent_of(s).is_none())
            .collect()
    }

    /// One line per span, indented under its parent: for failure messages.
    pub fn outline(&self) -> String {
        let mut lines = vec![format!("trace {}", self.trace_id)];
        let mut stack: Vec<(&Span, usize)> = self.roots().into_iter().map(|s| (s, 1)).collect();
        stack.extend(self.orphans().into_iter().map(|s| (s, 1)));
        while let Some((span, depth)) = stack.pop() {
            lines.push(format!(
                "{}{} [{}] {}",
                "  ".repeat(depth),
                span.operation_name,
                self.service_of(span).unwrap_or("?"),
                span.span_id
            ));
            for child in self
                .spans
                .iter()
                .filter(|c| c.parent_span_id() == Some(&span.span_id))
            {
                stack.push((child, depth + 1));
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"data":[{"traceID":"t1","spans":[
        {"traceID":"t1","spanID":"a","operationName":"CallLocal/x","references":[],
         "startTime":1,"duration":5,"tags":[{"key":"rpc.system","type":"string","value":"grpc"}],
         "processID":"p1"},
        {"traceID":"t1","spanID":"b","operationName":"child","references":[
         {"refType":"CHILD_OF","traceID":"t1","spanID":"a"}],"startTime":2,"duration":1,
         "tags":[],"processID":"p2"},
        {"traceID":"t1","spanID":"c","operationName":"lost","references":[
         {"refType":"CHILD_OF","traceID":"t1","spanID":"zz"}],"startTime":2,"duration":1,
         "tags":[],"processID":"p2"}],
        "processes":{"p1":{"serviceName":"caller","tags":[]},"p2":{"serviceName":"callee","tags":[]}},
        "warnings":null}],"total":0,"limit":0,"offset":0,"errors":null}"#;

    #[test]
    fn reads_the_query_api_shape_and_links_parents() {
        let response: TracesResponse = serde_json::from_str(SAMPLE).unwrap();
        let trace = &response.data.unwrap()[0];
        let child = trace.span("b").unwrap();
        assert_eq!(trace.parent_of(child).unwrap().span_id, "a");
        assert_eq!(trace.service_of(child), Some("callee"));
        assert_eq!(trace.spans_of("caller").count(), 1);
        assert_eq!(trace.roots().len(), 1);
        let orphans: Vec<&str> = trace.orphans().iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(orphans, ["c"]);
        assert_eq!(
            trace.span("a").unwrap().tag("rpc.system"),
            Some(&serde_json::json!("grpc"))
        );
        assert!(trace.outline().contains("    child [callee] b"));
    }
}
