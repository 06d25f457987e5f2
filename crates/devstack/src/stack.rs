//! A stack: one temporary directory holding the rendered resources, the local secrets and the
//! name-resolution database, plus the shared processes its sidecars use: the state store's server
//! (Redis or PostgreSQL), the broker's Redis, the scheduler and Sentry.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Binaries, ComponentSet, DEV_API_KEY_FIELD, DEV_API_KEY_SECRET, Error, Kafka, LogSink,
    ManagedProcess, Postgres, Redis, Scheduler, Sentry, SidecarBuilder,
    resources::{self, Substitutions},
};

/// What to start.
pub struct StackBuilder {
    components: ComponentSet,
    scheduler: bool,
    sentry: bool,
    sink: LogSink,
    api_key: Option<String>,
    redis_port: Option<u16>,
    external_redis: Option<String>,
    extra_resources: Vec<(String, String)>,
    otlp_endpoint: Option<String>,
    sampling_rate: Option<f64>,
    stream_max_len: Option<u64>,
}

impl StackBuilder {
    /// Which state store and broker (Redis and PostgreSQL sets start private servers).
    pub fn components(mut self, set: ComponentSet) -> Self {
        self.components = set;
        self
    }

    /// Also start the scheduler and point every sidecar at it (Jobs API).
    pub fn scheduler(mut self, on: bool) -> Self {
        self.scheduler = on;
        self
    }

    /// Also start Sentry and run every sidecar with mTLS (needed for access-control policies).
    pub fn sentry(mut self, on: bool) -> Self {
        self.sentry = on;
        self
    }

    /// Where process output goes (default: kept in memory, printed if a test fails).
    pub fn log_sink(mut self, sink: LogSink) -> Self {
        self.sink = sink;
        self
    }

    /// The API key written into the local secret store (default: a random one).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    /// Runs Redis on this port instead of a free one (one server then holds state and topics).
    pub fn redis_port(mut self, port: u16) -> Self {
        self.redis_port = Some(port);
        self
    }

    /// Uses the Redis already serving at `address` for state and topics instead of starting one.
    pub fn external_redis(mut self, address: &str) -> Self {
        self.external_redis = Some(address.to_string());
        self
    }

    /// Adds a resource file (e.g. a declarative Subscription) next to the rendered components.
    pub fn extra_resource(mut self, file_name: &str, yaml: &str) -> Self {
        self.extra_resources
            .push((file_name.to_string(), yaml.to_string()));
        self
    }

    /// Every sidecar exports its spans to this OTLP/gRPC receiver (`host:port`, e.g.
    /// [`crate::Jaeger::otlp_grpc_address`]); without one, none are exported.
    pub fn otlp_endpoint(mut self, address: &str) -> Self {
        self.otlp_endpoint = Some(address.to_string());
        self
    }

    /// Every sidecar samples this share of the requests it starts a trace for (0 to 1) instead
    /// of the Configuration's `samplingRate` (every request); the apps follow daprd's decision.
    pub fn sampling_rate(mut self, rate: f64) -> Self {
        self.sampling_rate = Some(rate.clamp(0.0, 1.0));
        self
    }

    /// Redis streams keep about `events` each instead of the components' bound, so a test can
    /// reach the bound (and show that it holds) in seconds.
    pub fn stream_max_len(mut self, events: u64) -> Self {
        self.stream_max_len = Some(events);
        self
    }

