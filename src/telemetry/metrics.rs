//! What an operator watches, in Prometheus' text format on `METRICS_PORT` (`/metrics`).
//!
//! Names follow Prometheus' conventions and OpenTelemetry's semantic conventions for RPC; no
//! label takes unbounded values (no task ids). Recording is a few atomic operations, whether or
//! not anything scrapes; the endpoint is served only when `METRICS_PORT` is set.
//!
//! | Metric | What |
//! |---|---|
//! | `rpc_server_duration_seconds{rpc_system,rpc_service,rpc_method,rpc_grpc_status_code}` | every call served (its `_count` is the request count) |
//! | `task_api_sidecar_call_duration_seconds{building_block,operation,outcome}` | every call to the sidecar |
//! | `task_api_outbox_pending_events`, `task_api_outbox_oldest_pending_age_seconds` | changes this process committed whose event it has not seen published |
//! | `task_api_relay_lag_seconds` | change staged → its event published |
//! | `task_api_events_published_total{event_type}` | events published to `task-events` |
//! | `task_api_events_handled_total{route,outcome}` | deliveries handled, by subscription |
//! | `task_api_notification_latency_seconds{kind}` | change → notification delivered |
//! | `task_api_notifications_total{kind,outcome}` | notifications sent, retried, refused |
//! | `task_api_dead_letters_total`, `task_api_dead_letters_kept` | dead letters recorded, and kept |
//! | `task_api_etag_conflicts_total{operation}` | writes that lost an ETag race (and were tried again) |
//! | `task_api_list_page_reads` | store calls one ListTasks page took |
//! | `task_api_jobs_scheduled_total`, `task_api_jobs_fired_total{outcome}` | alarm jobs |
//! | `task_api_ready` | 1 while ready |
//! | `rpc_server_calls_waiting` | callers' calls waiting for their turn ([`crate::admission`]) |
//! | `notification_service_notifications_total{outcome}` | notifications kept (new) or recognised (duplicate) |

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Latency buckets in seconds, from a fast sidecar call to a slow notification.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Store calls per page.
const READ_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];

/// Every metric of the process, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) rpc_duration: HistogramVec,
    pub(crate) sidecar_call: HistogramVec,
    pub(crate) outbox_pending: IntGauge,
    pub(crate) outbox_oldest_age: Gauge,
    pub(crate) relay_lag: Histogram,
    pub(crate) events_published: IntCounterVec,
    pub(crate) events_handled: IntCounterVec,
    pub(crate) notification_latency: HistogramVec,
    pub(crate) notifications: IntCounterVec,
    pub(crate) dead_letters: IntCounter,
    pub(crate) dead_letters_kept: IntGauge,
    pub(crate) etag_conflicts: IntCounterVec,
    pub(crate) list_page_reads: Histogram,
    pub(crate) jobs_scheduled: IntCounter,
    pub(crate) jobs_fired: IntCounterVec,
    pub(crate) ready: IntGauge,
    pub(crate) calls_waiting: IntGauge,
    pub(crate) notifications_received: IntCounterVec,
    /// Refreshes the gauges that are read from state, not counted as things happen.
    refresh: Mutex<Vec<Refresh>>,
}

/// Sets gauges from state just before a scrape.
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The process's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

/// A metric's name, help text and labels (none for a single series).
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const RPC_DURATION: Def = Def {
    name: "rpc_server_duration_seconds",
    help: "Duration of the RPCs served",
    labels: &[
        "rpc_system",
        "rpc_service",
        "rpc_method",
        "rpc_grpc_status_code",
    ],
};

const SIDECAR_CALL: Def = Def {
    name: "task_api_sidecar_call_duration_seconds",
    help: "Duration of the calls made to the Dapr sidecar",
    labels: &["building_block", "operation", "outcome"],
};

const OUTBOX_PENDING: Def = Def {
    name: "task_api_outbox_pending_events",
    help: "Changes this process committed whose event it has not seen published",
    labels: &[],
};

