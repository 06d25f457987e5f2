//! `simple-app`: what an app between the caller and its sidecar costs, on its own. Each write,
//! and GetTask, measured three ways in one run, one after the other at each concurrency level:
//!
//! - the plain calls sent straight to task-api's daprd (the main benchmark's baseline);
//! - the same calls made by the simple app ([`server`]) through a daprd of its own: what a Dapr
//!   user's first version of the service costs, and so the most any app can reach of the
//!   baseline on this machine;
//! - task-api.
//!
//! The simple app against the plain calls is the price of the app in between; task-api against
//! the simple app is what its guarantees and its event handling cost beyond that.

pub mod server;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use devstack::ComponentSet;
use serde::Serialize;

use crate::{
    args::{Parsed, UsageError, number, parse_brokers_list, parse_levels, seconds},
    backlog::EventBroker,
    bench::WORKERS_PER_CONNECTION,
    brokers::broker_name,
    error::{Result, call_failed, setup},
    load::{self, Pools, RunResult, Scenario, Shared, Target, Watched, Worker},
    ops::{self, Plain, TaskClient},
    report::{Measurement, RunCost, cpu},
    system::{self, App, System},
};

/// The request types measured, in the table's order.
const SCENARIOS: [Scenario; 5] = [
    Scenario::Create,
    Scenario::Update,
    Scenario::Status,
    Scenario::Delete,
    Scenario::Get,
];
/// Longest wait for task-api's events of a run to be handled before the next run starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Callers creating task-api's tasks for GetTask and UpdateTask (not measured).
const POOL_CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
pub struct SimpleAppArgs {
    pub brokers: Vec<ComponentSet>,
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Tasks (and keys, on both plain sides) that GetTask reads and UpdateTask changes.
    pub pool: usize,
    pub out: PathBuf,
}

/// Reads `simple-app`'s options; `--smoke` changes the defaults, explicit options still win.
pub fn parse(options: Vec<(String, Option<String>)>) -> std::result::Result<Parsed, UsageError> {
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut args = SimpleAppArgs {
        brokers: vec![ComponentSet::Redis],
        concurrency: if smoke { vec![4] } else { vec![1, 16, 64] },
        duration: Duration::from_secs(if smoke { 1 } else { 10 }),
        warmup: Duration::from_millis(if smoke { 300 } else { 1000 }),
        pool: if smoke { 50 } else { 1000 },
        out: PathBuf::from("target/bench/simple-app.json"),
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--brokers" | "--broker" => args.brokers = parse_brokers_list(&value)?,
            "--concurrency" => args.concurrency = parse_levels(&value)?,
            "--duration-secs" => {
                args.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            "--warmup-secs" => args.warmup = seconds(&name, &value)?,
            "--pool" => args.pool = number(&name, &value, 1, 100_000)?,
            "--out" => args.out = PathBuf::from(value),
            _ => return Err(format!("unknown option {name:?} for simple-app").into()),
        }
    }
    Ok(Parsed::SimpleApp(args))
}

/// One request type at one level, three ways.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub broker: &'static str,
    pub scenario: &'static str,
    pub concurrency: usize,
    /// The plain calls sent straight to task-api's daprd.
    pub plain: Measurement,
    /// The same calls made by the simple app (its CPU is under `task_api_cpu_*`, its
    /// daprd's under `daprd_cpu_*`).
    pub simple_app: Measurement,
    pub task_api: Measurement,
}

impl Row {
    fn errors(&self) -> u64 {
        self.plain.errors + self.simple_app.errors + self.task_api.errors
    }
}

fn say(line: &str) {
    eprintln!("==> {line}");
}

