//! Integration-test harness: the real apps, in process on port 0, each behind a real daprd.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut};
use dapr::dapr::proto::runtime::v1 as rt;
use dapr_app::{App, Callbacks, EventStatus, Subscription, TopicEvent};
use devstack::{Sidecar, Stack};
use task_api::{
    config::{NotificationConfig, Settings, TaskApiConfig},
    health::Readiness,
    notification,
    proto::{
        notification::v1::notification_service_client::NotificationServiceClient,
        task::v1::{self as pb, task_service_client::TaskServiceClient},
    },
    startup::{Application, StartupError},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{
    Request, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds one metadata entry to every call.
#[derive(Clone)]
pub struct WithHeader(pub &'static str, pub String);

impl Interceptor for WithHeader {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Ok(value) = MetadataValue::try_from(self.1.as_str()) {
            request.metadata_mut().insert(self.0, value);
        }
        Ok(request)
    }
}

pub type Client = TaskServiceClient<InterceptedService<Channel, WithHeader>>;

/// Options for one app under test.
#[derive(Default, Clone)]
pub struct Options {
    pub settings: Vec<(&'static str, String)>,
    /// `APP_API_TOKEN` of the app and its sidecar, instead of the stack's.
    pub app_api_token: Option<String>,
    pub app_health_check: bool,
    pub app_id: Option<&'static str>,
    /// A Configuration file for the sidecar instead of the stack's.
    pub config_file: Option<std::path::PathBuf>,
}

/// A running app with its sidecar. Dropping it stops both.
pub struct TestApp {
    pub port: u16,
    pub sidecar: Sidecar,
    pub readiness: Readiness,
    pub api_key: String,
    /// The token its sidecar sends it (`APP_API_TOKEN`).
    pub app_token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
}

/// An error with its causes, as one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn init_logs() {
    task_api::startup::init_logging(task_api::config::LogFormat::Text);
}

fn settings(stack: &Stack, grpc_port: u16, options: &Options) -> Settings {
    let mut settings = Settings::from_pairs([
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", "0"),
        ("SIDECAR_WAIT_SECONDS", "60"),
    ]);
    settings.set(
        "DAPR_GRPC_ENDPOINT",
        format!("http://127.0.0.1:{grpc_port}"),
    );
    let token = options
        .app_api_token
        .as_deref()
        .unwrap_or(stack.app_token());
    settings.set("APP_API_TOKEN", token);
    for (name, value) in &options.settings {
        settings.set(name, value.clone());
    }
    settings
}

impl TestApp {
    /// task-api on `stack`, ready (its sidecar answers and its API key is read).
    pub async fn task_api(stack: &Stack, options: Options) -> TestApp {
        Self::try_task_api(stack, options)
            .await
            .unwrap_or_else(|e| panic!("task-api did not start: {e}"))
    }

    pub async fn try_task_api(stack: &Stack, options: Options) -> Result<TestApp, String> {
        init_logs();
        let builder = stack.sidecar(options.app_id.unwrap_or("task-api")).unwrap();
        let config = TaskApiConfig::from_settings(&settings(stack, builder.grpc_port(), &options))
            .map_err(|e| chain(&e))?;
        let app = Application::task_api(config).await.map_err(|e| chain(&e))?;
        Self::run(stack, app, builder, options).await
    }

    /// notification-service, then task-api, on `stack` (so completions get notified at once,
    /// not retried until notification-service is up).
    pub async fn task_api_with_notifications(
        stack: &Stack,
        options: Options,
    ) -> (TestApp, TestApp) {
        let notifications = Self::notification_service(stack, Options::default()).await;
        (Self::task_api(stack, options).await, notifications)
    }

    /// notification-service on `stack`.
    pub async fn notification_service(stack: &Stack, options: Options) -> TestApp {
        init_logs();
        let builder = stack
            .sidecar(options.app_id.unwrap_or("notification-service"))
            .unwrap();
        let config =
            NotificationConfig::from_settings(&settings(stack, builder.grpc_port(), &options))
                .unwrap();
        let app = notification::build(config).await.unwrap();
        Self::run(stack, app, builder, options)
            .await
            .unwrap_or_else(|e| panic!("notification-service did not start: {e}"))
    }

    async fn run(
        stack: &Stack,
        app: Application,
        mut builder: devstack::SidecarBuilder<'_>,
        options: Options,
    ) -> Result<TestApp, String> {
        let port = app.port();
        let readiness = app.readiness();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stop.await;
        }));
        builder = builder.app_port(port);
        if let Some(token) = &options.app_api_token {
            builder = builder.app_api_token(token);
        }
        if options.app_health_check {
            builder = builder.app_health_check(1);
        }
        if let Some(path) = &options.config_file {
            builder = builder.config_file(path.clone());
        }
        let sidecar = builder.start().await.map_err(|e| chain(&e))?;
        let mut app = TestApp {
            port,
            sidecar,
            readiness,
            api_key: stack.api_key().to_string(),
            app_token: options
                .app_api_token
                .clone()
                .unwrap_or_else(|| stack.app_token().to_string()),
            shutdown: Some(shutdown),
            server: Some(server),
        };
        let started = Instant::now();
        while !app.readiness.is_ready() {
            if app.server.as_ref().is_some_and(|s| s.is_finished()) {
                let result = app.server.take().unwrap().await.unwrap();
                return Err(match result {
                    Err(e) => chain(&e),
                    Ok(()) => "the app stopped".into(),
                });
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("not ready within 60s".into());
            }
            // Poll interval of the readiness wait above, which has a deadline.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(app)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A TaskService client presenting the stack's API key.
    pub async fn client(&self) -> Client {
        TaskServiceClient::with_interceptor(
            self.channel().await,
            WithHeader("x-api-key", self.api_key.clone()),
        )
    }

    /// A TaskService client presenting `header: value` instead.
    pub async fn client_with(&self, header: &'static str, value: &str) -> Client {
        TaskServiceClient::with_interceptor(self.channel().await, WithHeader(header, value.into()))
    }

    /// A channel that calls the app as its sidecar does (with the app token): for the
    /// callbacks, and for notification-service, which takes no other callers.
    pub async fn as_its_sidecar(&self) -> InterceptedService<Channel, WithHeader> {
        InterceptedService::new(
            self.channel().await,
            WithHeader("dapr-api-token", self.app_token.clone()),
        )
    }

    pub async fn notifications_client(
        &self,
    ) -> NotificationServiceClient<InterceptedService<Channel, WithHeader>> {
        NotificationServiceClient::new(self.as_its_sidecar().await)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Creates a task and returns it.
pub async fn create(client: &mut Client, title: &str, priority: Option<i32>) -> pb::Task {
    client
        .create_task(pb::CreateTaskRequest {
            title: title.into(),
            description: None,
            priority,
            request_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every task of the listing `request` asks for, from its page token on, and how many pages
/// that took. No page holds more than the page size asked for.
pub async fn page_through(
    client: &mut Client,
    mut request: pb::ListTasksRequest,
) -> (Vec<pb::Task>, usize) {
    let mut tasks = Vec::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_tasks(request.clone())
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        if request.page_size > 0 {
            assert!(page.tasks.len() <= request.page_size as usize);
        }
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return (tasks, pages);
        }
        request.page_token = page.next_page_token;
    }
}

/// One `#[tokio::test]` per store for a case written once over a [`devstack::ComponentSet`].
/// Each test is named in full (`per_store!(crud: crud_on_redis => Redis, ...)`), so the names
/// the README and CI list can be found as written.
macro_rules! per_store {
    ($case:ident: $($test:ident => $set:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                $case(devstack::ComponentSet::$set).await;
            }
        )+
    };
}
pub(crate) use per_store;

/// An app that subscribes to topics and reports every delivered event, with when it arrived.
///
/// It answers on a thread and runtime of its own: the tests' runtime has one thread, which a
/// blocking call (the Kafka consumer-group tool runs for seconds) would hold, and daprd would
/// wait for the probe's answers meanwhile, delaying every event after them as if task-api had.
pub struct EventProbe {
    pub port: u16,
    events: mpsc::UnboundedReceiver<(TopicEvent, std::time::SystemTime)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for EventProbe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct ProbeApp {
    pubsub: String,
    topics: Vec<String>,
    sender: mpsc::UnboundedSender<(TopicEvent, std::time::SystemTime)>,
}

impl App for ProbeApp {
    async fn subscriptions(&self) -> Vec<rt::TopicSubscription> {
        self.topics
            .iter()
            .map(|topic| Subscription::new(&self.pubsub, topic).build())
            .collect()
    }

    async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
        let _ = self.sender.send((event, std::time::SystemTime::now()));
        EventStatus::Success
    }
}

impl EventProbe {
    pub async fn start(pubsub: &str, topics: &[&str]) -> EventProbe {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, events) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = ProbeApp {
            pubsub: pubsub.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            sender,
        };
        std::thread::Builder::new()
            .name(format!("event-probe-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let _ = tonic::transport::Server::builder()
                        .add_routes(Callbacks::new(app).into_routes())
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::TcpListenerStream::new(listener),
                            async {
                                let _ = stopped.await;
                            },
                        )
                        .await;
                });
            })
            .unwrap();
        EventProbe {
            port,
            events,
            stop: Some(stop),
        }
    }

    /// The next delivered event's data as JSON.
    pub async fn next_json(&mut self, within: Duration) -> serde_json::Value {
        let event = self.next(within).await;
        serde_json::from_slice(&event.data).unwrap()
    }

    pub async fn next(&mut self, within: Duration) -> TopicEvent {
        tokio::time::timeout(within, self.events.recv())
            .await
            .expect("no event arrived in time")
            .expect("probe closed")
            .0
    }

    /// Every event delivered so far and not yet taken, with when it arrived.
    pub fn drain(&mut self) -> Vec<(TopicEvent, std::time::SystemTime)> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    /// Fails if any event arrives within `quiet`.
    pub async fn expect_none(&mut self, quiet: Duration) {
        if let Ok(Some((event, _))) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("unexpected event: {}", String::from_utf8_lossy(&event.data));
        }
    }
}

