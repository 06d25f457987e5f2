//! task-api-bench: task-api's throughput, latency, CPU, memory and event delivery, each
//! request type against a ceiling made of the same Dapr calls sent straight to its daprd.
//!
//! Run it with `scripts/bench` (which builds it and the apps in release mode); see
//! crates/bench/README.md for what it measures and how to read the table.

mod args;
mod backlog;
mod brokers;
mod cost;
mod drive;
mod error;
mod events;
mod listing;
mod load;
mod ops;
mod procfs;
mod report;
mod system;

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    args::{Args, Parsed, USAGE},
    error::{BenchError, Result, setup},
    events::{Delivery, DeliverySummary},
    load::{RunResult, Scenario, Shared, Target, Watched, Worker},
    ops::{Ceiling, TaskClient},
    report::{Events, Measurement, Memory, ScenarioResult},
    system::System,
};

/// Workers sharing one HTTP/2 connection: tonic multiplexes their requests over it, and with a
/// connection per 16 the client's connection handling stays off the critical path.
const WORKERS_PER_CONNECTION: usize = 16;
/// Longest wait for the event backlog of a run to be handled before the next run starts (a
/// status-change run at 16 or 64 in flight leaves about a minute of notifications behind on two
/// cores).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for sampled notifications once the backlog is handled.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Callers creating the GetTask pool and deleting a level's tasks (not measured).
const POOL_CONCURRENCY: usize = 32;