    pub async fn start(self) -> Result<Stack, Error> {
        let binaries = Binaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("task-api-stack-")
            .tempdir()
            .map_err(Error::io("the stack directory"))?;
        let servers = self.start_servers(&binaries, dir.path()).await?;
        let api_key = match self.api_key {
            Some(key) => key,
            None => random_hex(16)?,
        };
        // What each sidecar sends its app as `dapr-api-token` (apps refuse to start without).
        let app_token = random_hex(16)?;
        let secrets_file = write_secrets(dir.path(), &api_key)?;
        let resources_dir = dir.path().join("resources");
        let config_path = dir.path().join("config.yaml");
        let state_redis = servers
            .redis
            .as_ref()
            .map(Redis::address)
            .or(servers.external.clone());
        let substitutions = Substitutions {
            broker_redis: servers
                .broker
                .as_ref()
                .map(Redis::address)
                .or_else(|| state_redis.clone()),
            state_redis,
            postgres: servers.postgres.as_ref().map(Postgres::connection_string),
            kafka: servers.kafka.as_ref().map(Kafka::address),
            secrets_file,
            name_resolution_db: dir.path().join("nameresolution.db"),
            otlp_endpoint: self.otlp_endpoint,
            sampling_rate: self.sampling_rate,
            stream_max_len: self.stream_max_len,
        };
        resources::render(
            self.components,
            &substitutions,
            &self.extra_resources,
            &resources_dir,
            &config_path,
        )?;

        Ok(Stack {
            binaries,
            components: self.components,
            sink: self.sink,
            api_key,
            app_token,
            resources_dir,
            config_path,
            scheduler: servers.scheduler,
            sentry: servers.sentry,
            redis: servers.redis,
            broker: servers.broker,
            postgres: servers.postgres,
            kafka: servers.kafka,
            dir,
        })
    }

    /// Starts the servers this stack asks for, keeping their files under `dir`.
    async fn start_servers(&self, binaries: &Binaries, dir: &Path) -> Result<Servers, Error> {
        let sink = || self.sink.clone();
        let (redis, broker, external) = self.start_redis(dir).await?;
        let postgres = if self.components == ComponentSet::Postgres {
            Some(Postgres::start(sink()).await?)
        } else {
            None
        };
        let kafka = if self.components == ComponentSet::Kafka {
            Some(Kafka::start(&dir.join("kafka"), sink()).await?)
        } else {
            None
        };
        let scheduler = if self.scheduler {
            Some(Scheduler::start(binaries, dir, sink()).await?)
        } else {
            None
        };
        let sentry = if self.sentry {
            Some(Sentry::start(binaries, dir, sink()).await?)
        } else {
            None
        };
        Ok(Servers {
            redis,
            broker,
            external,
            postgres,
            kafka,
            scheduler,
            sentry,
        })
    }

    /// The Redis servers: the state store's, the broker's (when it has one of its own), or the
    /// address of one shared by both that runs elsewhere.
    async fn start_redis(
        &self,
        dir: &Path,
    ) -> Result<(Option<Redis>, Option<Redis>, Option<String>), Error> {
        let shared_redis = match (&self.external_redis, self.redis_port) {
            (Some(address), _) => Some(SharedRedis::External(address.clone())),
            (None, Some(port)) => Some(SharedRedis::Owned(
                Redis::start_on(dir, port, self.sink.clone()).await?,
            )),
            (None, None) => None,
        };
        Ok(match shared_redis {
            // One server for both, as `scripts/run --redis` and Kubernetes' docker-desktop
            // overlay have it.
            Some(SharedRedis::External(address)) => (None, None, Some(address)),
            Some(SharedRedis::Owned(redis)) => (Some(redis), None, None),
            None => {
                let state = if self.components.needs_state_redis() {
                    Some(Redis::start(&dir.join("state"), self.sink.clone()).await?)
                } else {
                    None
                };
                let broker = if self.components.needs_broker_redis() {
                    Some(Redis::start(&dir.join("broker"), self.sink.clone()).await?)
                } else {
                    None
                };
                (state, broker, None)
            }
        })
    }
}

/// The local secret store's file, holding `api_key` where task-api reads its API key.
fn write_secrets(dir: &Path, api_key: &str) -> Result<PathBuf, Error> {
    let secrets_file = dir.join("secrets.json");
    let secrets = serde_json::json!({ DEV_API_KEY_SECRET: { DEV_API_KEY_FIELD: api_key } });
    std::fs::write(&secrets_file, secrets.to_string())
        .map_err(Error::io("the local secrets file"))?;
    Ok(secrets_file)
}