const OUTBOX_OLDEST_AGE: Def = Def {
    name: "task_api_outbox_oldest_pending_age_seconds",
    help: "Age of the oldest of those changes",
    labels: &[],
};

const RELAY_LAG: Def = Def {
    name: "task_api_relay_lag_seconds",
    help: "From a change staged to its event published",
    labels: &[],
};

const CALLS_WAITING: Def = Def {
    name: "rpc_server_calls_waiting",
    help: "Callers' calls waiting for their turn (MAX_CONCURRENT_CALLS are worked on at once)",
    labels: &[],
};

const EVENTS_PUBLISHED: Def = Def {
    name: "task_api_events_published_total",
    help: "Events published to task-events",
    labels: &["event_type"],
};

const EVENTS_HANDLED: Def = Def {
    name: "task_api_events_handled_total",
    help: "Deliveries handled, by subscription route and outcome",
    labels: &["route", "outcome"],
};

const NOTIFICATION_LATENCY: Def = Def {
    name: "task_api_notification_latency_seconds",
    help: "From a change to its notification delivered",
    labels: &["kind"],
};

const NOTIFICATIONS: Def = Def {
    name: "task_api_notifications_total",
    help: "Notifications sent to notification-service, by outcome",
    labels: &["kind", "outcome"],
};

const DEAD_LETTERS: Def = Def {
    name: "task_api_dead_letters_total",
    help: "Events recorded as dead letters",
    labels: &[],
};

const DEAD_LETTERS_KEPT: Def = Def {
    name: "task_api_dead_letters_kept",
    help: "Dead letters kept, as last counted",
    labels: &[],
};

const ETAG_CONFLICTS: Def = Def {
    name: "task_api_etag_conflicts_total",
    help: "Writes that lost an ETag race",
    labels: &["operation"],
};

const LIST_PAGE_READS: Def = Def {
    name: "task_api_list_page_reads",
    help: "Store calls one ListTasks page took",
    labels: &[],
};

const JOBS_SCHEDULED: Def = Def {
    name: "task_api_jobs_scheduled_total",
    help: "Alarm jobs scheduled",
    labels: &[],
};

const JOBS_FIRED: Def = Def {
    name: "task_api_jobs_fired_total",
    help: "Alarm jobs delivered, by outcome",
    labels: &["outcome"],
};

const READY: Def = Def {
    name: "task_api_ready",
    help: "1 while the app is ready",
    labels: &[],
};

const NOTIFICATIONS_RECEIVED: Def = Def {
    name: "notification_service_notifications_total",
    help: "Notifications received, new or recognised as a repeat",
    labels: &["outcome"],
};

fn histogram(def: &Def, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(def.name, def.help).buckets(buckets.to_vec()),
        def.labels,
    )
    .expect("a valid histogram definition")
}

fn plain_histogram(def: &Def, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(def.name, def.help).buckets(buckets.to_vec()))
        .expect("a valid histogram definition")
}

fn counter(def: &Def) -> IntCounterVec {
    IntCounterVec::new(Opts::new(def.name, def.help), def.labels)
        .expect("a valid counter definition")
}

fn int_counter(def: &Def) -> IntCounter {
    IntCounter::new(def.name, def.help).expect("a valid counter definition")
}

fn int_gauge(def: &Def) -> IntGauge {
    IntGauge::new(def.name, def.help).expect("a valid gauge definition")
}

fn gauge(def: &Def) -> Gauge {
    Gauge::new(def.name, def.help).expect("a valid gauge definition")
}

