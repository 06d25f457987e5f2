//! The main benchmark: every request type through task-api against the plain app (the calls a
//! simple Dapr app would make for it, straight to task-api's daprd), at each concurrency level,
//! on each broker.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use devstack::ComponentSet;
use serde::Serialize;
use tonic::transport::Channel;

use crate::{
    args::Args,
    backlog::EventBroker,
    brokers::broker_name,
    error::{Result, call_failed, setup},
    events::{self, Delivery, DeliverySummary},
    load::{self, Pools, RunResult, Scenario, Shared, Target, Watched, Worker},
    ops::{self, Credential, Plain, TaskClient},
    procfs,
    report::{self, Events, Measurement, Memory, RunCost, ScenarioResult},
    store_ops::StoreCounter,
    system::{self, System},
};

/// Workers sharing one HTTP/2 connection: tonic multiplexes their requests over it, and with a
/// connection per 16 the client's connection handling stays off the critical path.
pub const WORKERS_PER_CONNECTION: usize = 16;
/// Longest wait for the event backlog of a run to be handled before the next run starts (a
/// status-change run at 64 in flight can leave about a minute of notifications behind on two
/// cores).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for sampled notifications once the backlog is handled.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Callers creating the GetTask pool and deleting a level's tasks (not measured).
const POOL_CONCURRENCY: usize = 32;

fn say(line: &str) {
    eprintln!("==> {line}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    TaskApi,
    Plain,
}

/// One run: what the load saw, and the CPU from its start until its events were handled.
pub struct Run {
    pub result: RunResult,
    pub shared: Arc<Shared>,
    pub cpu: RunCost,
}

/// Everything measured on one broker.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    pub broker: &'static str,
    pub scenarios: Vec<ScenarioResult>,
    pub memory: Memory,
    pub events: Events,
    pub targets: Vec<report::Target>,
    pub notes: Vec<String>,
}

impl BrokerReport {
    pub fn errors(&self) -> u64 {
        self.scenarios
            .iter()
            .map(|r| r.task_api.errors + r.plain.errors)
            .sum()
    }

    pub fn missing_events(&self) -> usize {
        self.events.overall.lost + self.events.overall.unreadable
    }
}

pub struct Bench<'a> {
    pub args: &'a Args,
    broker: EventBroker,
    watched: Watched,
    store: StoreCounter,
    task_clients: Vec<TaskClient>,
    plains: Vec<Plain>,
    notifications: (Channel, Credential),
    get_ids: Arc<Vec<String>>,
    plain_keys: usize,
    pub max_concurrency: usize,
    pub notes: Vec<String>,
}

impl<'a> Bench<'a> {
    /// Connects to the system, creates the GetTask pool and seeds the plain app's keys.
    pub async fn prepare(args: &'a Args, system: &mut System) -> Result<Self> {
        let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
        let api_key = system.stack.api_key().to_string();
        let template = ops::new_task()?;
        let mut task_clients = Vec::new();
        let mut plains = Vec::new();
        for _ in 0..max_concurrency.div_ceil(WORKERS_PER_CONNECTION) {
            let channel = system::channel(system.task_api.port, "task-api").await?;
            task_clients.push(ops::task_client(channel, &api_key)?);
            let channel =
                system::channel(system.task_api.sidecar.grpc_port(), "task-api's daprd").await?;
            plains.push(Plain::new(channel, template.clone()));
        }
        // notification-service takes only its sidecar's token.
        let notifications = (
            system::channel(system.notifications.port, "notification-service").await?,
            Credential::new("dapr-api-token", system.stack.app_token())?,
        );
        say(&format!(
            "creating {} tasks for GetTask and the mix",
            args.get_pool
        ));
        let get_ids = load::create_tasks(&task_clients, args.get_pool, POOL_CONCURRENCY)
            .await
            .map_err(call_failed("creating the GetTask pool"))?;
        if get_ids.is_empty() {
            return Err(setup("the GetTask pool is empty"));
        }
        // At least two keys per worker, so the plain app's changes never share a key.
        let plain_keys = args.get_pool.max(2 * max_concurrency);
        plains[0].seed(plain_keys).await?;
        let mut bench = Self {
            args,
            broker: system.event_broker()?,
            watched: Watched {
                task_api: system.task_api.pid(),
                daprd: system.task_api.sidecar_pid(),
            },
            store: StoreCounter::of(system),
            task_clients,
            plains,
            notifications,
            get_ids: Arc::new(get_ids),
            plain_keys,
            max_concurrency,
            notes: Vec::new(),
        };
        bench.settle("the pool creation").await?;
        Ok(bench)
    }

