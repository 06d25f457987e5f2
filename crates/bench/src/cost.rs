//! `task-api-bench cost`: what a change to task-api costs or saves. CreateTask,
//! UpdateTaskStatus and DeleteTask through two builds of task-api in one run, on each store: a
//! baseline (a build of an earlier revision) and this build.
//!
//! Each build gets a system of its own (servers, both apps, their sidecars); both are started
//! at once and kept running, and only one is loaded at a time. A round measures each
//! concurrency on one build and then the other, in the opposite order in the next round, so a
//! drift of the machine's speed during the run falls on both builds alike; the table reports
//! the median of the rounds and the median of the per-round ratios. At each concurrency:
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
    observe_report::median,
    ops::{self, TaskClient},
    procfs,
    report::{count, cpu},
    store_ops::{OpsPerRequest, StoreCounter, StoreOps},
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
    /// How often each build is measured at each concurrency, alternately.
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub store: &'static str,
    pub build: String,
    /// Which round (from 1) measured it.
    pub round: usize,
    pub scenario: &'static str,
    pub concurrency: usize,
    pub figures: Figures,
    pub cpu: PerRequest,
}

/// What a successful request cost, from a run's start until its events were handled: CPU
/// milliseconds, and the Redis commands the sidecars sent (with tasks on Redis).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PerRequest {
    pub task_api_ms: Option<f64>,
    pub daprd_ms: Option<f64>,
    pub store_ops: Option<OpsPerRequest>,
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
        say(&format!(
            "{}: starting {} and this build, each on a system of its own",
            store_name(store),
            args.baseline_label
        ));
        let mut builds =
            vec![Build::start(args, store, &args.baseline_label, Some(&args.baseline)).await?];
        match Build::start(args, store, "this build", None).await {
            Ok(this) => builds.push(this),
            Err(error) => {
                builds[0].system.stop();
                return Err(error);
            }
        }
        let outcome = rounds(args, store, &mut builds, &mut rows).await;
        for build in &mut builds {
            memory.push(Memory {
                store: store_name(store),
                build: build.name.clone(),
                task_api_peak_rss_kib: procfs::status_kib(build.system.task_api.pid(), "VmHWM"),
            });
            if outcome.is_err() {
                eprint!("{}", build.system.log_tails(30));
            }
            build.system.stop();
        }
        outcome?;
    }
    Ok((rows, memory))
}

/// One build's system, with what measuring it needs.
struct Build {
    name: String,
    system: System,
    clients: Vec<TaskClient>,
    broker: EventBroker,
    watched: Watched,
    store: StoreCounter,
}

impl Build {
    async fn start(
        args: &CostArgs,
        store: ComponentSet,
        name: &str,
        binaries: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut system = System::start(store, binaries).await?;
        let prepared = async {
            let broker = system.event_broker()?;
            let max = args.concurrency.iter().copied().max().unwrap_or(1);
            let clients = system.task_clients(max.div_ceil(16)).await?;
            Ok::<_, crate::error::BenchError>((broker, clients))
        }
        .await;
        let (broker, clients) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                system.stop();
                return Err(error);
            }
        };
        let watched = Watched {
            task_api: system.task_api.pid(),
            daprd: system.task_api.sidecar_pid(),
        };
        Ok(Self {
            name: name.to_string(),
            store: StoreCounter::of(&system),
            system,
            clients,
            broker,
            watched,
        })
    }
}

