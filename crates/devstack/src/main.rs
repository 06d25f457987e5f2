//! `devstack up`: runs task-api and notification-service, each with its daprd, plus the
//! scheduler, on embedded components (or Redis with `--redis`, PostgreSQL with `--postgres`), and
//! stops them all on Ctrl-C. `--observe` adds Jaeger and Prometheus.
//!
//! Started by `scripts/run`, which builds what is missing first.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus},
    time::Duration,
};

use devstack::{
    AppProcess, ComponentSet, LogSink, ManagedProcess, Sidecar, Stack, StackBuilder, ensure_free,
    free_port, redis_answers, walkthrough,
};

mod observe;
use observe::{MetricsPorts, Observers};

/// Ports as Dapr users know them: the app ports the manifests use, and daprd's defaults (3500 /
/// 50001) for task-api's sidecar.
struct App {
    id: &'static str,
    binary: &'static str,
    port: u16,
    dapr_http: u16,
    dapr_grpc: u16,
    /// Whether ready means "its sidecar delivers its topic events".
    subscribes: bool,
}

const NOTIFICATION_SERVICE: App = App {
    id: "notification-service",
    binary: "notification-service",
    port: 50052,
    dapr_http: 3501,
    dapr_grpc: 50002,
    subscribes: false,
};
const TASK_API: App = App {
    id: "task-api",
    binary: "task-api",
    port: 50051,
    dapr_http: 3500,
    dapr_grpc: 50001,
    subscribes: true,
};
const REDIS_PORT: u16 = 6379;
const READY_TIMEOUT: Duration = Duration::from_secs(90);

const USAGE: &str = "usage: devstack up [--redis | --postgres | --kafka] [--observe]

Runs task-api and notification-service with their Dapr sidecars and the scheduler.
  (default)   embedded: Redis state and pub/sub on private servers (free ports, nothing kept),
              local-file secrets
  --redis     Redis state and pub/sub (uses the Redis on 127.0.0.1:6379, or starts one)
  --postgres  PostgreSQL state (a private server, kept until Ctrl-C) and Redis pub/sub (as above)
  --kafka     Redis state (as above) and Kafka pub/sub (a private Apache Kafka broker, KRaft mode)
  --observe   also Jaeger (spans of both apps and both sidecars, over OTLP) and Prometheus
              (scraping both apps' METRICS_PORT and both sidecars' metrics), on free ports
Each app serves Prometheus metrics on a free port, passed to it as METRICS_PORT.
TASK_API_COMPONENTS=redis, =postgres or =kafka does the same as the flags.";