/// The servers a stack started beside daprd (or, for Redis, found running).
struct Servers {
    redis: Option<Redis>,
    broker: Option<Redis>,
    /// A Redis shared by state and broker that this stack did not start.
    external: Option<String>,
    postgres: Option<Postgres>,
    kafka: Option<Kafka>,
    scheduler: Option<Scheduler>,
    sentry: Option<Sentry>,
}

enum SharedRedis {
    External(String),
    Owned(Redis),
}

/// A started stack. Dropping it stops Redis and the scheduler; sidecars and apps have handles of
/// their own, which must be dropped first.
pub struct Stack {
    binaries: Binaries,
    components: ComponentSet,
    sink: LogSink,
    api_key: String,
    app_token: String,
    resources_dir: PathBuf,
    config_path: PathBuf,
    // Fields drop in order: processes before the directory they work in.
    scheduler: Option<Scheduler>,
    sentry: Option<Sentry>,
    redis: Option<Redis>,
    broker: Option<Redis>,
    postgres: Option<Postgres>,
    kafka: Option<Kafka>,
    dir: tempfile::TempDir,
}

/// An app binary started as a child process of the stack (run command, benchmark).
pub struct AppProcess {
    pub name: String,
    pub command: Command,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            components: ComponentSet::Redis,
            scheduler: false,
            sentry: false,
            sink: LogSink::Capture,
            api_key: None,
            redis_port: None,
            external_redis: None,
            extra_resources: Vec::new(),
            otlp_endpoint: None,
            sampling_rate: None,
            stream_max_len: None,
        }
    }

    /// A sidecar for `app_id`, not started yet (its ports are already chosen).
    pub fn sidecar(&self, app_id: &str) -> Result<SidecarBuilder<'_>, Error> {
        SidecarBuilder::new(self, app_id)
    }

    /// Starts an app binary with this stack's log sink.
    pub fn spawn_app(&self, app: AppProcess) -> Result<ManagedProcess, Error> {
        let AppProcess { name, mut command } = app;
        command.current_dir(self.dir.path());
        ManagedProcess::spawn(&name, command, self.sink.clone())
    }

    pub fn components(&self) -> ComponentSet {
        self.components
    }

    /// The API key task-api accepts on this stack (from its local secret store).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The token every sidecar of this stack sends its app (`APP_API_TOKEN` of both), unless
    /// a sidecar is given another.
    pub fn app_token(&self) -> &str {
        &self.app_token
    }

    /// The state store's Redis (Redis set), or the one server of a shared-Redis stack.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    pub fn redis_mut(&mut self) -> Option<&mut Redis> {
        self.redis.as_mut()
    }

    /// The broker's own Redis, when it has one.
    pub fn broker(&self) -> Option<&Redis> {
        self.broker.as_ref()
    }

    pub fn broker_mut(&mut self) -> Option<&mut Redis> {
        self.broker.as_mut()
    }

    pub fn postgres(&self) -> Option<&Postgres> {
        self.postgres.as_ref()
    }

    pub fn postgres_mut(&mut self) -> Option<&mut Postgres> {
        self.postgres.as_mut()
    }

    pub fn kafka(&self) -> Option<&Kafka> {
        self.kafka.as_ref()
    }

    pub fn kafka_mut(&mut self) -> Option<&mut Kafka> {
        self.kafka.as_mut()
    }

    pub fn scheduler_mut(&mut self) -> Option<&mut Scheduler> {
        self.scheduler.as_mut()
    }

    pub fn scheduler_address(&self) -> Option<String> {
        self.scheduler.as_ref().map(Scheduler::address)
    }

    pub fn sentry(&self) -> Option<&Sentry> {
        self.sentry.as_ref()
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn resources_dir(&self) -> &Path {
        &self.resources_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub(crate) fn sink(&self) -> LogSink {
        self.sink.clone()
    }
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("random bytes"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
