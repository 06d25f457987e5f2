//! The system under test: the state store and broker, notification-service and task-api, each
//! app with its daprd.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use devstack::{AppProcess, ComponentSet, LogSink, ManagedProcess, Sidecar, Stack, free_port};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    backlog::EventBroker,
    error::{BenchError, Result, failed, setup},
    ops::{self, TaskClient},
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the apps and their sidecars export beyond what every mode runs them with: by default
/// nothing (no METRICS_PORT, no OTEL_* variables, daprd exporting no spans).
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// Each app serves Prometheus metrics on a free port, passed to it as METRICS_PORT.
    pub metrics: bool,
    /// Spans of both apps and both sidecars go to this OTLP/gRPC receiver.
    pub otlp: Option<Otlp>,
    /// The share of requests the sidecars trace, instead of every one.
    pub sampling_rate: Option<f64>,
}

/// One OTLP/gRPC receiver, in the two spellings its users want.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// `http://host:port`, the apps' OTEL_EXPORTER_OTLP_ENDPOINT.
    pub endpoint: String,
    /// `host:port`, daprd's `otel.endpointAddress`.
    pub address: String,
}

/// One app and its sidecar.
pub struct App {
    pub name: &'static str,
    pub port: u16,
    /// Where the app serves `/metrics`, when it was given METRICS_PORT.
    pub metrics_port: Option<u16>,
    pub process: ManagedProcess,
    pub sidecar: Sidecar,
}

impl App {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn sidecar_pid(&mut self) -> u32 {
        self.sidecar.process().pid()
    }

    /// Fails, with the end of its log, if the app or its sidecar has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let name = self.name;
        if let Some(status) = self.process.exit_status() {
            return Err(setup(format!(
                "{name} exited ({status}). Its last log lines:\n{}",
                self.process.log_tail(40)
            )));
        }
        let sidecar = self.sidecar.process();
        if let Some(status) = sidecar.exit_status() {
            return Err(setup(format!(
                "{name}'s daprd exited ({status}). Its last log lines:\n{}",
                sidecar.log_tail(40)
            )));
        }
        Ok(())
    }

    /// The app first, so it finishes its requests while its sidecar still answers.
    pub fn stop(&mut self) {
        self.process.stop(STOP_GRACE);
        self.sidecar.stop(STOP_GRACE);
    }
}

/// Everything started. Fields drop in order: the apps before the stack they run on.
pub struct System {
    pub task_api: App,
    pub notifications: App,
    pub stack: Stack,
}

impl System {
    /// `connections` TaskService clients of task-api presenting its API key, each on a
    /// connection of its own.
    pub async fn task_clients(&self, connections: usize) -> Result<Vec<TaskClient>> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let channel = channel(self.task_api.port, "task-api").await?;
            clients.push(ops::task_client(channel, self.stack.api_key())?);
        }
        Ok(clients)
    }

    /// Starts the servers of `components`, then notification-service (task-api invokes it),
    /// then task-api, both from `binaries` (the ones built next to the benchmark when `None`).
    pub async fn start(components: ComponentSet, binaries: Option<&Path>) -> Result<Self> {
        Self::start_with(components, binaries, &Telemetry::default()).await
    }

    /// [`System::start`] with the apps and sidecars exporting what `telemetry` says.
    pub async fn start_with(
        components: ComponentSet,
        binaries: Option<&Path>,
        telemetry: &Telemetry,
    ) -> Result<Self> {
        let binaries = match binaries {
            Some(dir) => dir.to_path_buf(),
            None => app_binaries()?,
        };
        let mut builder = Stack::builder()
            .components(components)
            .scheduler(false)
            .log_sink(LogSink::Capture);
        if let Some(otlp) = &telemetry.otlp {
            builder = builder.otlp_endpoint(&otlp.address);
        }
        if let Some(rate) = telemetry.sampling_rate {
            builder = builder.sampling_rate(rate);
        }
        let stack = builder.start().await?;
        let binary = |name: &str| binaries.join(name);
        let notifications = start_app(
            &stack,
            "notification-service",
            &binary("notification-service"),
            telemetry,
        )
        .await?;
        let task_api = start_app(&stack, "task-api", &binary("task-api"), telemetry).await?;
        Ok(Self {
            task_api,
            notifications,
            stack,
        })
    }

    /// Starts the simple app (this benchmark's own binary, serving it) with a sidecar of its
    /// own, on this system's servers.
    pub async fn start_simple_app(&self) -> Result<App> {
        let exe =
            std::env::current_exe().map_err(failed("cannot tell where the benchmark runs from"))?;
        let mut command = Command::new(exe);
        command.arg(crate::args::SERVE_SIMPLE_APP);
        start_app_with(
            &self.stack,
            crate::simple_app::server::APP_ID,
            command,
            &Telemetry::default(),
        )
        .await
    }

    /// The broker task-api's events wait on, which says when every event has been handled.
    pub fn event_broker(&self) -> Result<EventBroker> {
        if let Some(kafka) = self.stack.kafka() {
            return Ok(EventBroker::Kafka(kafka.address()));
        }
        self.stack
            .broker()
            .or(self.stack.redis())
            .map(|redis| EventBroker::Redis(redis.address()))
            .ok_or_else(|| setup("the stack runs without a broker"))
    }

    /// The last `lines` log lines of every app and sidecar, for a failed run.
    pub fn log_tails(&mut self, lines: usize) -> String {
        let mut out = String::new();
        for app in [&mut self.task_api, &mut self.notifications] {
            let name = app.name;
            out.push_str(&format!(
                "----- {name} -----\n{}\n----- {name}'s daprd -----\n{}\n",
                app.process.log_tail(lines),
                app.sidecar.process().log_tail(lines)
            ));
        }
        out
    }

    /// Every process of the system: both apps, their sidecars and the servers (the state
    /// store's, the broker's, the scheduler).
    pub fn pids(&mut self) -> Vec<u32> {
        let mut pids = vec![
            self.task_api.pid(),
            self.task_api.sidecar_pid(),
            self.notifications.pid(),
            self.notifications.sidecar_pid(),
        ];
        let stack = &mut self.stack;
        let servers = [
            stack.redis_mut().and_then(|r| r.process()).map(|p| p.pid()),
            stack
                .broker_mut()
                .and_then(|r| r.process())
                .map(|p| p.pid()),
            stack
                .postgres_mut()
                .and_then(|p| p.process())
                .map(|p| p.pid()),
            stack.kafka_mut().and_then(|k| k.process()).map(|p| p.pid()),
            stack.scheduler_mut().map(|s| s.process().pid()),
        ];
        pids.extend(servers.into_iter().flatten());
        pids
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.task_api.check_running()?;
        self.notifications.check_running()
    }

    /// SIGTERM to each app, then its sidecar: task-api first, as it calls the other.
    pub fn stop(&mut self) {
        self.task_api.stop();
        self.notifications.stop();
    }
}