/// Every round: each concurrency on each build, the builds in turn.
async fn rounds(
    args: &CostArgs,
    store: ComponentSet,
    builds: &mut [Build],
    rows: &mut Vec<Row>,
) -> Result<()> {
    for round in 1..=args.rounds {
        for &c in &args.concurrency {
            // Alternating which build goes first cancels a steady drift within a round.
            let order: Vec<usize> = if round % 2 == 1 {
                (0..builds.len()).collect()
            } else {
                (0..builds.len()).rev().collect()
            };
            for index in order {
                let build = &mut builds[index];
                measure(args, build, (store, round, c), rows).await?;
                build.system.check_running()?;
            }
        }
    }
    Ok(())
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

/// Creates, completes and deletes at `c` in flight on one build.
async fn measure(
    args: &CostArgs,
    build: &Build,
    (store, round, c): (ComponentSet, usize, usize),
    rows: &mut Vec<Row>,
) -> Result<()> {
    let Build {
        name,
        clients,
        broker,
        ..
    } = build;
    let at = |scenario| Run {
        store,
        build: name,
        round,
        scenario,
        concurrency: c,
    };
    let (created, completed) = (Pool::default(), Pool::default());
    let pool = created.clone();
    let start = Start::of(build)?;
    let figures = timed(args, clients, c, move |mut client| {
        let created = pool.clone();
        async move {
            created.put(ops::create(&mut client).await?);
            Ok(Called::Done)
        }
    })
    .await;
    settle(broker).await?;
    let cpu = start.per_request(build, figures.succeeded)?;
    record(rows, at("CreateTask"), figures, cpu);

    let pools = (created.clone(), completed.clone());
    let start = Start::of(build)?;
    let figures = timed(args, clients, c, move |mut client| {
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
    settle(broker).await?;
    let cpu = start.per_request(build, figures.succeeded)?;
    record(rows, at("UpdateTaskStatus"), figures, cpu);

    let start = Start::of(build)?;
    let figures = timed(args, clients, c, move |mut client| {
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
    settle(broker).await?;
    let cpu = start.per_request(build, figures.succeeded)?;
    record(rows, at("DeleteTask"), figures, cpu);
    Ok(())
}

/// Which run a measurement is of.
struct Run<'a> {
    store: ComponentSet,
    build: &'a str,
    round: usize,
    scenario: &'static str,
    concurrency: usize,
}

fn record(rows: &mut Vec<Row>, run: Run<'_>, figures: Figures, cost: PerRequest) {
    let Run {
        store,
        build,
        round,
        scenario,
        concurrency,
    } = run;
    say(&format!(
        "{} / {build} / round {round}: {scenario} at {concurrency}: {:.0} rps, p50 {} ms, p99 {} ms, CPU per request task-api {} ms / daprd {} ms, store ops per request {}, errors {}",
        store_name(store),
        figures.rps,
        ms(figures.p50_ms),
        ms(figures.p99_ms),
        cpu(cost.task_api_ms),
        cpu(cost.daprd_ms),
        count(cost.store_ops.map(|o| o.total())),
        figures.errors
    ));
    rows.push(Row {
        store: store_name(store),
        build: build.to_string(),
        round,
        scenario,
        concurrency,
        figures,
        cpu: cost,
    });
}

/// Where a run started: the CPU ticks of task-api and its daprd, and the store operations.
struct Start {
    ticks: [u64; 3],
    store: StoreOps,
}

impl Start {
    fn of(build: &Build) -> Result<Self> {
        Ok(Self {
            ticks: build.watched.ticks(),
            store: build.store.snapshot()?,
        })
    }

    /// What each of `requests` cost from this start until now.
    fn per_request(&self, build: &Build, requests: u64) -> Result<PerRequest> {
        let [task_api, daprd, _] = build.watched.cpu_since(self.ticks);
        let ms = |seconds: f64| (requests > 0).then(|| seconds * 1000.0 / requests as f64);
        Ok(PerRequest {
            task_api_ms: ms(task_api),
            daprd_ms: ms(daprd),
            store_ops: build.store.per_request_since(&self.store, requests)?,
        })
    }
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

/// The comparison table: each scenario, store and concurrency with both builds side by side,
/// the median of the rounds for each build and the median of the per-round changes.
pub fn table(rows: &[Row], baseline: &str) -> String {
    let mut out = format!(
        "| scenario | store | in flight | {baseline} rps | this build rps | change | p99 ms {baseline} / this build | daprd CPU ms/req {baseline} / this build | change | task-api CPU ms/req {baseline} / this build | store ops/req {baseline} / this build | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut seen: Vec<(&str, &str, usize)> = Vec::new();
    for row in rows.iter().filter(|r| r.build == baseline) {
        let key = (row.store, row.scenario, row.concurrency);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let of = |this: bool| -> Vec<&Row> {
            rows.iter()
                .filter(|r| {
                    (r.build == baseline) != this && (r.store, r.scenario, r.concurrency) == key
                })
                .collect()
        };
        let (before, after) = (of(false), of(true));
        // The rounds that measured both builds, paired.
        let pairs: Vec<(&Row, &Row)> = before
            .iter()
            .filter_map(|b| Some((*b, *after.iter().find(|a| a.round == b.round)?)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let middle = |rows: &[&Row], value: fn(&Row) -> Option<f64>| {
            median(rows.iter().filter_map(|r| value(r)))
        };
        let change = |value: fn(&Row) -> Option<f64>| {
            let ratios = pairs.iter().filter_map(|(b, a)| {
                let (b, a) = (value(b)?, value(a)?);
                (b > 0.0).then(|| a / b)
            });
            median(ratios).map_or_else(|| "-".into(), |r| format!("{:+.0}%", (r - 1.0) * 100.0))
        };
        let rps = |r: &Row| Some(r.figures.rps);
        let p99 = |r: &Row| r.figures.p99_ms;
        let daprd = |r: &Row| r.cpu.daprd_ms;
        let task_api = |r: &Row| r.cpu.task_api_ms;
        let store_ops = |r: &Row| r.cpu.store_ops.map(|o| o.total());
        let errors: u64 = before.iter().chain(&after).map(|r| r.figures.errors).sum();
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {} | {} / {} | {} / {} | {errors} |\n",
            row.scenario,
            row.store,
            row.concurrency,
            middle(&before, rps).unwrap_or(0.0),
            middle(&after, rps).unwrap_or(0.0),
            change(rps),
            ms(middle(&before, p99)),
            ms(middle(&after, p99)),
            cpu(middle(&before, daprd)),
            cpu(middle(&after, daprd)),
            change(daprd),
            cpu(middle(&before, task_api)),
            cpu(middle(&after, task_api)),
            count(middle(&before, store_ops)),
            count(middle(&after, store_ops)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(build: &str, round: usize, rps: f64, daprd_ms: f64) -> Row {
        Row {
            store: "redis",
            build: build.into(),
            round,
            scenario: "CreateTask",
            concurrency: 16,
            figures: Figures {
                rps,
                p99_ms: Some(10.0),
                errors: 1,
                ..Figures::default()
            },
            cpu: PerRequest {
                task_api_ms: Some(0.2),
                daprd_ms: Some(daprd_ms),
                store_ops: Some(OpsPerRequest {
                    state_reads: Some(1.0),
                    state_writes: Some(round as f64),
                    stream: None,
                }),
            },
        }
    }

    #[test]
    fn the_table_gives_medians_and_the_median_of_per_round_changes() {
        // The machine slows down in round 2; each round's ratio still says +10% and -10%.
        let rows = [
            row("before", 1, 1000.0, 0.50),
            row("this build", 1, 1100.0, 0.45),
            row("this build", 2, 550.0, 0.90),
            row("before", 2, 500.0, 1.00),
            row("before", 3, 900.0, 0.60),
            row("this build", 3, 990.0, 0.54),
        ];
        let table = table(&rows, "before");
        let line = table.lines().nth(2).unwrap();
        assert_eq!(
            line,
            "| CreateTask | redis | 16 | 900 | 990 | +10% | 10.0 / 10.0 | 0.600 / 0.540 | -10% | 0.200 / 0.200 | 3.00 / 3.00 | 6 |"
        );
        assert_eq!(table.lines().count(), 3);
    }
}