fn say(line: &str) {
    println!("==> {line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut mode = match std::env::var("TASK_API_COMPONENTS").as_deref() {
        Ok("redis") => Mode::SharedRedis,
        Ok("postgres" | "postgresql") => Mode::Set(ComponentSet::Postgres),
        Ok("kafka") => Mode::Set(ComponentSet::Kafka),
        _ => Mode::Embedded,
    };
    match args.first().map(String::as_str) {
        Some("up") => {}
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let mut observe = false;
    for arg in &args[1..] {
        match arg.as_str() {
            "--observe" => observe = true,
            "--redis" => mode = Mode::SharedRedis,
            "--postgres" | "--postgresql" => mode = Mode::Set(ComponentSet::Postgres),
            "--kafka" => mode = Mode::Set(ComponentSet::Kafka),
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match up(mode, observe).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("==> error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the apps' components run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Redis state and pub/sub on private servers on free ports.
    Embedded,
    /// Redis state and pub/sub on 127.0.0.1:6379 (started if none runs).
    SharedRedis,
    /// PostgreSQL or Kafka (private), with the shared Redis for the rest.
    Set(ComponentSet),
}

/// Why `devstack up` stopped with an error.
#[derive(Debug, thiserror::Error)]
enum UpError {
    #[error(transparent)]
    Stack(#[from] devstack::Error),
    #[error(
        "port {port} is already in use (needed for {what}): stop whatever uses it and try again"
    )]
    PortInUse { port: u16, what: String },
    #[error("cannot tell where devstack runs from: {0}")]
    OwnPath(#[source] std::io::Error),
    #[error("{binary} is not built next to devstack in {}; run scripts/run, which builds it", dir.display())]
    NotBuilt { binary: &'static str, dir: PathBuf },
    #[error("cannot listen for Ctrl-C and SIGTERM: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{name} exited unexpectedly ({status})")]
    Exited { name: String, status: ExitStatus },
}

impl Mode {
    /// The state store and broker of this mode.
    fn components(self) -> ComponentSet {
        match self {
            Mode::Embedded | Mode::SharedRedis => ComponentSet::Redis,
            Mode::Set(set) => set,
        }
    }
}

async fn up(mode: Mode, observe: bool) -> Result<(), UpError> {
    let components = mode.components();
    wait_for_ports().await?;
    let binaries = app_binaries()?;
    let mut observers = if observe {
        say("starting Jaeger (OTLP receivers, in-memory storage, query API) on free ports");
        Some(Observers::start().await?)
    } else {
        None
    };
    let otlp_endpoint = observers.as_ref().map(|o| o.jaeger.otlp_grpc_address());
    let builder = stack_builder(mode, components, otlp_endpoint.as_deref()).await;
    say("starting the Dapr scheduler");
    let stack = builder.start().await?;
    let mut running = start_apps(&stack, &binaries, observers.as_ref()).await?;

    let metrics: Vec<MetricsPorts> = running.iter().map(Running::metrics_ports).collect();
    if let Some(observers) = observers.as_mut() {
        say(
            "starting Prometheus on a free port (scraping both apps and both sidecars every second)",
        );
        observers.scrape(&metrics).await?;
    }

    print_ready(&stack, mode, components, observers.as_ref(), &metrics);
    say("logs follow, prefixed by process; Ctrl-C stops everything");

    let outcome = watch(&mut running, observers.as_mut()).await;
    say("stopping");
    for app in running.iter_mut() {
        app.stop();
    }
    drop(running);
    drop(stack);
    drop(observers);
    say("stopped");
    outcome
}

/// Waits out every port of both apps and their sidecars ([`wait_for_port`]).
async fn wait_for_ports() -> Result<(), UpError> {
    for app in [&TASK_API, &NOTIFICATION_SERVICE] {
        for (port, what) in [
            (app.port, format!("{} (app port)", app.id)),
            (app.dapr_http, format!("the {} sidecar's HTTP API", app.id)),
            (app.dapr_grpc, format!("the {} sidecar's gRPC API", app.id)),
        ] {
            wait_for_port(port, &what).await?;
        }
    }
    Ok(())
}

/// Starts both apps in dependency order; the first to stop is first in the list (the list
/// drops front to back).
async fn start_apps(
    stack: &Stack,
    binaries: &Path,
    observers: Option<&Observers>,
) -> Result<Vec<Running>, UpError> {
    let mut running: Vec<Running> = Vec::new();
    for app in [&NOTIFICATION_SERVICE, &TASK_API] {
        say(&format!("starting {} and its Dapr sidecar", app.id));
        running.insert(0, start_app(stack, app, binaries, observers).await?);
    }
    Ok(running)
}

/// The stack `up` runs: the scheduler, the components' servers, and daprd's span export.
async fn stack_builder(
    mode: Mode,
    components: ComponentSet,
    otlp_endpoint: Option<&str>,
) -> StackBuilder {
    let mut builder = Stack::builder()
        .scheduler(true)
        .log_sink(LogSink::Echo)
        .components(components);
    if let Some(endpoint) = otlp_endpoint {
        builder = builder.otlp_endpoint(endpoint);
    }
    if mode == Mode::Embedded {
        say("starting Redis for state and for pub/sub on free ports (nothing kept)");
    } else {
        if components == ComponentSet::Postgres {
            say("starting PostgreSQL on a free port (data kept until Ctrl-C)");
        }
        if components == ComponentSet::Kafka {
            say("starting a Kafka broker on a free port (data kept until Ctrl-C)");
        }
        if redis_answers(REDIS_PORT).await {
            say(&format!(
                "using the Redis already running on 127.0.0.1:{REDIS_PORT}"
            ));
            builder = builder.external_redis(&format!("127.0.0.1:{REDIS_PORT}"));
        } else {
            say(&format!(
                "starting Redis on 127.0.0.1:{REDIS_PORT} (nothing persisted)"
            ));
            builder = builder.redis_port(REDIS_PORT);
        }
    }
    builder
}

/// The addresses, the API key and the walkthrough's first commands.
fn print_ready(
    stack: &Stack,
    mode: Mode,
    components: ComponentSet,
    observers: Option<&Observers>,
    metrics: &[MetricsPorts],
) {
    let commands = walkthrough::readme_commands();
    let components = match (mode, components) {
        (Mode::Embedded, _) => {
            "embedded: Redis state and pub/sub on private servers, local-file secrets"
        }
        (_, ComponentSet::Redis) => "Redis state and pub/sub",
        (_, ComponentSet::Postgres) => "PostgreSQL state, Redis pub/sub",
        (_, ComponentSet::Kafka) => "Redis state, Kafka pub/sub",
    };
    println!();
    say(&format!("ready: task-api is serving ({components})"));
    for app in [&TASK_API, &NOTIFICATION_SERVICE] {
        println!(
            "    {:<21} 127.0.0.1:{}   sidecar HTTP 127.0.0.1:{}  gRPC 127.0.0.1:{}",
            app.id, app.port, app.dapr_http, app.dapr_grpc
        );
    }
    if let Some(scheduler) = stack.scheduler_address() {
        println!("    {:<21} {scheduler}", "scheduler");
    }
    if let Some(observers) = observers {
        for line in observers.describe(metrics) {
            println!("    {line}");
        }
    }
    println!("    {:<21} {}", "API key", stack.api_key());
    println!("    {:<21} {}", "working directory", stack.dir().display());
    println!();
    println!("    Try it with grpcurl:");
    println!("    export TASK_API_KEY={}", stack.api_key());
    for method in ["CreateTask", "ListTasks", "UpdateTaskStatus"] {
        if let Some(command) =
            walkthrough::command_for(&commands, &format!("task.v1.TaskService/{method}"))
        {
            println!("    {command}");
        }
    }
    println!();
}

struct Running {
    app_id: &'static str,
    process: ManagedProcess,
    sidecar: Sidecar,
    metrics_port: u16,
}

impl Running {
    fn metrics_ports(&self) -> MetricsPorts {
        MetricsPorts {
            app_id: self.app_id,
            app: self.metrics_port,
            sidecar: self.sidecar.metrics_port(),
        }
    }

    fn stop(&mut self) {
        // The app first (it drains its requests), then its sidecar.
        self.process.stop(Duration::from_secs(10));
        self.sidecar.stop(Duration::from_secs(10));
    }
}

async fn start_app(
    stack: &Stack,
    app: &App,
    binaries: &Path,
    observers: Option<&Observers>,
) -> Result<Running, UpError> {
    let sidecar = stack
        .sidecar(app.id)?
        .api_ports(app.dapr_grpc, app.dapr_http)
        .app_port(app.port)
        .app_health_check(1);
    let mut command = Command::new(binaries.join(app.binary));
    command
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", app.port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_port().to_string())
        .env_remove("DAPR_GRPC_ENDPOINT")
        .env("APP_API_TOKEN", stack.app_token())
        .env_remove("DAPR_API_TOKEN");
    // Every app serves Prometheus text at http://127.0.0.1:<METRICS_PORT>/metrics.
    let metrics_port = free_port()?;
    command.env("METRICS_PORT", metrics_port.to_string());
    if let Some(observers) = observers {
        observers.export_to_jaeger(&mut command, app.id);
    }
    let mut process = stack.spawn_app(AppProcess {
        name: app.id.to_string(),
        command,
    })?;
    let mut sidecar = sidecar.start().await?;
    process
        .wait_for_log("ready: the Dapr sidecar answers", READY_TIMEOUT)
        .await?;
    if app.subscribes {
        sidecar.wait_for_subscriptions(READY_TIMEOUT).await?;
    }
    Ok(Running {
        app_id: app.id,
        process,
        sidecar,
        metrics_port,
    })
}

/// Fails at once when a server listens on `port`. A port held only by a closing connection
/// (TIME_WAIT; Dapr's 50001/50002 lie in Linux's range for outgoing connections) frees itself
/// within a minute, so that is waited out.
async fn wait_for_port(port: u16, what: &str) -> Result<(), UpError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(70);
    let mut said = false;
    loop {
        if ensure_free(port, what).is_ok() {
            return Ok(());
        }
        let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if listening || std::time::Instant::now() > deadline {
            return Err(UpError::PortInUse {
                port,
                what: what.to_string(),
            });
        }
        if !said {
            say(&format!(
                "port {port} ({what}) is held by a closing connection; waiting up to a minute for it"
            ));
            said = true;
        }
        // Poll interval of the wait for the port, which has a deadline.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for Ctrl-C / SIGTERM, or for a process that stops on its own (an error).
async fn watch(
    running: &mut [Running],
    mut observers: Option<&mut Observers>,
) -> Result<(), UpError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(UpError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(UpError::Signals)?;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = ticker.tick() => {
                let mut processes: Vec<&mut ManagedProcess> = running
                    .iter_mut()
                    .flat_map(|app| [&mut app.process, app.sidecar.process()])
                    .collect();
                if let Some(observers) = observers.as_deref_mut() {
                    processes.extend(observers.processes());
                }
                for process in processes {
                    if let Some(status) = process.exit_status() {
                        return Err(UpError::Exited {
                            name: process.name().to_string(),
                            status,
                        });
                    }
                }
            }
        }
    }
}

/// The app binaries next to this one (scripts/run builds them together).
fn app_binaries() -> Result<PathBuf, UpError> {
    let exe = std::env::current_exe().map_err(UpError::OwnPath)?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for app in [&TASK_API, &NOTIFICATION_SERVICE] {
        if !dir.join(app.binary).is_file() {
            return Err(UpError::NotBuilt {
                binary: app.binary,
                dir,
            });
        }
    }
    Ok(dir)
}