    pub fn watched(&self) -> Watched {
        self.watched
    }

    /// The pools of a run: `cycle` and `once` as given, the read pools always.
    fn pools(&self, cycle: Vec<String>, once: Vec<String>) -> Pools {
        Pools {
            get_ids: self.get_ids.clone(),
            plain_get_keys: self.plain_keys,
            cycle: Arc::new(cycle),
            once,
        }
    }

    /// The plain app's keys that UpdateTask and UpdateTaskStatus change.
    fn plain_cycle(&self) -> Vec<String> {
        (0..self.plain_keys).map(ops::plain_task_key).collect()
    }

    /// One run of `scenario` at `concurrency`; task-api's runs wait until their events are
    /// handled, and their CPU counts until then.
    pub async fn measure(
        &mut self,
        side: Side,
        scenario: Scenario,
        c: usize,
        pools: Pools,
    ) -> Result<Run> {
        let shared = Shared::new(pools, self.args.sample_cap);
        let workers = (0..c)
            .map(|i| {
                let connection = i / WORKERS_PER_CONNECTION;
                let target = match side {
                    Side::TaskApi => Target::TaskApi(self.task_clients[connection].clone()),
                    Side::Plain => Target::Plain(self.plains[connection].clone()),
                };
                Worker::new(i, c, scenario, target, shared.clone())
            })
            .collect();
        let (warmup, duration) = (self.args.warmup, self.args.duration);
        let store_before = self.store.snapshot()?;
        let result = load::run(workers, shared.clone(), warmup, duration, self.watched).await;
        let drained_after_secs = match side {
            Side::TaskApi => self.settle(scenario.name()).await?.map(|d| d.as_secs_f64()),
            Side::Plain => None,
        };
        let cpu = RunCost {
            seconds: self.watched.cpu_since(result.start_ticks),
            drained_after_secs,
            store_ops: self
                .store
                .per_request_since(&store_before, result.succeeded)?,
        };
        Ok(Run {
            result,
            shared,
            cpu,
        })
    }

