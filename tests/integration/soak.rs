//! Soak: everything the system writes has a bound, and holds it. Under a steady load of task
//! lifecycles (create, rename, complete, delete) and then idle, the state store's key count and
//! memory, every Redis stream, task-api's resident memory and its log volume stay flat once
//! warm.
//!
//! The bounds are the shipped ones, scaled down so that they are reached within the run:
//! tombstones, request ids and notifications kept 10 s instead of days, streams trimmed at 1,000
//! events instead of 100,000. A bound that holds at that scale holds at any. `SOAK=full` runs it
//! for ten minutes (scripts/faults soak).

use std::time::{Duration, Instant};

use task_api::proto::task::v1 as pb;
use tokio::task::JoinSet;

use crate::common::{BinaryApp, WithHeader};

/// How long each retention is in the soak.
const RETENTION_SECONDS: &str = "10";
/// About how many events each stream keeps in the soak.
const STREAM_BOUND: u64 = 1000;
/// The streams task-api writes (one per topic).
const STREAMS: [&str; 4] = [
    "task-events",
    "task-events-retry",
    "task-events-outbox",
    "task-events-outbox-retry",
];
/// Lifecycles run at once, each paced to at most one every [`CYCLE`]: a steady rate, well
/// below what the machine can do, so that what is measured is the system, not the load.
const WORKERS: usize = 4;
const CYCLE: Duration = Duration::from_millis(500);

struct Timing {
    warm: Duration,
    loaded: Duration,
    idle: Duration,
    sample_every: Duration,
}

fn timing() -> Timing {
    if std::env::var("SOAK").is_ok_and(|v| v == "full") {
        Timing {
            warm: Duration::from_secs(120),
            loaded: Duration::from_secs(600),
            idle: Duration::from_secs(120),
            sample_every: Duration::from_secs(30),
        }
    } else {
        Timing {
            warm: Duration::from_secs(60),
            loaded: Duration::from_secs(40),
            idle: Duration::from_secs(30),
            sample_every: Duration::from_secs(5),
        }
    }
}

/// One look at everything that could grow.
#[derive(Debug, Clone)]
struct Sample {
    keys: f64,
    memory_bytes: f64,
    streams: Vec<f64>,
    rss_bytes: f64,
    log_bytes: f64,
}

impl Sample {
    fn take(stack: &devstack::Stack, task_api: &BinaryApp) -> Sample {
        let state = stack.redis().expect("Redis state");
        let broker = stack.broker().unwrap_or(state);
        let number = |text: String| text.trim().parse::<f64>().unwrap_or(f64::NAN);
        let memory = |redis: &devstack::Redis| {
            let info = redis.cli(&["INFO", "memory"]).unwrap_or_default();
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .map_or(f64::NAN, |v| number(v.to_string()))
        };
        Sample {
            keys: number(state.cli(&["DBSIZE"]).unwrap_or_default()),
            memory_bytes: memory(state) + memory(broker),
            streams: STREAMS
                .iter()
                .map(|s| broker.stream_length(s).unwrap_or(0) as f64)
                .collect(),
            rss_bytes: resident_bytes(task_api.process.pid()),
            log_bytes: task_api.process.output_bytes() as f64,
        }
    }
}

/// The resident set of process `pid`, from /proc.
fn resident_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib * 1024.0)
}

/// Task lifecycles at a steady pace until `until`; how many completed.
fn spawn_lifecycles(client: crate::common::Client, until: Instant) -> JoinSet<usize> {
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        let mut client = client.clone();
        workers.spawn(async move {
            let mut done = 0;
            while Instant::now() < until {
                let started = Instant::now();
                if lifecycle(&mut client, worker, done).await.is_ok() {
                    done += 1;
                }
                tokio::time::sleep(CYCLE.saturating_sub(started.elapsed())).await;
            }
            done
        });
    }
    workers
}

async fn lifecycle(
    client: &mut crate::common::Client,
    worker: usize,
    n: usize,
) -> Result<(), tonic::Status> {
    let task = client
        .create_task(pb::CreateTaskRequest {
            title: format!("soak {worker}.{n}"),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    client
        .update_task(pb::UpdateTaskRequest {
            id: task.id.clone(),
            title: Some(format!("soak {worker}.{n}, renamed")),
            ..Default::default()
        })
        .await?;
    client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: task.id.clone(),
            status: pb::TaskStatus::Completed as i32,
            etag: String::new(),
        })
        .await?;
    client
        .delete_task(pb::DeleteTaskRequest {
            id: task.id,
            etag: String::new(),
        })
        .await?;
    Ok(())
}

/// Samples every `every` for `during`.
async fn sample(
    stack: &devstack::Stack,
    task_api: &BinaryApp,
    during: Duration,
    every: Duration,
) -> Vec<Sample> {
    let mut samples = vec![Sample::take(stack, task_api)];
    let until = Instant::now() + during;
    while Instant::now() < until {
        tokio::time::sleep(every).await;
        samples.push(Sample::take(stack, task_api));
    }
    samples
}