impl Metrics {
    fn register() -> Self {
        let metrics = Self {
            registry: Registry::new(),
            rpc_duration: histogram(&RPC_DURATION, LATENCY_BUCKETS),
            sidecar_call: histogram(&SIDECAR_CALL, LATENCY_BUCKETS),
            outbox_pending: int_gauge(&OUTBOX_PENDING),
            outbox_oldest_age: gauge(&OUTBOX_OLDEST_AGE),
            relay_lag: plain_histogram(&RELAY_LAG, LATENCY_BUCKETS),
            events_published: counter(&EVENTS_PUBLISHED),
            events_handled: counter(&EVENTS_HANDLED),
            notification_latency: histogram(&NOTIFICATION_LATENCY, LATENCY_BUCKETS),
            notifications: counter(&NOTIFICATIONS),
            dead_letters: int_counter(&DEAD_LETTERS),
            dead_letters_kept: int_gauge(&DEAD_LETTERS_KEPT),
            etag_conflicts: counter(&ETAG_CONFLICTS),
            list_page_reads: plain_histogram(&LIST_PAGE_READS, READ_BUCKETS),
            jobs_scheduled: int_counter(&JOBS_SCHEDULED),
            jobs_fired: counter(&JOBS_FIRED),
            ready: int_gauge(&READY),
            calls_waiting: int_gauge(&CALLS_WAITING),
            notifications_received: counter(&NOTIFICATIONS_RECEIVED),
            refresh: Mutex::new(Vec::new()),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.rpc_duration.clone()),
            Box::new(self.sidecar_call.clone()),
            Box::new(self.outbox_pending.clone()),
            Box::new(self.outbox_oldest_age.clone()),
            Box::new(self.relay_lag.clone()),
            Box::new(self.events_published.clone()),
            Box::new(self.events_handled.clone()),
            Box::new(self.notification_latency.clone()),
            Box::new(self.notifications.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.dead_letters_kept.clone()),
            Box::new(self.etag_conflicts.clone()),
            Box::new(self.list_page_reads.clone()),
            Box::new(self.jobs_scheduled.clone()),
            Box::new(self.jobs_fired.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.calls_waiting.clone()),
            Box::new(self.notifications_received.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("each metric is registered once");
        }
    }

    /// Runs `refresh` before every scrape, to set gauges from state.
    pub(crate) fn on_scrape(&self, refresh: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(refresh));
    }

    /// Everything, in Prometheus' text format.
    pub(crate) fn render(&self) -> Vec<u8> {
        for refresh in self
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            refresh(self);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Times a sidecar call of `building_block`/`operation`.
    pub(crate) fn sidecar_timer(
        &self,
        building_block: &'static str,
        operation: &'static str,
    ) -> SidecarTimer {
        SidecarTimer {
            building_block,
            operation,
            started: Instant::now(),
        }
    }
}

/// A sidecar call being timed; [`SidecarTimer::finish`] records it.
pub(crate) struct SidecarTimer {
    building_block: &'static str,
    operation: &'static str,
    started: Instant,
}

impl SidecarTimer {
    pub(crate) fn finish(self, ok: bool) {
        METRICS
            .sidecar_call
            .with_label_values(&[
                self.building_block,
                self.operation,
                if ok { "ok" } else { "error" },
            ])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Seconds since `at`, never negative.
pub(crate) fn seconds_since(at: chrono::DateTime<chrono::Utc>) -> f64 {
    (crate::domain::time::now() - at)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Serves `/metrics` on `listener` until `stop` completes.
pub(crate) async fn serve(listener: TcpListener, stop: impl Future<Output = ()>) {
    let accepting = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(answer(request.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accepting => {}
        () = stop => {}
    }
}

fn answer(path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            METRICS.render(),
        ),
        _ => (404, "text/plain; charset=utf-8", b"see /metrics\n".to_vec()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Binds the metrics endpoint.
pub(crate) async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_name() {
        METRICS
            .rpc_duration
            .with_label_values(&["grpc", "task.v1.TaskService", "GetTask", "0"])
            .observe(0.002);
        METRICS.relay_lag.observe(0.01);
        METRICS.sidecar_timer("state", "get").finish(true);
        let text = String::from_utf8(METRICS.render()).unwrap();
        for name in [
            "rpc_server_duration_seconds_bucket",
            "task_api_sidecar_call_duration_seconds_count",
            "task_api_relay_lag_seconds_sum",
            "task_api_ready",
            "task_api_outbox_pending_events",
            "rpc_server_calls_waiting",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains(r#"rpc_method="GetTask""#));
    }
}