pub async fn main(args: &SimpleAppArgs) -> ExitCode {
    let started = Instant::now();
    let rows = match run(args).await {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            return ExitCode::from(2);
        }
    };
    println!();
    println!("{}", table(&rows));
    if let Err(e) = crate::write_json(&args.out, &rows) {
        eprintln!("task-api-bench: {e}");
        return ExitCode::from(2);
    }
    say(&format!(
        "results in {} ({:.0} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    let mut failed = false;
    for row in rows.iter().filter(|r| r.errors() > 0) {
        failed = true;
        let first = [&row.plain, &row.simple_app, &row.task_api]
            .iter()
            .find_map(|m| m.error_messages.first().cloned());
        println!(
            "{} {} at {}: {} failed calls, the first: {first:?}",
            row.broker,
            row.scenario,
            row.concurrency,
            row.errors()
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(args: &SimpleAppArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &broker in &args.brokers {
        say(&format!(
            "{}: starting the stack, notification-service, task-api and the simple app",
            broker_name(broker)
        ));
        let mut system = System::start(broker, None).await?;
        let mut simple = match system.start_simple_app().await {
            Ok(app) => app,
            Err(e) => {
                system.stop();
                return Err(e);
            }
        };
        let measured = on_system(args, broker, &mut system, &mut simple).await;
        if measured.is_err() {
            eprint!("{}", system.log_tails(30));
            eprint!("----- simple-app -----\n{}\n", simple.process.log_tail(30));
        }
        simple.stop();
        system.stop();
        rows.extend(measured?);
    }
    Ok(rows)
}

/// The three ways of making the calls, and what each run needs.
struct Sides {
    broker: EventBroker,
    /// The plain calls, one client per connection; the first also writes task-api's pending
    /// tasks and the plain keys.
    plain: Vec<Plain>,
    simple_app: Vec<TaskClient>,
    task_api: Vec<TaskClient>,
    /// Writes the simple app's keys through its daprd.
    simple_writer: Plain,
    /// task-api's tasks that GetTask reads and UpdateTask changes.
    task_ids: Arc<Vec<String>>,
    /// The plain keys written for each plain side: GetTask reads `bench-plain-get-N` below
    /// this many, UpdateTask and UpdateTaskStatus change `plain_cycle`.
    keys: usize,
    plain_cycle: Arc<Vec<String>>,
    broker_name: &'static str,
    watch_task_api: Watched,
    watch_simple_app: Watched,
    /// The plain calls' and the simple app's CreateTask rates at this level, which size their
    /// DeleteTask pools.
    created: Option<(f64, f64)>,
    warmup: Duration,
    duration: Duration,
}

#[derive(Clone, Copy)]
enum Side {
    Plain,
    SimpleApp,
    TaskApi,
}

async fn on_system(
    args: &SimpleAppArgs,
    broker: ComponentSet,
    system: &mut System,
    simple: &mut App,
) -> Result<Vec<Row>> {
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let connections = max_concurrency.div_ceil(WORKERS_PER_CONNECTION);
    let api_key = system.stack.api_key().to_string();
    let template = ops::new_task()?;
    // At least two keys per worker, so no two changes share a key.
    let keys = args.pool.max(2 * max_concurrency);
    let mut sides = Sides {
        broker: system.event_broker()?,
        plain: Vec::new(),
        simple_app: Vec::new(),
        task_api: system.task_clients(connections).await?,
        simple_writer: Plain::new(
            system::channel(simple.sidecar.grpc_port(), "the simple app's daprd").await?,
            template.clone(),
        ),
        task_ids: Arc::new(Vec::new()),
        keys,
        plain_cycle: Arc::new((0..keys).map(ops::plain_task_key).collect()),
        broker_name: broker_name(broker),
        watch_task_api: Watched {
            task_api: system.task_api.pid(),
            daprd: system.task_api.sidecar_pid(),
        },
        watch_simple_app: Watched {
            task_api: simple.pid(),
            daprd: simple.sidecar_pid(),
        },
        created: None,
        warmup: args.warmup,
        duration: args.duration,
    };
    for _ in 0..connections {
        let channel =
            system::channel(system.task_api.sidecar.grpc_port(), "task-api's daprd").await?;
        sides.plain.push(Plain::new(channel, template.clone()));
        let channel = system::channel(simple.port, "the simple app").await?;
        sides.simple_app.push(ops::task_client(channel, &api_key)?);
    }
    say(&format!("creating {} tasks through task-api", sides.keys));
    let ids = load::create_tasks(&sides.task_api, sides.keys, POOL_CONCURRENCY)
        .await
        .map_err(call_failed("creating task-api's tasks"))?;
    if ids.len() < 2 * max_concurrency {
        return Err(setup(
            "task-api's tasks for GetTask and UpdateTask are too few",
        ));
    }
    sides.task_ids = Arc::new(ids);
    say(&format!("writing {} keys for each plain side", sides.keys));
    sides.plain[0].seed(sides.keys).await?;
    sides.simple_writer.seed(sides.keys).await?;
    sides.settle("the tasks' creation").await?;

    let mut rows = Vec::new();
    for &c in &args.concurrency {
        say(&format!(
            "concurrency {c}: {:.1} s warm-up + {} s per run, three runs per request type",
            args.warmup.as_secs_f64(),
            args.duration.as_secs()
        ));
        sides.created = None;
        for scenario in SCENARIOS {
            rows.push(sides.scenario(scenario, c).await?);
        }
        system.check_running()?;
        simple.check_running()?;
    }
    Ok(rows)
}

impl Sides {
    /// `scenario` at `c` in flight: the plain calls, the simple app, then task-api.
    async fn scenario(&mut self, scenario: Scenario, c: usize) -> Result<Row> {
        let plain_pools = |sides: &Self, once: Vec<String>| Pools {
            plain_get_keys: sides.keys,
            cycle: sides.plain_cycle.clone(),
            once,
            ..Pools::default()
        };
        let (plain_once, simple_once) = match (scenario, self.created) {
            // New keys for each side's deletes, sized from its creates at this level.
            (Scenario::Delete, Some((plain, simple))) => {
                let (plain, simple) = (self.enough(plain, 2.0, c), self.enough(simple, 2.0, c));
                (
                    self.plain[0].seed_new(plain).await?,
                    self.simple_writer.seed_new(simple).await?,
                )
            }
            _ => (Vec::new(), Vec::new()),
        };
        let plain = self
            .measure(Side::Plain, scenario, c, plain_pools(self, plain_once))
            .await?;
        let simple_app = self
            .measure(Side::SimpleApp, scenario, c, plain_pools(self, simple_once))
            .await?;
        let api_pools = match scenario {
            // A real pending-to-completed change, or a delete, each time: tasks written
            // straight to the store, as the main benchmark does, sized from the plain calls.
            Scenario::Status | Scenario::Delete => {
                let need = self.enough(plain.rps, 1.25, c);
                Pools {
                    once: self.plain[0].write_pending_tasks(need).await?,
                    ..Pools::default()
                }
            }
            _ => Pools {
                get_ids: self.task_ids.clone(),
                cycle: self.task_ids.clone(),
                ..Pools::default()
            },
        };
        let task_api = self.measure(Side::TaskApi, scenario, c, api_pools).await?;
        if scenario == Scenario::Create {
            self.created = Some((plain.rps, simple_app.rps));
        }
        say(&format!(
            "{} at {c}: plain calls {:.0} rps, simple app {:.0}, task-api {:.0}",
            scenario.name(),
            plain.rps,
            simple_app.rps,
            task_api.rps
        ));
        Ok(Row {
            broker: self.broker_name,
            scenario: scenario.name(),
            concurrency: c,
            plain,
            simple_app,
            task_api,
        })
    }

    /// Tasks enough for a run at `rps` that uses each once, warm-up included, with `margin`.
    fn enough(&self, rps: f64, margin: f64, c: usize) -> usize {
        load::tasks_for(rps, self.warmup + self.duration, margin, c)
    }

    async fn measure(
        &mut self,
        side: Side,
        scenario: Scenario,
        c: usize,
        pools: Pools,
    ) -> Result<Measurement> {
        let shared = Shared::new(pools, 0);
        let workers = (0..c)
            .map(|i| {
                let connection = i / WORKERS_PER_CONNECTION;
                let target = match side {
                    Side::Plain => Target::Plain(self.plain[connection].clone()),
                    Side::SimpleApp => Target::SimpleApp(self.simple_app[connection].clone()),
                    Side::TaskApi => Target::TaskApi(self.task_api[connection].clone()),
                };
                Worker::new(i, c, scenario, target, shared.clone())
            })
            .collect();
        let watched = match side {
            Side::SimpleApp => self.watch_simple_app,
            Side::Plain | Side::TaskApi => self.watch_task_api,
        };
        let result: RunResult =
            load::run(workers, shared, self.warmup, self.duration, watched).await;
        if result.pool_exhausted {
            say(&format!(
                "warning: {} at {c} used up its tasks after {:.1} s",
                scenario.name(),
                result.measured_secs
            ));
        }
        let drained_after_secs = match side {
            Side::TaskApi => self
                .settle(scenario.name())
                .await?
                .map(|waited| waited.as_secs_f64()),
            Side::Plain | Side::SimpleApp => None,
        };
        let cost = RunCost {
            seconds: watched.cpu_since(result.start_ticks),
            drained_after_secs,
            store_ops: None,
        };
        Ok(Measurement::of(&result, scenario, cost))
    }

    /// Waits until task-api has handled every event published so far, so the next run has the
    /// machine to itself.
    async fn settle(&mut self, after: &str) -> Result<Option<Duration>> {
        let waited = self.broker.wait_drained(SETTLE_TIMEOUT).await?;
        if waited.is_none() {
            say(&format!(
                "warning: the events of {after} were still being handled after {SETTLE_TIMEOUT:?}"
            ));
        }
        Ok(waited)
    }
}

/// The results, in markdown: throughput, the ratios between the three, p50, and the CPU of each
/// side's daprd and app per request.
pub fn table(rows: &[Row]) -> String {
    let share = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.0}%", a / b * 100.0)
        } else {
            "-".into()
        }
    };
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    let mut out = String::from(
        "| broker | request | in flight | rps: plain calls / simple app / task-api | simple app / plain calls | task-api / plain calls | task-api / simple app | p50 ms: plain calls / simple app / task-api | daprd CPU ms/req: plain calls / simple app / task-api | app CPU ms/req: simple app / task-api | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (p, s, a) = (&r.plain, &r.simple_app, &r.task_api);
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} / {:.0} / {:.0} | {} | {} | {} | {} / {} / {} | {} / {} / {} | {} / {} | {} |\n",
            r.broker,
            r.scenario,
            r.concurrency,
            p.rps,
            s.rps,
            a.rps,
            share(s.rps, p.rps),
            share(a.rps, p.rps),
            share(a.rps, s.rps),
            ms(p.p50_ms),
            ms(s.p50_ms),
            ms(a.p50_ms),
            cpu(p.daprd_cpu_ms_per_req),
            cpu(s.daprd_cpu_ms_per_req),
            cpu(a.daprd_cpu_ms_per_req),
            cpu(s.task_api_cpu_ms_per_req),
            cpu(a.task_api_cpu_ms_per_req),
            r.errors()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Vec<(String, Option<String>)> {
        crate::args::options(args.iter().map(|a| a.to_string())).unwrap()
    }

    #[test]
    fn defaults_smoke_and_bad_options() {
        let parse = |args: &[&str]| match parse(options(args)) {
            Ok(Parsed::SimpleApp(args)) => Ok(args),
            Ok(_) => Err(UsageError::from("not simple-app")),
            Err(e) => Err(e),
        };
        let normal = parse(&[]).unwrap();
        assert_eq!(normal.concurrency, [1, 16, 64]);
        assert_eq!(normal.brokers, [ComponentSet::Redis]);
        let smoke = parse(&["--smoke", "--brokers", "redis,kafka"]).unwrap();
        assert_eq!(smoke.concurrency, [4]);
        assert_eq!(smoke.duration, Duration::from_secs(1));
        assert_eq!(smoke.brokers, [ComponentSet::Redis, ComponentSet::Kafka]);
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--stores", "redis"]).is_err());
    }

    #[test]
    fn the_table_gives_each_ratio_once_per_row() {
        let measured = |rps: f64| Measurement {
            rps,
            ..Measurement::default()
        };
        let row = Row {
            broker: "redis streams",
            scenario: "CreateTask",
            concurrency: 16,
            plain: measured(4000.0),
            simple_app: measured(3000.0),
            task_api: measured(1500.0),
        };
        let table = table(&[row]);
        let line = table.lines().nth(2).unwrap();
        assert!(
            line.contains("| 4000 / 3000 / 1500 | 75% | 38% | 50% |"),
            "{line}"
        );
    }
}