/// Waits until task-api has taken and acknowledged everything published so far on `topics`: a
/// negative check ("nothing more happened") that waits exactly as long as it must. On Kafka the
/// outbox topics have a consumer group of their own.
pub async fn wait_until_handled(stack: &Stack, topics: &[&str]) {
    let (outbox, events): (Vec<&str>, Vec<&str>) = topics
        .iter()
        .partition(|topic| topic.starts_with("task-events-outbox"));
    let outbox_group = if stack.kafka().is_some() {
        "task-api-outbox"
    } else {
        "task-api"
    };
    wait_until_consumed(stack, "task-api", &events).await;
    wait_until_consumed(stack, outbox_group, &outbox).await;
}

/// Waits until consumer group `group` (an app id) has acknowledged everything on `topics`: on
/// Redis streams nothing pending or undelivered, on Kafka no lag (offsets are committed only
/// after a message was handled).
pub async fn wait_until_consumed(stack: &Stack, group: &str, topics: &[&str]) {
    eventually(Duration::from_secs(90), || async {
        consumed(stack, group, topics).then_some(())
    })
    .await;
}

fn consumed(stack: &Stack, group: &str, topics: &[&str]) -> bool {
    if let Some(kafka) = stack.kafka() {
        return match kafka.offsets(group) {
            Ok(offsets) => topics
                .iter()
                .all(|topic| offsets.get(*topic).is_some_and(|o| o.lag == 0)),
            Err(_) => false,
        };
    }
    let broker = stack.broker().or(stack.redis()).expect("a broker");
    topics.iter().all(
        |topic| matches!(broker.backlog(topic, group), Ok(Some(backlog)) if backlog.is_empty()),
    )
}

