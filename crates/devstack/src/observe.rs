//! `devstack up --observe` (part of the devstack binary, not of the library): Jaeger and
//! Prometheus beside the system, and the settings that point the apps at them.

use std::process::Command;

use devstack::{Error, Jaeger, LogSink, ManagedProcess, Prometheus, ScrapeTarget};

/// Jaeger (traces of both apps and both sidecars) and Prometheus (metrics of the same four).
pub struct Observers {
    pub jaeger: Jaeger,
    pub prometheus: Option<Prometheus>,
}

/// Where one app and its sidecar serve metrics.
pub struct MetricsPorts {
    pub app_id: &'static str,
    pub app: u16,
    pub sidecar: u16,
}

impl Observers {
    /// Starts Jaeger; Prometheus follows once the scraped ports exist ([`Observers::scrape`]).
    pub async fn start() -> Result<Self, Error> {
        let jaeger = Jaeger::start(LogSink::Echo).await?;
        Ok(Self {
            jaeger,
            prometheus: None,
        })
    }

    /// The OpenTelemetry settings of an app: spans over OTLP/gRPC to Jaeger, under its app id.
    pub fn export_to_jaeger(&self, command: &mut Command, app_id: &str) {
        command
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                self.jaeger.otlp_grpc_endpoint(),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", app_id);
    }

    /// Starts Prometheus scraping each app (`job` = its app id) and each sidecar (`job="daprd"`;
    /// daprd labels its own series with `app_id`).
    pub async fn scrape(&mut self, ports: &[MetricsPorts]) -> Result<(), Error> {
        let targets: Vec<ScrapeTarget> = ports
            .iter()
            .flat_map(|p| {
                [
                    ScrapeTarget::local(p.app_id, p.app),
                    ScrapeTarget::local("daprd", p.sidecar).path("/"),
                ]
            })
            .collect();
        self.prometheus = Some(Prometheus::start(&targets, LogSink::Echo).await?);
        Ok(())
    }

    /// Lines for the "ready" block. Neither build carries its web UI's assets (see
    /// tools/observability/install.sh), so the query APIs are printed beside the addresses.
    pub fn describe(&self, ports: &[MetricsPorts]) -> Vec<String> {
        let jaeger = self.jaeger.ui_url();
        let mut lines = vec![
            format!(
                "{:<21} {jaeger} (a placeholder page; the API answers)",
                "Jaeger UI"
            ),
            format!(
                "{:<21} {jaeger}api/traces?service=task-api&limit=20",
                "  traces (JSON)"
            ),
            format!(
                "{:<21} {} (OTEL_EXPORTER_OTLP_ENDPOINT of the apps)",
                "  OTLP/gRPC receiver",
                self.jaeger.otlp_grpc_endpoint()
            ),
        ];
        if let Some(prometheus) = &self.prometheus {
            let url = prometheus.url();
            lines.push(format!(
                "{:<21} {url} (no UI assets; the API answers)",
                "Prometheus UI"
            ));
            lines.push(format!(
                "{:<21} {url}api/v1/query?query=up",
                "  instant query"
            ));
        }
        for p in ports {
            lines.push(format!(
                "{:<21} {}: app http://127.0.0.1:{}/metrics (METRICS_PORT), sidecar http://127.0.0.1:{}/",
                "metrics", p.app_id, p.app, p.sidecar
            ));
        }
        lines
    }

    /// The processes to watch for an unexpected exit.
    pub fn processes(&mut self) -> Vec<&mut ManagedProcess> {
        let mut processes = vec![self.jaeger.process()];
        if let Some(prometheus) = self.prometheus.as_mut() {
            processes.push(prometheus.process());
        }
        processes
    }
}
