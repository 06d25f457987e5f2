//! A daprd sidecar for one app.

use std::{path::PathBuf, process::Command, time::Duration};

use crate::{Error, LogSink, ManagedProcess, Stack, free_port, http};

/// How long a sidecar may take to report healthy (it waits for its app's port, too).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for a sidecar; its ports are picked when the builder is made, so an app can be told
/// its sidecar's gRPC port before either starts.
pub struct SidecarBuilder<'a> {
    stack: &'a Stack,
    app_id: String,
    app_port: Option<u16>,
    grpc_port: u16,
    http_port: u16,
    internal_port: u16,
    metrics_port: u16,
    app_api_token: Option<String>,
    dapr_api_token: Option<String>,
    app_health_check: Option<u32>,
    resources: Option<PathBuf>,
    config: Option<PathBuf>,
    log_level: String,
    api_logging: bool,
    sink: LogSink,
}

impl<'a> SidecarBuilder<'a> {
    pub(crate) fn new(stack: &'a Stack, app_id: &str) -> Result<Self, Error> {
        Ok(Self {
            stack,
            app_id: app_id.to_string(),
            app_port: None,
            grpc_port: free_port()?,
            http_port: free_port()?,
            internal_port: free_port()?,
            metrics_port: free_port()?,
            app_api_token: Some(stack.app_token().to_string()),
            dapr_api_token: None,
            app_health_check: None,
            resources: None,
            config: None,
            log_level: "info".into(),
            api_logging: false,
            sink: stack.sink(),
        })
    }

    /// The port the app serves gRPC on (127.0.0.1). Without one, the sidecar serves a client only.
    pub fn app_port(mut self, port: u16) -> Self {
        self.app_port = Some(port);
        self
    }

    /// The gRPC API port this sidecar will listen on.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// Listens on these gRPC and HTTP API ports instead of free ones (the run command uses
    /// Dapr's well-known ports, so the commands in the README work as printed).
    pub fn api_ports(mut self, grpc: u16, http: u16) -> Self {
        self.grpc_port = grpc;
        self.http_port = http;
        self
    }

    /// `APP_API_TOKEN`: daprd sends it to the app as `dapr-api-token`.
    pub fn app_api_token(mut self, token: &str) -> Self {
        self.app_api_token = Some(token.to_string());
        self
    }

    /// `DAPR_API_TOKEN`: daprd requires it on its own API.
    pub fn dapr_api_token(mut self, token: &str) -> Self {
        self.dapr_api_token = Some(token.to_string());
        self
    }

    /// Turns on daprd's app health checks, probing every `interval_seconds`.
    pub fn app_health_check(mut self, interval_seconds: u32) -> Self {
        self.app_health_check = Some(interval_seconds);
        self
    }

    /// Loads resources from `dir` instead of the stack's rendered components.
    pub fn resources_dir(mut self, dir: PathBuf) -> Self {
        self.resources = Some(dir);
        self
    }