fn say(line: &str) {
    eprintln!("==> {line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Cost(cost)) => return run_cost(&cost).await,
        Ok(Parsed::List(list)) => return run_list(&list).await,
        Ok(Parsed::Brokers(brokers)) => return run_brokers(&brokers).await,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("task-api-bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    say("starting Redis, notification-service and task-api, each app with its daprd");
    let mut system = match System::start(devstack::ComponentSet::Redis, None).await {
        Ok(system) => system,
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = bench(&args, &mut system).await;
    if outcome.is_err() {
        eprint!("{}", system.log_tails(30));
    }
    say("stopping the apps and their sidecars");
    system.stop();
    drop(system);
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(failure)) => {
            eprintln!("task-api-bench: {failure}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// `cost`: both builds, side by side.
async fn run_cost(args: &cost::CostArgs) -> ExitCode {
    match cost::run(args).await {
        Ok((rows, memory)) => {
            println!();
            println!("{}", cost::table(&rows, &args.baseline_label));
            for m in &memory {
                println!(
                    "task-api peak RSS on {} ({}): {} MiB",
                    m.store,
                    m.build,
                    m.task_api_peak_rss_kib
                        .map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
                );
            }
            let errors: u64 = rows.iter().map(|r| r.figures.errors).sum();
            if errors > 0 {
                for row in rows.iter().filter(|r| r.figures.errors > 0) {
                    println!(
                        "errors in {} / {} / {}: {:?}",
                        row.store, row.build, row.scenario, row.figures.first_error
                    );
                }
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// `brokers`: status changes and their notifications on each broker.
async fn run_brokers(args: &brokers::BrokerArgs) -> ExitCode {
    match brokers::run(args).await {
        Ok(rows) => {
            println!();
            println!("{}", brokers::table(&rows));
            let mut failed = false;
            for row in &rows {
                let n = &row.notifications;
                if row.status_changes.errors > 0 || n.lost + n.unreadable + n.duplicated > 0 {
                    failed = true;
                    println!(
                        "{}: {} failed calls ({:?}); notifications: {:?}",
                        row.broker,
                        row.status_changes.errors,
                        row.status_changes.error_messages.first(),
                        n.first_problem
                    );
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// `list`: first pages as the number of tasks grows.
async fn run_list(args: &listing::ListArgs) -> ExitCode {
    match listing::run(args).await {
        Ok(rows) => {
            println!();
            println!("{}", listing::table(&rows));
            for target in listing::targets(&rows) {
                println!("{target}");
            }
            let errors: u64 = rows
                .iter()
                .flat_map(|r| [&r.unfiltered, &r.filtered, &r.unfiltered_8, &r.filtered_8])
                .map(|f| f.errors)
                .sum();
            if errors > 0 {
                for figures in rows
                    .iter()
                    .flat_map(|r| [&r.unfiltered, &r.filtered, &r.unfiltered_8, &r.filtered_8])
                    .filter(|f| f.errors > 0)
                {
                    println!("errors: {:?}", figures.first_error);
                }
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    TaskApi,
    Ceiling,
}

struct Bench<'a> {
    args: &'a Args,
    watched: Watched,
    task_clients: Vec<TaskClient>,
    ceilings: Vec<Ceiling>,
    get_ids: Arc<Vec<String>>,
    ceiling_keys: usize,
    redis: String,
    max_concurrency: usize,
    notes: Vec<String>,
}

impl Bench<'_> {
    async fn measure(
        &self,
        side: Side,
        scenario: Scenario,
        concurrency: usize,
        pending: Vec<String>,
    ) -> (RunResult, Arc<Shared>) {
        let shared = Shared::new(
            self.get_ids.clone(),
            self.ceiling_keys,
            pending,
            self.args.sample_cap,
        );
        let workers = (0..concurrency)
            .map(|i| {
                let connection = i / WORKERS_PER_CONNECTION;
                let target = match side {
                    Side::TaskApi => Target::TaskApi(self.task_clients[connection].clone()),
                    Side::Ceiling => Target::Ceiling(self.ceilings[connection].clone()),
                };
                Worker::new(i, concurrency, scenario, target, shared.clone())
            })
            .collect();
        let result = load::run(
            workers,
            shared.clone(),
            self.args.warmup,
            self.args.duration,
            self.watched,
        )
        .await;
        (result, shared)
    }

    /// Waits until task-api has handled every event published so far.
    async fn settle(&mut self, after: &str) -> Result<()> {
        match backlog::wait_all_drained(&self.redis, &ops::TOPICS, SETTLE_TIMEOUT).await {
            Ok(Some(waited)) => {
                if waited >= Duration::from_secs(2) {
                    say(&format!(
                        "the events published during {after} took another {:.1} s to handle",
                        waited.as_secs_f64()
                    ));
                }
                Ok(())
            }
            Ok(None) => {
                let note = format!(
                    "task events published during {after} were still being handled after {SETTLE_TIMEOUT:?}; the next run shared the machine with them"
                );
                say(&format!("warning: {note}"));
                self.notes.push(note);
                Ok(())
            }
            Err(e) => Err(setup(format!("reading the event streams: {e}"))),
        }
    }

    /// `count` pending tasks for status changes, written straight to the state store with
    /// task-api's own encoder: UpdateTaskStatus reads and writes only the task's document, so
    /// to it they are tasks like any other, and writing tens of thousands in bulk takes
    /// seconds where CreateTask would take minutes. They stay out of the list index (as tasks
    /// written by another service would), so ListTasks does not grow with them.
    async fn pending_tasks(&mut self, count: usize) -> Result<Vec<String>> {
        say(&format!("writing {count} pending tasks for status changes"));
        self.ceilings[0].write_pending_tasks(count).await
    }

    /// Deletes the tasks a level created through CreateTask, so every level starts from the same
    /// list index (and the index, which ListTasks reads whole in one message, stays below
    /// daprd's 4 MiB message limit).
    async fn clean_up(&mut self, concurrency: usize, ids: Vec<String>) -> Result<()> {
        say(&format!(
            "deleting the {} tasks created at {concurrency}",
            ids.len()
        ));
        if let Err(e) = load::delete_tasks(&self.task_clients, ids, POOL_CONCURRENCY).await {
            let note = format!("cleaning up after concurrency {concurrency}: {e}");
            say(&format!("warning: {note}"));
            self.notes.push(note);
        }
        self.settle("the clean-up").await
    }
}

/// What a level's status-change run left behind.
struct StatusRun {
    leftover: Vec<String>,
    deliveries: Vec<(String, Delivery)>,
}

/// The figures so far, and task-api's memory samples from the highest concurrency.
#[derive(Default)]
struct Collected {
    results: Vec<ScenarioResult>,
    rss_task_api: Vec<u64>,
    rss_daprd: Vec<u64>,
}

impl Collected {
    fn add(
        &mut self,
        scenario: Scenario,
        concurrency: usize,
        api: &RunResult,
        ceiling: &RunResult,
        sample_memory: bool,
    ) {
        if sample_memory {
            self.rss_task_api.extend_from_slice(&api.rss_task_api);
            self.rss_daprd.extend_from_slice(&api.rss_daprd);
        }
        let api = Measurement::of(api, scenario);
        let ceiling = Measurement::of(ceiling, scenario);
        progress(scenario, concurrency, &api, &ceiling);
        self.results
            .push(ScenarioResult::new(scenario, concurrency, api, ceiling));
    }
}

fn progress(scenario: Scenario, concurrency: usize, api: &Measurement, ceiling: &Measurement) {
    say(&format!(
        "{} at {concurrency}: task-api {:.0} rps (p99 {} ms), ceiling {:.0} rps (p99 {} ms), errors {} / {}",
        scenario.name(),
        api.rps,
        api.p99_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        ceiling.rps,
        ceiling
            .p99_ms
            .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        api.errors,
        ceiling.errors,
    ));
}

/// Runs every level; `Ok(Some(reason))` when requests failed or events were lost.
async fn bench(args: &Args, system: &mut System) -> Result<Option<String>> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let connections = max_concurrency.div_ceil(WORKERS_PER_CONNECTION);
    let api_key = system.stack.api_key().to_string();
    let template = ops::new_task()?;

    let mut task_clients = Vec::with_capacity(connections);
    let mut ceilings = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = system::channel(system.task_api.port, "task-api").await?;
        task_clients.push(ops::task_client(channel, &api_key)?);
        let channel =
            system::channel(system.task_api.sidecar.grpc_port(), "task-api's daprd").await?;
        ceilings.push(Ceiling::new(channel, template.clone()));
    }
    // notification-service takes only its sidecar's token.
    let notifications = (
        system::channel(system.notifications.port, "notification-service").await?,
        ops::Credential::new("dapr-api-token", system.stack.app_token())?,
    );

    say(&format!(
        "creating {} tasks for GetTask and the mix",
        args.get_pool
    ));
    let get_ids = load::create_tasks(&task_clients, args.get_pool, POOL_CONCURRENCY)
        .await
        .map_err(|e| setup(format!("creating the GetTask pool: {e}")))?;
    if get_ids.is_empty() {
        return Err(setup("the GetTask pool is empty"));
    }
    // At least two keys per worker, so the ceiling's status changes never share a key.
    let ceiling_keys = args.get_pool.max(2 * max_concurrency);
    ceilings[0].seed(ceiling_keys).await?;

    let watched = Watched {
        task_api: system.task_api.pid(),
        daprd: system.task_api.sidecar_pid(),
    };
    let mut bench = Bench {
        args,
        watched,
        task_clients,
        ceilings,
        get_ids: Arc::new(get_ids),
        ceiling_keys,
        redis: system.broker_address()?,
        max_concurrency,
        notes: Vec::new(),
    };
    bench.settle("the pool creation").await?;

    let mut collected = Collected::default();
    let mut deliveries_by_level = BTreeMap::new();
    for &c in &args.concurrency {
        say(&format!(
            "concurrency {c}: {:.1} s warm-up + {} s per run",
            args.warmup.as_secs_f64(),
            args.duration.as_secs()
        ));
        let sample_memory = c == max_concurrency;
        // Every task this level creates, deleted at its end.
        let mut level_ids: Vec<String> = Vec::new();

        // CreateTask. The ceiling runs first, on a copy of task-api's index, so both start
        // from shards of the same size.
        let (ceiling, _) = bench
            .measure(Side::Ceiling, Scenario::Create, c, Vec::new())
            .await;
        let (api, _) = bench
            .measure(Side::TaskApi, Scenario::Create, c, Vec::new())
            .await;
        bench.settle("CreateTask").await?;
        collected.add(Scenario::Create, c, &api, &ceiling, sample_memory);
        level_ids.extend(api.created);

        // GetTask over the pool.
        let (ceiling, _) = bench
            .measure(Side::Ceiling, Scenario::Get, c, Vec::new())
            .await;
        let (api, _) = bench
            .measure(Side::TaskApi, Scenario::Get, c, Vec::new())
            .await;
        collected.add(Scenario::Get, c, &api, &ceiling, sample_memory);

        let status = status_run(&mut bench, &mut collected, c, &notifications).await?;
        deliveries_by_level.insert(c, status.deliveries);

        // The mix, starting with the pending tasks the status run left.
        let mut pending = status.leftover;
        let buffer = 4 * c + 200;
        if pending.len() < buffer {
            pending.extend(bench.pending_tasks(buffer - pending.len()).await?);
        }
        let (ceiling, _) = bench
            .measure(Side::Ceiling, Scenario::Mixed, c, Vec::new())
            .await;
        let (api, _) = bench
            .measure(Side::TaskApi, Scenario::Mixed, c, pending)
            .await;
        bench.settle("the mix").await?;
        collected.add(Scenario::Mixed, c, &api, &ceiling, sample_memory);
        level_ids.extend(api.created);
        system.check_running()?;
        bench.clean_up(c, level_ids).await?;
    }
    let Collected {
        mut results,
        rss_task_api,
        rss_daprd,
    } = collected;
    order(&mut results);

    let memory = Memory::of(
        max_concurrency,
        &rss_task_api,
        &rss_daprd,
        procfs::status_kib(watched.task_api, "VmHWM"),
        procfs::status_kib(watched.daprd, "VmHWM"),
    );
    let all_deliveries: Vec<_> = deliveries_by_level.values().flatten().cloned().collect();
    let events = Events {
        overall: DeliverySummary::of(&all_deliveries),
        per_concurrency: deliveries_by_level
            .iter()
            .map(|(c, d)| (*c, DeliverySummary::of(d)))
            .collect(),
    };
    let total_errors: u64 = results
        .iter()
        .map(|r| r.task_api.errors + r.ceiling.errors)
        .sum();
    let targets = report::targets(&results, &memory, &events, total_errors);

    println!();
    println!("{}", report::table(&results));
    println!("{}", report::memory_line(&memory));
    println!("{}", report::events_line(&events));
    if let Some(problem) = &events.overall.first_problem {
        println!("First event problem: {problem}");
    }
    for r in &results {
        for (side, m) in [("task-api", &r.task_api), ("ceiling", &r.ceiling)] {
            for message in &m.error_messages {
                println!(
                    "Error in {} at {} ({side}): {message}",
                    r.scenario, r.concurrency
                );
            }
        }
    }
    for note in &bench.notes {
        println!("Note: {note}");
    }
    println!();
    print!("{}", report::targets_text(&targets));

    let cores = procfs::cores();
    let file = ResultsFile {
        benchmark: "task-api-bench",
        metadata: Metadata {
            concurrency: args.concurrency.clone(),
            duration_secs: args.duration.as_secs(),
            warmup_secs: args.warmup.as_secs_f64(),
            smoke: args.smoke,
            cores,
            clock_ticks_per_second: procfs::clock_ticks_per_second(),
            get_pool: args.get_pool,
            max_pool: args.max_pool,
            workers_per_connection: WORKERS_PER_CONNECTION,
            components: "Redis state store and pub/sub (a private redis-server)",
            mix: "50% GetTask, 20% CreateTask, 20% UpdateTaskStatus to completed, 10% ListTasks (first page of 20)",
            shares_the_cores: "the load client, task-api, notification-service, both daprd and Redis",
            started_at_unix: started_unix,
            elapsed_secs: started.elapsed().as_secs_f64(),
        },
        scenarios: &results,
        memory: &memory,
        events: &events,
        all_targets_met: all_met(&targets),
        targets: &targets,
        notes: &bench.notes,
    };
    write_json(&args.out, &file)?;
    println!(
        "\n{cores} cores, shared by the load client, task-api, notification-service, both daprd and Redis. Results: {}",
        args.out.display()
    );

    let missing = events.overall.lost + events.overall.unreadable;
    Ok(match (total_errors, missing) {
        (0, 0) => None,
        (errors, missing) => Some(format!(
            "{errors} requests failed and {missing} sampled notifications were lost or unreadable"
        )),
    })
}

/// UpdateTaskStatus at one level, then the delivery check of its sampled completions.
///
/// Every measured call completes a different pending task: a real pending-to-completed change
/// that publishes `task.completed` and sends one notification. Completing and reopening the
/// same tasks instead would put reopen calls and their events into the measurement, and would
/// give a task several notifications. The pool is sized from the ceiling's run just before,
/// which task-api does not outpace, with a margin (within --max-pool); should it run out
/// anyway, the run ends early and reports the seconds it measured.
async fn status_run(
    bench: &mut Bench<'_>,
    collected: &mut Collected,
    c: usize,
    notifications: &(tonic::transport::Channel, ops::Credential),
) -> Result<StatusRun> {
    let (ceiling, _) = bench
        .measure(Side::Ceiling, Scenario::Status, c, Vec::new())
        .await;
    let calls: usize = ceiling.latencies.iter().map(Vec::len).sum();
    let seconds = bench.args.warmup.as_secs_f64() + bench.args.duration.as_secs_f64();
    let expected = calls as f64 / ceiling.measured_secs.max(0.001) * seconds;
    let need = ((expected * 1.25) as usize + 4 * c).min(bench.args.max_pool);
    let pool = bench.pending_tasks(need).await?;
    let (api, shared) = bench
        .measure(Side::TaskApi, Scenario::Status, c, pool)
        .await;
    bench.settle("UpdateTaskStatus").await?;
    let samples = shared.samples();
    let deliveries = events::check(
        notifications.0.clone(),
        notifications.1.clone(),
        samples,
        DELIVERY_TIMEOUT,
    )
    .await;
    collected.add(
        Scenario::Status,
        c,
        &api,
        &ceiling,
        c == bench.max_concurrency,
    );
    Ok(StatusRun {
        leftover: shared.drain_pending(),
        deliveries,
    })
}

/// By scenario, then concurrency, as the table reads best.
fn order(results: &mut [ScenarioResult]) {
    let rank = |name: &str| Scenario::ALL.iter().position(|s| s.name() == name);
    results.sort_by_key(|r| (rank(r.scenario), r.concurrency));
}

fn all_met(targets: &[report::Target]) -> Option<bool> {
    if targets.iter().any(|t| t.pass == Some(false)) {
        Some(false)
    } else if targets.iter().all(|t| t.pass == Some(true)) {
        Some(true)
    } else {
        None
    }
}

#[derive(Serialize)]
struct Metadata {
    concurrency: Vec<usize>,
    duration_secs: u64,
    warmup_secs: f64,
    smoke: bool,
    cores: usize,
    clock_ticks_per_second: f64,
    get_pool: usize,
    max_pool: usize,
    workers_per_connection: usize,
    components: &'static str,
    mix: &'static str,
    shares_the_cores: &'static str,
    started_at_unix: u64,
    elapsed_secs: f64,
}

#[derive(Serialize)]
struct ResultsFile<'a> {
    benchmark: &'static str,
    metadata: Metadata,
    scenarios: &'a [ScenarioResult],
    memory: &'a Memory,
    events: &'a Events,
    targets: &'a [report::Target],
    /// `None` when some target was not measured and none was missed.
    all_targets_met: Option<bool>,
    notes: &'a [String],
}

fn write_json(path: &Path, file: &ResultsFile<'_>) -> Result<()> {
    let write_error = |source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let json = serde_json::to_string_pretty(file)
        .map_err(|e| setup(format!("encoding the results: {e}")))?;
    std::fs::write(path, json + "\n").map_err(write_error)
}
