//! `task-api-bench cost`: what the delivery guarantees cost. CreateTask, UpdateTaskStatus and
//! DeleteTask through two builds of task-api, one after the other in one run, on each store:
//! a baseline (a build of an earlier revision, e.g. main before the guarantees) and this build.
//!
//! Each build gets a fresh system (servers, both apps, their sidecars). At each concurrency:
//! CreateTask runs for the set time; UpdateTaskStatus then completes the tasks it created, and
//! DeleteTask deletes them (each run ends early if it uses them all up). Between runs the
//! benchmark waits until every event has been handled, and the CPU task-api and its daprd used
//! from a run's start until then is divided by the run's successful requests.

use std::{path::PathBuf, time::Duration};

use devstack::ComponentSet;
use serde::Serialize;

use crate::{
    backlog::EventBroker,
    drive::{Called, Figures, Pool, drive},
    error::{CallError, Result, setup},
    load::Watched,
    ops::{self, TaskClient},
    procfs,
    system::System,
};

const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct CostArgs {
    pub baseline: PathBuf,
    pub baseline_label: String,
    pub stores: Vec<ComponentSet>,
    pub concurrency: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub store: &'static str,
    pub build: String,
    pub scenario: &'static str,
    pub concurrency: usize,
    pub figures: Figures,
    pub cpu: CpuPerRequest,
}

/// CPU milliseconds per successful request, from a run's start until its events were handled.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuPerRequest {
    pub task_api_ms: Option<f64>,
    pub daprd_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub store: &'static str,
    pub build: String,
    pub task_api_peak_rss_kib: Option<u64>,
}

pub fn store_name(store: ComponentSet) -> &'static str {
    match store {
        ComponentSet::Redis => "redis",
        ComponentSet::Postgres => "postgresql",
        ComponentSet::Kafka => "kafka",
    }
}

fn say(line: &str) {
    eprintln!("==> {line}");
}

pub async fn run(args: &CostArgs) -> Result<(Vec<Row>, Vec<Memory>)> {
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    for &store in &args.stores {
        let builds = [
            (args.baseline_label.clone(), Some(args.baseline.clone())),
            ("this build".to_string(), None),
        ];
        for (build, binaries) in builds {
            say(&format!("{}: starting {build}", store_name(store)));
            let mut system = System::start(store, binaries.as_deref()).await?;
            let outcome = measure(args, &mut system, store, &build, &mut rows).await;
            memory.push(Memory {
                store: store_name(store),
                build: build.clone(),
                task_api_peak_rss_kib: procfs::status_kib(system.task_api.pid(), "VmHWM"),
            });
            if outcome.is_err() {
                eprint!("{}", system.log_tails(30));
            }
            system.stop();
            outcome?;
        }
    }
    Ok((rows, memory))
}

/// `call` from `c` callers for the set time, each caller on its connection's client.
async fn timed<F, Fut>(args: &CostArgs, clients: &[TaskClient], c: usize, call: F) -> Figures
where
    F: Fn(TaskClient) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::result::Result<Called, CallError>> + Send,
{
    let clients = clients.to_vec();
    drive(c, args.warmup, args.duration, move |worker| {
        call(clients[worker / 16].clone())
    })
    .await
}