    /// Waits until task-api has handled every event published so far; how long that took.
    pub async fn settle(&mut self, after: &str) -> Result<Option<Duration>> {
        match self.broker.wait_drained(SETTLE_TIMEOUT).await {
            Ok(Some(waited)) => {
                if waited >= Duration::from_secs(2) {
                    say(&format!(
                        "the events published during {after} took another {:.1} s to handle",
                        waited.as_secs_f64()
                    ));
                }
                Ok(Some(waited))
            }
            Ok(None) => {
                let note = format!(
                    "task events published during {after} were still being handled after {SETTLE_TIMEOUT:?}; the next run shared the machine with them"
                );
                say(&format!("warning: {note}"));
                self.notes.push(note);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `count` pending tasks, written straight to the state store with task-api's own encoder:
    /// UpdateTaskStatus and DeleteTask read and write only the task's document, so to them they
    /// are tasks like any other, and writing tens of thousands in bulk takes seconds where
    /// CreateTask would take minutes. They stay out of the list index (as tasks written by
    /// another service would).
    async fn pending_tasks(&mut self, count: usize) -> Result<Vec<String>> {
        say(&format!("writing {count} pending tasks"));
        self.plains[0].write_pending_tasks(count).await
    }

    /// Tasks for a run that uses each once, sized from the plain app's rate in a run like it
    /// with a margin, within --max-pool.
    fn pool_size(&self, plain: &Run, c: usize, margin: f64) -> usize {
        let calls = plain.result.latencies.iter().map(Vec::len).sum::<usize>() as f64;
        let rps = calls / plain.result.measured_secs.max(0.001);
        load::tasks_for(rps, self.args.warmup + self.args.duration, margin, c)
            .min(self.args.max_pool)
    }

    /// Deletes the tasks a level left in the list index, so every level starts from the same
    /// index.
    async fn clean_up(&mut self, c: usize, ids: Vec<String>) -> Result<()> {
        say(&format!(
            "deleting the {} tasks left from {c} in flight",
            ids.len()
        ));
        if let Err(e) = load::delete_tasks(&self.task_clients, ids, POOL_CONCURRENCY).await {
            let note = format!("cleaning up after concurrency {c}: {e}");
            say(&format!("warning: {note}"));
            self.notes.push(note);
        }
        self.settle("the clean-up").await.map(|_| ())
    }
}

/// The figures so far, task-api's memory samples from the highest concurrency, and the
/// sampled notifications of each level.
#[derive(Default)]
struct Collected {
    results: Vec<ScenarioResult>,
    rss_task_api: Vec<u64>,
    rss_daprd: Vec<u64>,
    deliveries: BTreeMap<usize, Vec<(String, Delivery)>>,
}

impl Collected {
    fn add(&mut self, scenario: Scenario, c: usize, api: &Run, plain: &Run, sample_memory: bool) {
        if sample_memory {
            self.rss_task_api
                .extend_from_slice(&api.result.rss_task_api);
            self.rss_daprd.extend_from_slice(&api.result.rss_daprd);
        }
        let api = Measurement::of(&api.result, scenario, api.cpu);
        let plain = Measurement::of(&plain.result, scenario, plain.cpu);
        let figure = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        say(&format!(
            "{} at {c}: task-api {:.0} rps (p50 {} ms, daprd {} ms CPU/req), plain {:.0} rps (p50 {} ms, daprd {} ms CPU/req), errors {} / {}",
            scenario.name(),
            api.rps,
            figure(api.p50_ms),
            figure(api.daprd_cpu_ms_per_req),
            plain.rps,
            figure(plain.p50_ms),
            figure(plain.daprd_cpu_ms_per_req),
            api.errors,
            plain.errors,
        ));
        self.results
            .push(ScenarioResult::new(scenario, c, api, plain));
    }
}

/// A scenario whose pools do not depend on each other's run: the plain app, then task-api.
async fn pair(
    bench: &mut Bench<'_>,
    collected: &mut Collected,
    scenario: Scenario,
    c: usize,
    (plain_pools, api_pools): (Pools, Pools),
) -> Result<(Run, Run)> {
    let plain = bench.measure(Side::Plain, scenario, c, plain_pools).await?;
    let api = bench.measure(Side::TaskApi, scenario, c, api_pools).await?;
    collected.add(scenario, c, &api, &plain, c == bench.max_concurrency);
    Ok((plain, api))
}

/// UpdateTaskStatus: every measured call of task-api completes a different pending task, a
/// real pending-to-completed change that publishes `task.completed` and sends one
/// notification; then the sampled notifications are checked. The pool is sized from the plain
/// app's run just before. Returns the pending tasks left.
async fn status_run(
    bench: &mut Bench<'_>,
    collected: &mut Collected,
    c: usize,
) -> Result<Vec<String>> {
    let pools = bench.pools(bench.plain_cycle(), Vec::new());
    let plain = bench
        .measure(Side::Plain, Scenario::Status, c, pools)
        .await?;
    let need = bench.pool_size(&plain, c, 1.25);
    let pending = bench.pending_tasks(need).await?;
    let pools = bench.pools(Vec::new(), pending);
    let api = bench
        .measure(Side::TaskApi, Scenario::Status, c, pools)
        .await?;
    let (channel, credential) = bench.notifications.clone();
    let deliveries =
        events::check(channel, credential, api.shared.samples(), DELIVERY_TIMEOUT).await;
    collected.deliveries.insert(c, deliveries);
    collected.add(
        Scenario::Status,
        c,
        &api,
        &plain,
        c == bench.max_concurrency,
    );
    Ok(api.shared.drain_once())
}

/// DeleteTask: each call deletes a different task. The plain app deletes what its CreateTask
/// run created, task-api what its CreateTask run created, each topped up (task-api's with
/// pending tasks written straight to the store) to the plain app's rate with a margin. Returns
/// the level's tasks left in the list index.
async fn delete_run(
    bench: &mut Bench<'_>,
    collected: &mut Collected,
    c: usize,
    (plain_create, api_create): (&Run, &Run),
) -> Result<Vec<String>> {
    let mut plain_keys = plain_create.result.created.clone();
    let need = bench.pool_size(plain_create, c, 2.0);
    if plain_keys.len() < need {
        let more = need - plain_keys.len();
        plain_keys.extend(bench.plains[0].seed_new(more).await?);
    }
    let plain = bench
        .measure(
            Side::Plain,
            Scenario::Delete,
            c,
            bench.pools(Vec::new(), plain_keys),
        )
        .await?;
    let level_ids = api_create.result.created.clone();
    let need = bench.pool_size(&plain, c, 1.25);
    // Popped from the end: the level's own tasks go first.
    let mut once = if level_ids.len() < need {
        bench.pending_tasks(need - level_ids.len()).await?
    } else {
        Vec::new()
    };
    once.extend(level_ids.iter().cloned());
    let api = bench
        .measure(
            Side::TaskApi,
            Scenario::Delete,
            c,
            bench.pools(Vec::new(), once),
        )
        .await?;
    collected.add(
        Scenario::Delete,
        c,
        &api,
        &plain,
        c == bench.max_concurrency,
    );
    let left: std::collections::HashSet<String> = api.shared.drain_once().into_iter().collect();
    Ok(level_ids
        .into_iter()
        .filter(|id| left.contains(id))
        .collect())
}

/// One concurrency level: every scenario, the plain app first (with task-api idle), then
/// task-api; at the end, the level's tasks still listed are deleted.
async fn level(bench: &mut Bench<'_>, collected: &mut Collected, c: usize) -> Result<()> {
    say(&format!(
        "concurrency {c}: {:.1} s warm-up + {} s per run",
        bench.args.warmup.as_secs_f64(),
        bench.args.duration.as_secs()
    ));
    let reads_only = |bench: &Bench<'_>| {
        (
            bench.pools(Vec::new(), Vec::new()),
            bench.pools(Vec::new(), Vec::new()),
        )
    };
    let pools = reads_only(bench);
    let (plain_create, api_create) = pair(bench, collected, Scenario::Create, c, pools).await?;
    let pools = reads_only(bench);
    pair(bench, collected, Scenario::Get, c, pools).await?;
    // Each worker changes its own tasks in turn: at least two each.
    let mut cycle = api_create.result.created.clone();
    if cycle.len() < 2 * c {
        cycle.extend(bench.get_ids.iter().cloned());
    }
    let pools = (
        bench.pools(bench.plain_cycle(), Vec::new()),
        bench.pools(cycle, Vec::new()),
    );
    pair(bench, collected, Scenario::Update, c, pools).await?;
    let mut pending = status_run(bench, collected, c).await?;
    let mut listed = delete_run(bench, collected, c, (&plain_create, &api_create)).await?;
    // The mix starts with the pending tasks the status run left.
    let buffer = 4 * c + 200;
    if pending.len() < buffer {
        pending.extend(bench.pending_tasks(buffer - pending.len()).await?);
    }
    let pools = (
        bench.pools(bench.plain_cycle(), Vec::new()),
        bench.pools(Vec::new(), pending),
    );
    let (_, api_mixed) = pair(bench, collected, Scenario::Mixed, c, pools).await?;
    listed.extend(api_mixed.result.created.iter().cloned());
    bench.clean_up(c, listed).await
}

/// Every level on the running system; its report.
pub async fn on_system(
    args: &Args,
    system: &mut System,
    broker: ComponentSet,
) -> Result<BrokerReport> {
    let mut bench = Bench::prepare(args, system).await?;
    let mut collected = Collected::default();
    for &c in &args.concurrency {
        level(&mut bench, &mut collected, c).await?;
        system.check_running()?;
    }
    let Collected {
        mut results,
        rss_task_api,
        rss_daprd,
        deliveries,
    } = collected;
    let rank = |name: &str| Scenario::ALL.iter().position(|s| s.name() == name);
    results.sort_by_key(|r| (rank(r.scenario), r.concurrency));
    let watched = bench.watched();
    let memory = Memory::of(
        bench.max_concurrency,
        &rss_task_api,
        &rss_daprd,
        procfs::status_kib(watched.task_api, "VmHWM"),
        procfs::status_kib(watched.daprd, "VmHWM"),
    );
    let all: Vec<_> = deliveries.values().flatten().cloned().collect();
    let events = Events {
        overall: DeliverySummary::of(&all),
        per_concurrency: deliveries
            .iter()
            .map(|(c, d)| (*c, DeliverySummary::of(d)))
            .collect(),
    };
    let errors = results
        .iter()
        .map(|r| r.task_api.errors + r.plain.errors)
        .sum();
    let targets = report::targets(&results, &memory, &events, errors);
    Ok(BrokerReport {
        broker: broker_name(broker),
        scenarios: results,
        memory,
        events,
        targets,
        notes: bench.notes,
    })
}

/// Seconds since the epoch, for the results file.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
