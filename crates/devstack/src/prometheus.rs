//! A private Prometheus: a generated configuration that scrapes given 127.0.0.1 targets every
//! second, a free port, storage in a temporary directory; and a small client for instant queries
//! (`/api/v1/query`). [`sum`] reads a process's own metrics text without a Prometheus.
//!
//! Targets come from a file that Prometheus watches (file-based service discovery), so they can
//! be set after it starts: the run command starts Prometheus before the processes it scrapes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    Error, LogSink, ManagedProcess, ObservabilityBinaries, free_port, http,
    observability::{QueryError, encode_query_value, get_json},
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often every target is scraped: short, so tests see a change within seconds.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// One endpoint to scrape at `http://<address>/metrics` (or another path), with the labels its
/// series get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    /// `127.0.0.1:<port>`, its series labelled `job="<job>"`.
    pub fn local(job: &str, port: u16) -> Self {
        Self {
            address: format!("127.0.0.1:{port}"),
            labels: BTreeMap::from([("job".to_string(), job.to_string())]),
        }
    }

    /// Scrapes `path` instead of `/metrics` (daprd serves its metrics at `/`).
    pub fn path(self, path: &str) -> Self {
        self.label("__metrics_path__", path)
    }

    /// Adds a label to every series of this target.
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.to_string(), value.to_string());
        self
    }
}