async fn measure(
    args: &CostArgs,
    system: &mut System,
    store: ComponentSet,
    build: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let broker = system.event_broker()?;
    let watched = Watched {
        task_api: system.task_api.pid(),
        daprd: system.task_api.sidecar_pid(),
    };
    let max = args.concurrency.iter().copied().max().unwrap_or(1);
    let clients = system.task_clients(max.div_ceil(16)).await?;
    for &c in &args.concurrency {
        let (created, completed) = (Pool::default(), Pool::default());
        let pool = created.clone();
        let start = watched.ticks();
        let figures = timed(args, &clients, c, move |mut client| {
            let created = pool.clone();
            async move {
                created.put(ops::create(&mut client).await?);
                Ok(Called::Done)
            }
        })
        .await;
        settle(&broker).await?;
        let cpu = per_request(watched.cpu_since(start), figures.succeeded);
        record(rows, (store, build, "CreateTask", c), figures, cpu);

        let pools = (created.clone(), completed.clone());
        let start = watched.ticks();
        let figures = timed(args, &clients, c, move |mut client| {
            let (created, completed) = pools.clone();
            async move {
                let Some(id) = created.take() else {
                    return Ok(Called::Exhausted);
                };
                ops::complete(&mut client, &id).await?;
                completed.put(id);
                Ok(Called::Done)
            }
        })
        .await;
        settle(&broker).await?;
        let cpu = per_request(watched.cpu_since(start), figures.succeeded);
        record(rows, (store, build, "UpdateTaskStatus", c), figures, cpu);

        let start = watched.ticks();
        let figures = timed(args, &clients, c, move |mut client| {
            let completed = completed.clone();
            async move {
                let Some(id) = completed.take() else {
                    return Ok(Called::Exhausted);
                };
                ops::delete(&mut client, &id).await?;
                Ok(Called::Done)
            }
        })
        .await;
        settle(&broker).await?;
        let cpu = per_request(watched.cpu_since(start), figures.succeeded);
        record(rows, (store, build, "DeleteTask", c), figures, cpu);
        system.check_running()?;
    }
    Ok(())
}

fn record(
    rows: &mut Vec<Row>,
    (store, build, scenario, concurrency): (ComponentSet, &str, &'static str, usize),
    figures: Figures,
    cpu: CpuPerRequest,
) {
    say(&format!(
        "{} / {build}: {scenario} at {concurrency}: {:.0} rps, p50 {} ms, p99 {} ms, CPU per request task-api {} ms / daprd {} ms, errors {}",
        store_name(store),
        figures.rps,
        ms(figures.p50_ms),
        ms(figures.p99_ms),
        cpu_ms(cpu.task_api_ms),
        cpu_ms(cpu.daprd_ms),
        figures.errors
    ));
    rows.push(Row {
        store: store_name(store),
        build: build.to_string(),
        scenario,
        concurrency,
        figures,
        cpu,
    });
}

/// CPU per request of task-api and its daprd, from the seconds each used (as
/// [`Watched::cpu_since`] gives them).
fn per_request([task_api, daprd, _]: [f64; 3], requests: u64) -> CpuPerRequest {
    let ms = |seconds: f64| (requests > 0).then(|| seconds * 1000.0 / requests as f64);
    CpuPerRequest {
        task_api_ms: ms(task_api),
        daprd_ms: ms(daprd),
    }
}

fn cpu_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

async fn settle(broker: &EventBroker) -> Result<()> {
    match broker.wait_drained(SETTLE_TIMEOUT).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(setup(format!(
            "events were still being handled after {SETTLE_TIMEOUT:?}"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The comparison table: each scenario, store and concurrency with both builds side by side.
pub fn table(rows: &[Row], baseline: &str) -> String {
    let mut out = format!(
        "| scenario | store | in flight | {baseline} rps | this build rps | change | p99 ms {baseline} / this build | daprd CPU ms/req {baseline} / this build | change | task-api CPU ms/req {baseline} / this build | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for row in rows.iter().filter(|r| r.build == baseline) {
        let Some(this) = rows.iter().find(|r| {
            r.build != baseline
                && r.store == row.store
                && r.scenario == row.scenario
                && r.concurrency == row.concurrency
        }) else {
            continue;
        };
        let change = |before: f64, after: f64| {
            format!("{:+.0}%", (after / before.max(0.000_001) - 1.0) * 100.0)
        };
        let daprd_change = match (row.cpu.daprd_ms, this.cpu.daprd_ms) {
            (Some(before), Some(after)) => change(before, after),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {daprd_change} | {} / {} | {} |\n",
            row.scenario,
            row.store,
            row.concurrency,
            row.figures.rps,
            this.figures.rps,
            change(row.figures.rps, this.figures.rps),
            ms(row.figures.p99_ms),
            ms(this.figures.p99_ms),
            cpu_ms(row.cpu.daprd_ms),
            cpu_ms(this.cpu.daprd_ms),
            cpu_ms(row.cpu.task_api_ms),
            cpu_ms(this.cpu.task_api_ms),
            row.figures.errors + this.figures.errors,
        ));
    }
    out
}
