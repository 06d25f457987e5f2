//! `brokers`: the same system on each broker (Redis streams, Kafka; tasks on Redis either way):
//! UpdateTaskStatus throughput, and how long after each sampled
//! completion returned its notification was recorded, with lost and duplicated counts.
//!
//! Each run completes pending tasks written straight to the state store (as the main benchmark
//! does), so every call is a real pending-to-completed change that publishes `task.completed`
//! and sends one notification.

use std::{sync::Arc, time::Duration};

use devstack::ComponentSet;
use serde::Serialize;

use crate::{
    error::{Result, setup},
    events::{self, DeliverySummary},
    load::{self, Pools, Scenario, Shared, Target, Watched, Worker},
    ops::{self, Plain},
    report::{Measurement, RunCost},
    system::{self, System},
};

/// Longest wait for the sampled notifications of a run.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct BrokerArgs {
    pub brokers: Vec<ComponentSet>,
    /// In-flight calls per run; one run per level and broker. At 1 the latency is the event
    /// path's own; at 16 the events queue up behind the status changes.
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Pending tasks written for each run (the run ends early if they run out).
    pub pool: usize,
    /// Most completions per run whose notification is timed.
    pub sample_cap: usize,
}

impl Default for BrokerArgs {
    fn default() -> Self {
        Self {
            brokers: vec![ComponentSet::Redis, ComponentSet::Kafka],
            concurrency: vec![1, 16],
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            pool: 8_000,
            sample_cap: 400,
        }
    }
}

impl BrokerArgs {
    pub fn smoke() -> Self {
        Self {
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            pool: 2_000,
            sample_cap: 50,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerRow {
    pub broker: &'static str,
    pub concurrency: usize,
    pub status_changes: Measurement,
    pub notifications: DeliverySummary,
}

pub fn broker_name(set: ComponentSet) -> &'static str {
    match set {
        ComponentSet::Redis | ComponentSet::Postgres => "redis streams",
        ComponentSet::Kafka => "kafka",
    }
}

fn say(line: &str) {
    eprintln!("==> {line}");
}

pub async fn run(args: &BrokerArgs) -> Result<Vec<BrokerRow>> {
    let mut rows = Vec::new();
    for &broker in &args.brokers {
        say(&format!(
            "{}: starting the stack, notification-service and task-api",
            broker_name(broker)
        ));
        let mut system = System::start(broker, None).await?;
        for &concurrency in &args.concurrency {
            let row = measure(args, broker, concurrency, &mut system).await;
            if row.is_err() {
                eprint!("{}", system.log_tails(30));
                system.stop();
            }
            rows.push(row?);
        }
        system.stop();
    }
    Ok(rows)
}

/// `concurrency` workers completing pending tasks written straight to the state store.
async fn status_changes(
    args: &BrokerArgs,
    concurrency: usize,
    system: &mut System,
) -> Result<(load::RunResult, Arc<Shared>, RunCost)> {
    let clients = system.task_clients(concurrency.div_ceil(16)).await?;
    let sidecar = system::channel(system.task_api.sidecar.grpc_port(), "task-api's daprd").await?;
    let mut writer = Plain::new(sidecar, ops::new_task()?);
    say(&format!("writing {} pending tasks", args.pool));
    let pools = Pools {
        once: writer.write_pending_tasks(args.pool).await?,
        ..Pools::default()
    };
    let shared = Shared::new(pools, args.sample_cap);
    let workers = (0..concurrency)
        .map(|i| {
            let target = Target::TaskApi(clients[i / 16].clone());
            Worker::new(i, concurrency, Scenario::Status, target, shared.clone())
        })
        .collect();
    let watched = Watched {
        task_api: system.task_api.pid(),
        daprd: system.task_api.sidecar_pid(),
    };
    let result = load::run(workers, shared.clone(), args.warmup, args.duration, watched).await;
    let cpu = RunCost {
        seconds: watched.cpu_since(result.start_ticks),
        drained_after_secs: None,
        store_ops: None,
    };
    Ok((result, shared, cpu))
}

async fn measure(
    args: &BrokerArgs,
    broker: ComponentSet,
    concurrency: usize,
    system: &mut System,
) -> Result<BrokerRow> {
    say(&format!(
        "{}: UpdateTaskStatus at {} for {} s",
        broker_name(broker),
        concurrency,
        args.duration.as_secs()
    ));
    let (result, shared, cpu) = status_changes(args, concurrency, system).await?;
    let status_changes = Measurement::of(&result, Scenario::Status, cpu);
    let notifications_channel =
        system::channel(system.notifications.port, "notification-service").await?;
    let credential = ops::Credential::new("dapr-api-token", system.stack.app_token())?;
    let deliveries = events::check(
        notifications_channel,
        credential,
        shared.samples(),
        DELIVERY_TIMEOUT,
    )
    .await;
    let notifications = DeliverySummary::of(&deliveries);
    system.check_running()?;
    if notifications.sampled == 0 {
        return Err(setup(format!(
            "{}: no completion was sampled",
            broker_name(broker)
        )));
    }
    Ok(BrokerRow {
        broker: broker_name(broker),
        concurrency,
        status_changes,
        notifications,
    })
}

/// The table: one row per broker.
pub fn table(rows: &[BrokerRow]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    let mut out = String::from(
        "| broker | in flight | UpdateTaskStatus rps | call p99 (ms) | errors | notifications sampled | notified p50 (ms) | notified p99 (ms) | lost | duplicated |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let s = &row.status_changes;
        let n = &row.notifications;
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.broker,
            row.concurrency,
            s.rps,
            ms(s.p99_ms),
            s.errors,
            n.sampled,
            ms(n.p50_ms),
            ms(n.p99_ms),
            n.lost + n.unreadable,
            n.duplicated
        ));
    }
    out
}
