//! `devstack up`: runs task-api and notification-service, each with its daprd, plus the
//! scheduler, on embedded components (or Redis with `--redis`, PostgreSQL with `--postgres`), and
//! stops them all on Ctrl-C.
//!
//! Started by `scripts/run`, which builds what is missing first.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use devstack::{
    AppProcess, ComponentSet, LogSink, ManagedProcess, Sidecar, Stack, ensure_free, redis_answers,
    walkthrough,
};

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

const USAGE: &str = "usage: devstack up [--redis | --postgres | --kafka]

Runs task-api and notification-service with their Dapr sidecars and the scheduler.
  (default)   embedded components: in-memory state and pub/sub, local-file secrets
  --redis     Redis state and pub/sub (uses the Redis on 127.0.0.1:6379, or starts one)
  --postgres  PostgreSQL state (a private server, kept until Ctrl-C) and Redis pub/sub (as above)
  --kafka     Redis state (as above) and Kafka pub/sub (a private Apache Kafka broker, KRaft mode)
TASK_API_COMPONENTS=redis, =postgres or =kafka does the same as the flags.";

fn say(line: &str) {
    println!("==> {line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut components = match std::env::var("TASK_API_COMPONENTS").as_deref() {
        Ok("redis") => ComponentSet::Redis,
        Ok("postgres" | "postgresql") => ComponentSet::Postgres,
        Ok("kafka") => ComponentSet::Kafka,
        _ => ComponentSet::InMemory,
    };
    match args.first().map(String::as_str) {
        Some("up") => {}
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    for arg in &args[1..] {
        match arg.as_str() {
            "--redis" => components = ComponentSet::Redis,
            "--postgres" | "--postgresql" => components = ComponentSet::Postgres,
            "--kafka" => components = ComponentSet::Kafka,
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
    match up(components).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("==> error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn up(components: ComponentSet) -> Result<(), String> {
    for app in [&TASK_API, &NOTIFICATION_SERVICE] {
        for (port, what) in [
            (app.port, format!("{} (app port)", app.id)),
            (app.dapr_http, format!("the {} sidecar's HTTP API", app.id)),
            (app.dapr_grpc, format!("the {} sidecar's gRPC API", app.id)),
        ] {
            wait_for_port(port, &what).await?;
        }
    }
    let binaries = app_binaries()?;

    let mut builder = Stack::builder()
        .scheduler(true)
        .log_sink(LogSink::Echo)
        .components(components);
    if components != ComponentSet::InMemory {
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
    say("starting the Dapr scheduler");
    let stack = builder.start().await.map_err(|e| e.to_string())?;

    // Started in dependency order, stopped in reverse (the Vec drops front to back, so push
    // in reverse).
    let mut running: Vec<Running> = Vec::new();
    for app in [&NOTIFICATION_SERVICE, &TASK_API] {
        say(&format!("starting {} and its Dapr sidecar", app.id));
        let started = start_app(&stack, app, &binaries).await;
        match started {
            Ok(started) => running.insert(0, started),
            Err(e) => return Err(e),
        }
    }

    let commands = walkthrough::readme_commands();
    let components = match components {
        ComponentSet::Redis => "Redis state and pub/sub",
        ComponentSet::Postgres => "PostgreSQL state, Redis pub/sub",
        ComponentSet::Kafka => "Redis state, Kafka pub/sub",
        ComponentSet::InMemory => "embedded: in-memory state and pub/sub, local-file secrets",
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
    say("logs follow, prefixed by process; Ctrl-C stops everything");

    let outcome = watch(&mut running).await;
    say("stopping");
    for app in running.iter_mut() {
        app.stop();
    }
    drop(running);
    drop(stack);
    say("stopped");
    outcome
}

struct Running {
    process: ManagedProcess,
    sidecar: Sidecar,
}

impl Running {
    fn stop(&mut self) {
        // The app first (it drains its requests), then its sidecar.
        self.process.stop(Duration::from_secs(10));
        self.sidecar.stop(Duration::from_secs(10));
    }
}

async fn start_app(stack: &Stack, app: &App, binaries: &Path) -> Result<Running, String> {
    let sidecar = stack
        .sidecar(app.id)
        .map_err(|e| e.to_string())?
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
    let mut process = stack
        .spawn_app(AppProcess {
            name: app.id.to_string(),
            command,
        })
        .map_err(|e| e.to_string())?;
    let sidecar = sidecar.start().await.map_err(|e| e.to_string())?;
    process
        .wait_for_log("ready: the Dapr sidecar answers", READY_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let mut sidecar = sidecar;
    if app.subscribes {
        sidecar
            .wait_for_subscriptions(READY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Running { process, sidecar })
}

/// Fails at once when a server listens on `port`. A port held only by a closing connection
/// (TIME_WAIT; Dapr's 50001/50002 lie in Linux's range for outgoing connections) frees itself
/// within a minute, so that is waited out.
async fn wait_for_port(port: u16, what: &str) -> Result<(), String> {
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
            return Err(format!(
                "port {port} is already in use (needed for {what}): stop whatever uses it and try again"
            ));
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
async fn watch(running: &mut [Running]) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = ticker.tick() => {
                for app in running.iter_mut() {
                    for process in [&mut app.process, app.sidecar.process()] {
                        if let Some(status) = process.exit_status() {
                            return Err(format!("{} exited unexpectedly ({status})", process.name()));
                        }
                    }
                }
            }
        }
    }
}

/// The app binaries next to this one (scripts/run builds them together).
fn app_binaries() -> Result<PathBuf, String> {
    let dir = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("cannot tell where devstack runs from")?;
    for app in [&TASK_API, &NOTIFICATION_SERVICE] {
        if !dir.join(app.binary).is_file() {
            return Err(format!(
                "{} is not built next to devstack in {}; run scripts/run, which builds it",
                app.binary,
                dir.display()
            ));
        }
    }
    Ok(dir)
}