/// The app binaries are built next to this one (`cargo build --release -p task-api -p bench`).
fn app_binaries() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(failed("cannot tell where the benchmark runs from"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| setup("cannot tell where the benchmark runs from"))?;
    for binary in ["task-api", "notification-service"] {
        if !dir.join(binary).is_file() {
            return Err(setup(format!(
                "{binary} is not built next to the benchmark in {}; run scripts/bench, which builds it",
                dir.display()
            )));
        }
    }
    Ok(dir.to_path_buf())
}

/// Starts an app as users run it: its sidecar's gRPC port is known before either starts, the
/// app comes first, daprd waits for its port, and the app is ready once its health says so.
async fn start_app(
    stack: &Stack,
    name: &'static str,
    binary: &Path,
    telemetry: &Telemetry,
) -> Result<App> {
    start_app_with(stack, name, Command::new(binary), telemetry).await
}

/// [`start_app`] of `command` (its program and arguments).
async fn start_app_with(
    stack: &Stack,
    name: &'static str,
    mut command: Command,
    telemetry: &Telemetry,
) -> Result<App> {
    let port = free_port()?;
    let sidecar = stack.sidecar(name)?.app_port(port).log_level("warn");
    // A clean environment, so settings of the calling shell (AUTH_DISABLED, ...) cannot change
    // what is measured. Logging at warn: under load, info lines would cost more than the work.
    command
        .env_clear()
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_port().to_string())
        .env("APP_API_TOKEN", stack.app_token())
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "text");
    // Runtime tuning knobs pass through, so their effect can be measured.
    for knob in ["TOKIO_WORKER_THREADS", "MALLOC_ARENA_MAX"] {
        if let Some(value) = std::env::var_os(knob) {
            command.env(knob, value);
        }
    }
    let metrics_port = export(&mut command, name, telemetry)?;
    let mut process = stack.spawn_app(AppProcess {
        name: name.to_string(),
        command,
    })?;
    let sidecar = match sidecar.start().await {
        Ok(sidecar) => sidecar,
        Err(e) => {
            return Err(setup(format!(
                "{e}\n{name}'s last log lines:\n{}",
                process.log_tail(40)
            )));
        }
    };
    wait_serving(name, port, &mut process).await?;
    Ok(App {
        name,
        port,
        metrics_port,
        process,
        sidecar,
    })
}

/// The telemetry settings of an app, as `scripts/run --observe` passes them; the metrics port
/// chosen, if any.
fn export(command: &mut Command, name: &str, telemetry: &Telemetry) -> Result<Option<u16>> {
    let metrics_port = if telemetry.metrics {
        let port = free_port()?;
        command.env("METRICS_PORT", port.to_string());
        Some(port)
    } else {
        None
    };
    if let Some(otlp) = &telemetry.otlp {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", name);
        // Calls that arrive without a sampling decision (the load client calls task-api
        // directly) are sampled at the sidecars' rate.
        if let Some(rate) = telemetry.sampling_rate {
            command
                .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
                .env("OTEL_TRACES_SAMPLER_ARG", rate.to_string());
        }
    }
    Ok(metrics_port)
}

async fn wait_serving(name: &str, port: u16, process: &mut ManagedProcess) -> Result<()> {
    let mut health = HealthClient::new(lazy_channel(port, name)?);
    let started = Instant::now();
    loop {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        if let Ok(answer) = health.check(request).await
            && answer.get_ref().status == ServingStatus::Serving as i32
        {
            return Ok(());
        }
        process.check_running()?;
        if started.elapsed() > READY_TIMEOUT {
            return Err(setup(format!(
                "{name} did not report SERVING within {READY_TIMEOUT:?}. Its last log lines:\n{}",
                process.log_tail(40)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn endpoint(port: u16, what: &str) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map(|e| {
            // daprd reports a failed call's details in its trailers; a failed bulk call can
            // exceed h2's default 16 KiB header list and would then surface as a bare reset.
            e.tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(3))
                .http2_max_header_list_size(1 << 20)
        })
        .map_err(|source| BenchError::Connect {
            what: what.to_string(),
            source,
        })
}

/// A connection to `port` made at the first call.
pub fn lazy_channel(port: u16, what: &str) -> Result<Channel> {
    Ok(endpoint(port, what)?.connect_lazy())
}

/// One HTTP/2 connection to `port`.
pub async fn channel(port: u16, what: &str) -> Result<Channel> {
    endpoint(port, what)?
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            what: what.to_string(),
            source,
        })
}
