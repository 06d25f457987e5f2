//! Start-up, health, reflection and graceful shutdown of the real binaries.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::common::{Options, TestApp, WithHeader, eventually};
use devstack::{AppProcess, ComponentSet, Stack, free_port};
use task_api::proto::task::v1::{self as pb, task_service_client::TaskServiceClient};
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn health_and_reflection_answer_without_credentials() {
    let stack = Stack::builder().start().await.unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    let channel = app.channel().await;
    for service in ["", "liveness", "task.v1.TaskService"] {
        assert_eq!(
            health(channel.clone(), service).await.unwrap(),
            1,
            "{service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"task.v1.TaskService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

/// Before the sidecar answers, the app is alive but not ready; once it answers, it is ready.
#[tokio::test]
async fn readiness_waits_for_the_sidecar_and_liveness_does_not() {
    // Nothing listens on this port: the sidecar never answers.
    let sidecar_port = free_port().unwrap();
    let mut settings = task_api::config::Settings::from_pairs([
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", "0"),
        ("APP_API_TOKEN", "t"),
    ]);
    settings.set(
        "DAPR_GRPC_ENDPOINT",
        format!("http://127.0.0.1:{sidecar_port}"),
    );
    let config = task_api::config::TaskApiConfig::from_settings(&settings).unwrap();
    let app = task_api::startup::Application::task_api(config)
        .await
        .unwrap();
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel.clone(), "liveness").await.unwrap(), 1);
    assert_eq!(health(channel.clone(), "").await.unwrap(), 2, "NOT_SERVING");
    let mut tasks =
        TaskServiceClient::with_interceptor(channel.clone(), WithHeader("x-api-key", "k".into()));
    let early = tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// The real binary, started as users start it: SIGTERM lets in-flight requests finish and exits
/// 0. The requests are held in flight by pausing the sidecar (SIGSTOP) until the app's log shows
/// all of them started; SIGTERM comes while they wait, the sidecar resumes, and every one of them
/// completes.
#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    const IN_FLIGHT: usize = 20;
    // A broker that takes a publish without waiting for its subscribers, so no publish waits on
    // task-api's own subscription, which closes at SIGTERM.
    let stack = Stack::builder()
        .components(ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let app_port = free_port().unwrap();
    let sidecar = stack.sidecar("task-api").unwrap().app_port(app_port);
    let mut command = Command::new(env!("CARGO_BIN_EXE_task-api"));
    command
        .env_clear()
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", app_port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_port().to_string())
        .env("APP_API_TOKEN", stack.app_token())
        // "request started" lines show what is in flight.
        .env("RUST_LOG", "info,task_api::telemetry=debug");
    let mut process = stack
        .spawn_app(AppProcess {
            name: "task-api".into(),
            command,
        })
        .unwrap();
    let mut sidecar = sidecar.start().await.unwrap();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{app_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    process
        .wait_until(Duration::from_secs(30), "readiness", || {
            let channel = channel.clone();
            async move { (health(channel, "").await.ok() == Some(1)).then_some(()) }
        })
        .await
        .unwrap();
    // On Redis streams, learned from the sidecar's components before readiness, task events
    // and direct publishes wait a few milliseconds for company (`service::pacing`).
    let paced: Vec<String> = process
        .log_lines_with("event batching paced for the brokers")
        .iter()
        .map(|line| without_colours(line))
        .collect();
    assert!(
        paced.len() == 1
            && paced[0].contains("publish_spacing_ms=5")
            && paced[0].contains("events_fill_ms=5"),
        "{paced:?}"
    );
    let client = TaskServiceClient::with_interceptor(
        channel,
        WithHeader("x-api-key", stack.api_key().into()),
    );
    let started = |process: &devstack::ManagedProcess| {
        process
            .log_lines_with("request started")
            .iter()
            .filter(|line| line.contains("CreateTask"))
            .count()
    };
    let before = started(&process);

    sidecar.process().signal(libc::SIGSTOP);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0..IN_FLIGHT {
        let mut client = client.clone();
        let finished = finished.clone();
        in_flight.spawn(async move {
            let answer = client
                .create_task(pb::CreateTaskRequest {
                    title: format!("in flight {n}"),
                    ..Default::default()
                })
                .await;
            // Drained means answered by task-api: the task, or, when its sidecar stayed paused
            // past the read deadline, task-api's own UNAVAILABLE, which carries its error
            // details. A request cut off by the shutdown gets a bare transport error instead.
            if let Err(status) = answer {
                assert!(
                    status.code() == Code::Unavailable && !status.details().is_empty(),
                    "an in-flight request was cut off: {status:?}"
                );
            }
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }
    // The app's log, because nothing else tells a request in progress: its metrics count the
    // calls that have ended.
    eventually(Duration::from_secs(10), || async {
        (started(&process) - before >= IN_FLIGHT).then_some(())
    })
    .await;
    process.signal(libc::SIGTERM);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "all still in flight when SIGTERM came (their sidecar is paused)"
    );
    sidecar.process().signal(libc::SIGCONT);
    while let Some(result) = in_flight.join_next().await {
        result.expect("an in-flight request was cut off");
    }
    assert_eq!(finished.load(Ordering::SeqCst), IN_FLIGHT);
    let status = eventually(Duration::from_secs(15), || {
        let status = process.exit_status();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(0), "{}", process.log_tail(20));
    // The binary's own word to its operator that it drained and stopped: the process is gone,
    // so no API is left to ask.
    assert!(process.log_contains("shutting down"));
    assert!(process.log_contains("stopped"));
}

/// Neither app starts without `APP_API_TOKEN`: no setting leaves the callbacks open. The
/// binary exits 1 at once and says what to set.
#[tokio::test]
async fn the_apps_refuse_to_start_without_an_app_token() {
    for binary in [
        env!("CARGO_BIN_EXE_task-api"),
        env!("CARGO_BIN_EXE_notification-service"),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(binary)
                .env_clear()
                .env("APP_HOST", "127.0.0.1")
                .env("APP_PORT", "0")
                .env("AUTH_DISABLED", "true")
                .env("DAPR_GRPC_PORT", free_port().unwrap().to_string())
                .output(),
        )
        .await
        .expect("exits at once")
        .unwrap();
        assert_eq!(output.status.code(), Some(1), "{binary}");
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("APP_API_TOKEN is not set"),
            "{binary}: {said}"
        );
    }
}

/// grpcurl's combined output. Async: the apps under test serve on this test's runtime.
/// A log line without its terminal colour codes (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

async fn grpcurl(args: &[&str]) -> String {
    let output = tokio::process::Command::new(crate::common::grpcurl())
        .arg("-plaintext")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr)
}

/// A real grpcurl sees exactly each app's own services (plus health and reflection), and
/// decodes the google.rpc error details task-api sends: BadRequest on bad input, ErrorInfo on a
/// stale ETag.
#[tokio::test]
async fn grpcurl_lists_each_apps_own_services_and_decodes_error_details() {
    let stack = Stack::builder().start().await.unwrap();
    let (task_api, notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    // grpcurl asks reflection v1, which lists itself; v1alpha is served too, for older clients.
    let common = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    for (app, own) in [
        (&task_api, "task.v1.TaskService"),
        (&notifications, "notification.v1.NotificationService"),
    ] {
        let listed = grpcurl(&[&format!("127.0.0.1:{}", app.port), "list"]).await;
        let mut services: Vec<&str> = listed.lines().map(str::trim).collect();
        services.sort();
        let mut expected: Vec<&str> = common.iter().copied().chain([own]).collect();
        expected.sort();
        assert_eq!(services, expected, "{listed}");
    }

    let key = format!("x-api-key: {}", task_api.api_key);
    let address = format!("127.0.0.1:{}", task_api.port);
    let call = |data: String, method: &'static str| {
        let key = key.clone();
        let address = address.clone();
        async move {
            grpcurl(&[
                "-H",
                &key,
                "-d",
                &data,
                &address,
                &format!("task.v1.TaskService/{method}"),
            ])
            .await
        }
    };
    let bad = call(r#"{"title": ""}"#.into(), "CreateTask").await;
    assert!(bad.contains("Code: InvalidArgument"), "{bad}");
    assert!(
        bad.contains("type.googleapis.com/google.rpc.BadRequest"),
        "{bad}"
    );
    assert!(bad.contains("\"field\": \"title\""), "decoded: {bad}");
    assert!(!bad.contains("not recognized"), "{bad}");

    let created = call(r#"{"title": "grpcurl"}"#.into(), "CreateTask").await;
    let task: serde_json::Value = serde_json::from_str(&created).expect(&created);
    let id = task["id"].as_str().unwrap();
    call(format!(r#"{{"id": "{id}", "priority": 2}}"#), "UpdateTask").await;
    let stale = call(
        format!(r#"{{"id": "{id}", "priority": 3, "etag": "1"}}"#),
        "UpdateTask",
    )
    .await;
    assert!(stale.contains("Code: Aborted"), "{stale}");
    assert!(
        stale.contains("type.googleapis.com/google.rpc.ErrorInfo"),
        "{stale}"
    );
    assert!(
        stale.contains("\"current_etag\": \"2\""),
        "decoded: {stale}"
    );
    assert!(!stale.contains("not recognized"), "{stale}");
}

/// Once shutdown begins, readiness never says SERVING again, although the sidecar still answers
/// (so the dependency probe would pass) while a call is still being drained; and when the app
/// returns, every task it started on its runtime has ended.
#[test]
fn shutdown_closes_readiness_for_good_and_ends_every_background_task() {
    let tests = tokio::runtime::Runtime::new().unwrap();
    // The app alone on a runtime of its own, so its tasks can be counted.
    let app_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tests.block_on(async {
        let stack = Stack::builder().start().await.unwrap();
        let sidecar = stack.sidecar("task-api").unwrap();
        let mut settings = task_api::config::Settings::from_pairs([
            ("APP_HOST", "127.0.0.1"),
            ("APP_PORT", "0"),
            // The key is refreshed every second: that task must end too.
            ("API_KEY_REFRESH_SECONDS", "1"),
        ]);
        settings.set("APP_API_TOKEN", stack.app_token());
        settings.set(
            "DAPR_GRPC_ENDPOINT",
            format!("http://127.0.0.1:{}", sidecar.grpc_port()),
        );
        let config = task_api::config::TaskApiConfig::from_settings(&settings).unwrap();
        let app = app_runtime
            .spawn(task_api::startup::Application::task_api(config))
            .await
            .unwrap()
            .unwrap();
        let port = app.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = app_runtime.spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let _sidecar = sidecar.app_port(port).start().await.unwrap();
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        eventually(Duration::from_secs(30), || async {
            (health(channel.clone(), "").await.ok() == Some(1)).then_some(())
        })
        .await;

        // A watch of readiness: a call in flight, which the drain waits for.
        let mut watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.next().await.unwrap().unwrap().status;
        assert_eq!(first, 1, "SERVING before shutdown");
        let _ = stop.send(());
        let mut seen = Vec::new();
        // Three probe intervals: long enough for a probe to report the sidecar healthy.
        let watching = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(watching);
        loop {
            tokio::select! {
                () = &mut watching => break,
                update = watch.next() => match update {
                    Some(Ok(update)) => seen.push(update.status),
                    _ => break,
                },
            }
        }
        assert_eq!(
            seen.first(),
            Some(&2),
            "NOT_SERVING once shutdown began: {seen:?}"
        );
        assert!(!seen.contains(&1), "never SERVING again: {seen:?}");
        drop(watch);
        drop(channel);

        let result = tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .expect("the app returns once the last call is done")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        let metrics = app_runtime.metrics();
        // Every task the app started ends soon after it returned.
        eventually(Duration::from_secs(3), || async {
            (metrics.num_alive_tasks() == 0).then_some(())
        })
        .await;
    });
    app_runtime.shutdown_timeout(Duration::from_secs(1));
}