    /// Uses this Configuration file instead of the stack's.
    pub fn config_file(mut self, path: PathBuf) -> Self {
        self.config = Some(path);
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    pub fn api_logging(mut self, on: bool) -> Self {
        self.api_logging = on;
        self
    }

    pub fn log_sink(mut self, sink: LogSink) -> Self {
        self.sink = sink;
        self
    }

    /// Starts daprd and waits until `/v1.0/healthz` answers 204 (components loaded, the app's
    /// port reachable, subscriptions read).
    pub async fn start(self) -> Result<Sidecar, Error> {
        let command = self.command();
        let name = format!("daprd {}", self.app_id);
        let recipe = Recipe::of(&command);
        let process = ManagedProcess::spawn(&name, command, self.sink.clone())?;
        let mut sidecar = Sidecar {
            process,
            recipe,
            sink: self.sink,
            app_id: self.app_id,
            grpc_port: self.grpc_port,
            http_port: self.http_port,
            metrics_port: self.metrics_port,
            dapr_api_token: self.dapr_api_token,
        };
        sidecar.wait_until_healthy().await?;
        Ok(sidecar)
    }

    /// daprd's command line and environment, as built so far.
    fn command(&self) -> Command {
        let stack = self.stack;
        let mut command = Command::new(&stack.binaries().daprd);
        command
            .args(["--mode", "standalone", "--app-id", &self.app_id])
            .args([
                "--app-protocol",
                "grpc",
                "--app-channel-address",
                "127.0.0.1",
            ])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .args(["--dapr-grpc-port", &self.grpc_port.to_string()])
            .args(["--dapr-http-port", &self.http_port.to_string()])
            .args(["--dapr-internal-grpc-port", &self.internal_port.to_string()])
            .args(["--dapr-internal-grpc-listen-address", "127.0.0.1"])
            .args(["--metrics-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .args(["--log-level", &self.log_level])
            .args(["--dapr-graceful-shutdown-seconds", "2"])
            .arg("--resources-path")
            .arg(self.resources.as_deref().unwrap_or(stack.resources_dir()))
            .arg("--config")
            .arg(self.config.as_deref().unwrap_or(stack.config_path()))
            .env("DAPR_HOST_IP", "127.0.0.1")
            .env_remove("APP_API_TOKEN")
            .env_remove("DAPR_API_TOKEN")
            .current_dir(stack.dir());
        if let Some(port) = self.app_port {
            command.args(["--app-port", &port.to_string()]);
        }
        if let Some(address) = stack.scheduler_address() {
            command.args(["--scheduler-host-address", &address]);
        }
        if let Some(sentry) = stack.sentry() {
            command
                .arg("--enable-mtls")
                .args(["--sentry-address", &sentry.address()])
                .env("DAPR_TRUST_ANCHORS", sentry.trust_anchors());
        }
        if let Some(interval) = self.app_health_check {
            command
                .arg("--enable-app-health-check")
                .args(["--app-health-probe-interval", &interval.to_string()])
                .args(["--app-health-probe-timeout", "1000"])
                .args(["--app-health-threshold", "2"]);
        }
        if self.api_logging {
            command.arg("--enable-api-logging");
        }
        // Where daprd's CPU goes: `go tool pprof http://127.0.0.1:<port>/debug/pprof/profile`.
        if self.app_id == "task-api"
            && let Ok(port) = std::env::var("DEVSTACK_DAPRD_PROFILE_PORT")
        {
            command
                .arg("--enable-profiling")
                .args(["--profile-port", &port]);
        }
        if let Some(token) = &self.app_api_token {
            command.env("APP_API_TOKEN", token);
        }
        if let Some(token) = &self.dapr_api_token {
            command.env("DAPR_API_TOKEN", token);
        }
        command
    }
}

/// How a process was started, to start it again the same way.
struct Recipe {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    dir: Option<PathBuf>,
}

impl Recipe {
    fn of(command: &Command) -> Self {
        Self {
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
                .collect(),
            dir: command.get_current_dir().map(ToOwned::to_owned),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }
}

/// A running daprd owned by this handle.
pub struct Sidecar {
    process: ManagedProcess,
    recipe: Recipe,
    sink: LogSink,
    app_id: String,
    grpc_port: u16,
    http_port: u16,
    metrics_port: u16,
    dapr_api_token: Option<String>,
}

impl Sidecar {
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// `http://127.0.0.1:<grpc port>`, as `DAPR_GRPC_ENDPOINT` wants it.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.process.log_contains(needle)
    }

    /// daprd's log lines that contain `needle`.
    pub fn process_log_lines(&self, needle: &str) -> Vec<String> {
        self.process.log_lines_with(needle)
    }

    /// A `dapr` crate client for this sidecar (carrying its `DAPR_API_TOKEN`, if any).
    pub async fn dapr_client(
        &self,
    ) -> Result<dapr::Client<dapr::client::TonicClientWithAuth>, Error> {
        let mut options = dapr::client::ClientOptions::new()
            .with_address(self.grpc_endpoint())
            .without_api_token();
        if let Some(token) = &self.dapr_api_token {
            options = options.with_api_token(token.clone());
        }
        dapr::Client::from_options(options)
            .await
            .map_err(|e| Error::Client {
                address: self.grpc_endpoint(),
                source: Box::new(e),
            })
    }

    /// A plain gRPC channel to this sidecar, for the generated clients.
    pub async fn channel(&self) -> Result<tonic::transport::Channel, Error> {
        tonic::transport::Endpoint::from_shared(self.grpc_endpoint())
            .map_err(|e| Error::Client {
                address: self.grpc_endpoint(),
                source: Box::new(e),
            })?
            .connect()
            .await
            .map_err(|e| Error::Client {
                address: self.grpc_endpoint(),
                source: Box::new(e),
            })
    }

    /// daprd's metadata API (`GET /v1.0/metadata`): its components, its app's topic
    /// subscriptions, its app connection.
    pub async fn metadata(&self) -> Result<serde_json::Value, Error> {
        metadata(self.http_port).await
    }

    /// Waits until daprd reports topic subscriptions for its app (it reads them once the app is
    /// healthy); events published before that are not delivered.
    pub async fn wait_for_subscriptions(&mut self, timeout: Duration) -> Result<(), Error> {
        let http_port = self.http_port;
        self.process
            .wait_until(timeout, "no topic subscriptions reported", || async move {
                let metadata = metadata(http_port).await.ok()?;
                let subscriptions = metadata["subscriptions"].as_array()?;
                (!subscriptions.is_empty()).then_some(())
            })
            .await
    }

    /// Stops daprd now (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        self.process.stop(grace);
    }

    /// Kills daprd at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        self.process.stop(Duration::from_secs(5));
    }

    /// Starts daprd again, with the same ports and settings, and waits until it is healthy.
    pub async fn start_again(&mut self) -> Result<(), Error> {
        let name = format!("daprd {}", self.app_id);
        self.process.stop(Duration::from_secs(5));
        self.process = ManagedProcess::spawn(&name, self.recipe.command(), self.sink.clone())?;
        self.wait_until_healthy().await
    }

    async fn wait_until_healthy(&mut self) -> Result<(), Error> {
        let http_port = self.http_port;
        self.process
            .wait_until(READY_TIMEOUT, "/v1.0/healthz did not answer 204", || {
                http::answers(http_port, "/v1.0/healthz", 204)
            })
            .await
    }
}

async fn metadata(http_port: u16) -> Result<serde_json::Value, Error> {
    let what = || format!("daprd's metadata API on port {http_port}");
    http::get(http_port, "/v1.0/metadata")
        .await
        .map_err(|source| Error::Http {
            what: what(),
            source,
        })?
        .json()
        .map_err(|source| Error::Json {
            what: what(),
            source,
        })
}