/// Polls `check` until it returns Some, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < within,
            "condition not met within {within:?}"
        );
        // Poll interval: `check` is the fact waited on, `within` its deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Kubernetes manifests, rendered as `kubectl apply -k` would apply them.
pub mod kubernetes {
    use std::{path::PathBuf, process::Command};

    use devstack::repo_root;

    /// The rendered overlay, by the same kustomize scripts/check-deploy uses.
    pub fn render_overlay() -> String {
        let overlay = repo_root().join("manifests/overlays/docker-desktop");
        let cache = std::env::var_os("TASK_API_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/task-api")
            });
        let built = cache.join("bin/kustomize-v5.5.0");
        let mut command = if let Ok(custom) = std::env::var("KUSTOMIZE") {
            let mut parts = custom.split_whitespace();
            let mut command = Command::new(parts.next().unwrap_or("kustomize"));
            command.args(parts);
            command
        } else if built.is_file() {
            let mut command = Command::new(built);
            command.arg("build");
            command
        } else {
            let mut command = Command::new("kubectl");
            command.arg("kustomize");
            command
        };
        let output = command
            .arg(&overlay)
            .output()
            .expect("kustomize (kubectl, or the one scripts/check-deploy builds) runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The documents of `kind` (top-level `kind:` line), with their metadata names.
    pub fn documents<'a>(rendered: &'a str, kind: &str) -> Vec<(String, &'a str)> {
        rendered
            .split("\n---\n")
            .filter(|doc| doc.lines().any(|l| l == format!("kind: {kind}")))
            .map(|doc| {
                let name = doc
                    .lines()
                    .skip_while(|l| *l != "metadata:")
                    .find_map(|l| l.strip_prefix("  name: "))
                    .unwrap_or_default()
                    .to_string();
                (name, doc)
            })
            .collect()
    }
}

/// task-api or notification-service as its real binary in a child process, behind its own
/// daprd: what a crash (kill -9) and a restart are done to.
pub struct BinaryApp {
    pub binary: &'static str,
    pub port: u16,
    /// Where it serves `/metrics`.
    pub metrics_port: u16,
    pub sidecar: Sidecar,
    pub process: devstack::ManagedProcess,
    env: Vec<(String, String)>,
}