/// A running Prometheus owned by this handle.
pub struct Prometheus {
    process: ManagedProcess,
    port: u16,
    targets_file: PathBuf,
    // Dropped after the process: it holds the configuration and the TSDB.
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` and waits until `/-/ready` answers.
    pub async fn start(targets: &[ScrapeTarget], sink: LogSink) -> Result<Self, Error> {
        let binaries = ObservabilityBinaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("task-api-prometheus-")
            .tempdir()
            .map_err(Error::io("the Prometheus directory"))?;
        let port = free_port()?;
        let targets_file = dir.path().join("targets.json");
        write_targets(&targets_file, targets)?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(&targets_file))
            .map_err(Error::io("the Prometheus config"))?;
        let mut command = Command::new(&binaries.prometheus);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .arg("--log.level=warn")
            .current_dir(dir.path());
        let mut process = ManagedProcess::spawn("prometheus", command, sink)?;
        process
            .wait_until(READY_TIMEOUT, "/-/ready did not answer 200", || {
                http::answers(port, "/-/ready", 200)
            })
            .await?;
        Ok(Self {
            process,
            port,
            targets_file,
            _dir: dir,
        })
    }

    /// Replaces the scraped targets; Prometheus picks the change up within a second or two.
    pub fn set_targets(&self, targets: &[ScrapeTarget]) -> Result<(), Error> {
        write_targets(&self.targets_file, targets)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where a person looks (the API is below `/api/v1`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// Evaluates `promql` now: the instant vector (or scalar, as one unlabelled sample).
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, QueryError> {
        let path = format!("/api/v1/query?query={}", encode_query_value(promql));
        let response: QueryResponse = get_json(self.port, &path).await?;
        if response.status != "success" {
            return Err(QueryError::Api {
                url: format!("http://127.0.0.1:{}{path}", self.port),
                message: response.error.unwrap_or(response.status),
            });
        }
        Ok(response.data.map(QueryData::samples).unwrap_or_default())
    }

    /// Polls `promql` until `found` picks something out of its result, or fails after
    /// `timeout` with the last result.
    pub async fn wait_for<T>(
        &self,
        promql: &str,
        timeout: Duration,
        mut found: impl FnMut(&[Sample]) -> Option<T>,
    ) -> Result<T, QueryWaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let samples = self.query(promql).await?;
            if let Some(value) = found(&samples) {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QueryWaitError::NotFound {
                    query: promql.to_string(),
                    waited: timeout,
                    last: samples,
                });
            }
            // Poll at the scrape interval; the deadline bounds the wait.
            tokio::time::sleep(SCRAPE_INTERVAL).await;
        }
    }
}

/// Why [`Prometheus::wait_for`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum QueryWaitError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{query} gave no matching result within {waited:?}; last result: {last:?}")]
    NotFound {
        query: String,
        waited: Duration,
        last: Vec<Sample>,
    },
}

/// One series of an instant-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

fn config_yaml(targets_file: &Path) -> String {
    let interval = SCRAPE_INTERVAL.as_secs();
    format!(
        "global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
  evaluation_interval: {interval}s
scrape_configs:
  - job_name: devstack
    # Each target's own job label replaces this one.
    metrics_path: /metrics
    # An endpoint that sends no or an unusual Content-Type is still read as text.
    fallback_scrape_protocol: PrometheusText0.0.4
    file_sd_configs:
      - files: [{path}]
        refresh_interval: {interval}s
",
        path = serde_json::Value::String(targets_file.display().to_string())
    )
}

/// Writes the file-discovery JSON by rename, so Prometheus never reads half a file.
fn write_targets(file: &Path, targets: &[ScrapeTarget]) -> Result<(), Error> {
    let groups: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| serde_json::json!({ "targets": [t.address], "labels": t.labels }))
        .collect();
    let partial = file.with_extension("json.new");
    std::fs::write(&partial, serde_json::Value::Array(groups).to_string())
        .map_err(Error::io("the Prometheus targets file"))?;
    std::fs::rename(&partial, file).map_err(Error::io("the Prometheus targets file"))
}

#[derive(Debug, Deserialize)]
struct QueryResponse {
    status: String,
    data: Option<QueryData>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorEntry>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorEntry {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl QueryData {
    fn samples(self) -> Vec<Sample> {
        match self {
            QueryData::Vector(entries) => entries
                .into_iter()
                .map(|e| Sample {
                    labels: e.metric,
                    value: parse_value(&e.value.1),
                })
                .collect(),
            QueryData::Scalar((_, value)) => vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&value),
            }],
            // Range vectors and strings are not what an instant query of this client asks for.
            QueryData::Matrix(_) | QueryData::String(_) => Vec::new(),
        }
    }
}

/// The sum of the samples of `name` in `text` (the Prometheus text format a process serves)
/// whose labels include every one of `labels`; 0 when none match.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(label, value)| line.contains(&format!("{label}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prometheus sends sample values as strings, including "NaN", "+Inf" and "-Inf".
fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_whose_labels_match() {
        let text = "# HELP calls_total Calls.\n\
                    calls_total{method=\"a\",code=\"0\"} 2\n\
                    calls_total{method=\"b\",code=\"0\"} 3\n\
                    calls_total_created 9\n\
                    up 1\n";
        assert_eq!(sum(text, "calls_total", &[]), 5.0);
        assert_eq!(sum(text, "calls_total", &[("method", "b")]), 3.0);
        assert_eq!(sum(text, "up", &[]), 1.0);
        assert_eq!(sum(text, "missing", &[]), 0.0);
    }

    #[test]
    fn reads_vector_and_scalar_results() {
        let vector: QueryResponse = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"__name__":"up","job":"daprd"},"value":[1700000000.5,"1"]},
                {"metric":{"job":"x"},"value":[1700000000.5,"+Inf"]}]}}"#,
        )
        .unwrap();
        let samples = vector.data.unwrap().samples();
        assert_eq!(samples[0].label("job"), Some("daprd"));
        assert_eq!(samples[0].value, 1.0);
        assert!(samples[1].value.is_infinite());

        let scalar: QueryResponse = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2.5"]}}"#,
        )
        .unwrap();
        assert_eq!(scalar.data.unwrap().samples()[0].value, 2.5);
    }

    #[test]
    fn targets_file_carries_each_targets_labels() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("targets.json");
        let targets = [ScrapeTarget::local("daprd", 9090).label("app_id", "task-api")];
        write_targets(&file, &targets).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            written,
            serde_json::json!([{"targets": ["127.0.0.1:9090"],
                                "labels": {"job": "daprd", "app_id": "task-api"}}])
        );
    }
}