/// The mean of `values`' second half over the mean of its first half: above 1 if it grew.
fn growth(values: &[f64]) -> f64 {
    let half = values.len() / 2;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    mean(&values[values.len() - half..]) / mean(&values[..half]).max(1.0)
}

/// Bytes logged between consecutive samples.
fn log_rates(samples: &[Sample]) -> Vec<f64> {
    samples
        .windows(2)
        .map(|w| w[1].log_bytes - w[0].log_bytes)
        .collect()
}

fn series(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Vec<f64> {
    samples.iter().map(f).collect()
}

/// Everything but the streams' own lengths, which are checked against their bound.
fn assert_flat(phase: &str, samples: &[Sample]) {
    let checks: [(&str, Vec<f64>); 3] = [
        ("state keys", series(samples, |s| s.keys)),
        ("Redis memory", series(samples, |s| s.memory_bytes)),
        ("task-api RSS", series(samples, |s| s.rss_bytes)),
    ];
    for (what, values) in checks {
        let grew = growth(&values);
        eprintln!("soak {phase}: {what} {values:?} (growth {grew:.3})");
        assert!(grew <= 1.05, "{phase}: {what} grew {grew:.3}: {values:?}");
    }
}

fn report(phase: &str, samples: &[Sample]) {
    let last = samples.last().expect("samples");
    let streams: Vec<String> = STREAMS
        .iter()
        .zip(&last.streams)
        .map(|(name, len)| format!("{name} {len}"))
        .collect();
    eprintln!(
        "| {phase} | {} | {:.1} MB | {:.1} MiB | {} | {:.0} B/s |",
        last.keys,
        last.memory_bytes / 1e6,
        last.rss_bytes / 1_048_576.0,
        streams.join(", "),
        log_rates(samples).iter().sum::<f64>()
            / (samples.len().saturating_sub(1).max(1) as f64)
            / timing().sample_every.as_secs_f64(),
    );
}

/// Log volume is steady under a steady load and next to nothing while idle.
fn assert_log_volume_bounded(loaded: &[Sample], idle: &[Sample]) {
    let rates = log_rates(loaded);
    assert!(
        growth(&rates) <= 1.05,
        "log volume per interval grew under a steady load: {rates:?}"
    );
    let idle_log: f64 = log_rates(idle).iter().sum();
    assert!(
        idle_log < 1024.0,
        "task-api logged {idle_log} bytes while idle"
    );
}

/// No stream ever holds much more than the length it is trimmed to.
fn assert_streams_within_their_bound(phases: &[&[Sample]]) {
    for samples in phases {
        for (name, lengths) in STREAMS
            .iter()
            .enumerate()
            .map(|(i, name)| (name, series(samples, |s| s.streams[i])))
        {
            let longest = lengths.iter().copied().fold(0.0, f64::max);
            assert!(
                longest <= STREAM_BOUND as f64 * 1.2,
                "{name} holds {longest} events, over its bound of about {STREAM_BOUND}"
            );
        }
    }
}

#[tokio::test]
async fn everything_written_stays_bounded_under_load_and_idle() {
    let timing = timing();
    let stack = devstack::Stack::builder()
        .stream_max_len(STREAM_BOUND)
        .start()
        .await
        .unwrap();
    let retention = [
        ("TOMBSTONE_TTL_SECONDS", RETENTION_SECONDS),
        ("REQUEST_ID_TTL_SECONDS", RETENTION_SECONDS),
        ("NOTIFICATION_RETENTION_SECONDS", RETENTION_SECONDS),
        // The level a deployment logs at: a line per request.
        ("RUST_LOG", "info"),
    ];
    let _notifications = BinaryApp::start(&stack, "notification-service", &retention).await;
    let task_api = BinaryApp::start(&stack, "task-api", &retention).await;
    let client = pb::task_service_client::TaskServiceClient::with_interceptor(
        task_api.channel().await,
        WithHeader("x-api-key", stack.api_key().to_string()),
    );

    let until = Instant::now() + timing.warm + timing.loaded;
    let mut load = spawn_lifecycles(client, until);
    tokio::time::sleep(timing.warm).await;
    let loaded = sample(&stack, &task_api, timing.loaded, timing.sample_every).await;
    let mut lifecycles = 0;
    while let Some(done) = load.join_next().await {
        lifecycles += done.unwrap();
    }
    assert!(lifecycles > 200, "only {lifecycles} lifecycles ran");
    // Idle: what the load left expires; nothing new may pile up.
    tokio::time::sleep(Duration::from_secs(
        2 * RETENTION_SECONDS.parse::<u64>().unwrap(),
    ))
    .await;
    let idle = sample(&stack, &task_api, timing.idle, timing.sample_every).await;

    report("under load", &loaded);
    report("idle", &idle);
    assert_flat("under load", &loaded);
    assert_flat("idle", &idle);
    assert_log_volume_bounded(&loaded, &idle);
    assert_streams_within_their_bound(&[&loaded[..], &idle[..]]);
}