impl BinaryApp {
    /// Starts `binary` ("task-api" or "notification-service") on `stack` and waits until it is
    /// ready (grpc.health.v1 `""` SERVING).
    pub async fn start(stack: &Stack, binary: &'static str, env: &[(&str, &str)]) -> BinaryApp {
        let port = devstack::free_port().unwrap();
        let metrics_port = devstack::free_port().unwrap();
        let builder = stack.sidecar(binary).unwrap().app_port(port);
        let mut all_env = vec![
            ("APP_HOST".to_string(), "127.0.0.1".to_string()),
            ("APP_PORT".to_string(), port.to_string()),
            ("METRICS_PORT".to_string(), metrics_port.to_string()),
            (
                "DAPR_GRPC_PORT".to_string(),
                builder.grpc_port().to_string(),
            ),
            ("APP_API_TOKEN".to_string(), stack.app_token().to_string()),
            // TEST_APP_LOG raises it to diagnose a failure (printed when a test fails).
            (
                "RUST_LOG".to_string(),
                std::env::var("TEST_APP_LOG").unwrap_or_else(|_| "warn".to_string()),
            ),
        ];
        all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let process = spawn_binary(stack, binary, &all_env);
        let sidecar = builder.start().await.unwrap();
        let app = BinaryApp {
            binary,
            port,
            metrics_port,
            sidecar,
            process,
            env: all_env,
        };
        app.wait_until_ready(Duration::from_secs(60)).await;
        app
    }

    /// Kills the app at once (SIGKILL), as a crash would; its sidecar keeps running.
    pub fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        self.process.stop(Duration::from_secs(5));
    }

    /// Freezes the app (SIGSTOP): its sidecar goes on taking deliveries that it cannot answer.
    pub fn pause(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// Lets a paused app run again (SIGCONT).
    pub fn resume(&self) {
        self.process.signal(libc::SIGCONT);
    }

    /// Starts the binary again on the same port, and waits until it is ready.
    pub async fn start_again(&mut self, stack: &Stack) {
        self.process = spawn_binary(stack, self.binary, &self.env);
        self.wait_until_ready(Duration::from_secs(60)).await;
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect_lazy()
    }

    /// Whether `grpc.health.v1` answers SERVING for `""` (readiness) right now.
    pub async fn ready(&self) -> bool {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), health.check(request)).await,
            Ok(Ok(response)) if response.get_ref().status == 1
        )
    }

    pub async fn wait_until_ready(&self, within: Duration) {
        eventually(within, || async { self.ready().await.then_some(()) }).await;
    }

    /// The sum of a metric's samples whose labels include every one of `labels`, from the app's
    /// `/metrics` (Prometheus text); 0 when none match.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        Scrape::of(self.metrics_port, "/metrics")
            .await
            .sum(name, labels)
    }
}

/// One reading of a process's metrics (Prometheus text); empty when nothing answered.
pub struct Scrape(String);

impl Scrape {
    /// Reads `http://127.0.0.1:{port}{path}`.
    pub async fn of(port: u16, path: &str) -> Scrape {
        match devstack::http::get(port, path).await {
            Ok(response) => Scrape(response.text()),
            Err(_) => Scrape(String::new()),
        }
    }

    /// Reads daprd's own metrics.
    pub async fn sidecar(sidecar: &Sidecar) -> Scrape {
        Scrape::of(sidecar.metrics_port(), "/").await
    }

    /// The metrics as read, for a failure message.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The sum of the samples of `name` whose labels include every one of `labels`; 0 when
    /// none match.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        devstack::prometheus::sum(&self.0, name, labels)
    }
}

fn spawn_binary(stack: &Stack, binary: &str, env: &[(String, String)]) -> devstack::ManagedProcess {
    let program = match binary {
        "task-api" => env!("CARGO_BIN_EXE_task-api"),
        _ => env!("CARGO_BIN_EXE_notification-service"),
    };
    let mut command = std::process::Command::new(program);
    command.env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    stack
        .spawn_app(devstack::AppProcess {
            name: binary.to_string(),
            command,
        })
        .unwrap()
}

/// The grpcurl binary: `$GRPCURL`, the one scripts/test installs in the cache, or one on PATH.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return path.into();
    }
    let cache = std::env::var_os("TASK_API_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/task-api")
        });
    let cached = cache.join("bin/grpcurl");
    if cached.is_file() {
        return cached;
    }
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("grpcurl"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "grpcurl is not installed: scripts/test installs it (go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4)"
        )
    })
}

/// Sends bytes as they are and hands back the bytes of the answer: for messages no generated
/// client would send.
#[derive(Clone, Default)]
pub struct RawCodec;

pub struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Calls `path` on `channel` with `body` as the raw message and `headers` as metadata.
pub async fn raw_call(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    headers: &[(&'static str, &str)],
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(body);
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(*value).unwrap());
    }
    grpc.unary(request, path.parse().unwrap(), RawCodec)
        .await
        .map(|r| r.into_inner())
}
