//! `observe`: what tracing and metrics cost. GetTask and CreateTask through task-api (16 in
//! flight by default), on Redis for state and broker, in four configurations, each on a system
//! of its own:
//!
//! - `off`: the apps without METRICS_PORT and without OTEL_* variables, daprd exporting no
//!   spans (as every other mode runs them);
//! - `metrics`: METRICS_PORT set, and a Prometheus scraping both apps and both sidecars every
//!   second;
//! - `traces+metrics`: also both apps' spans over OTLP/gRPC to a Jaeger, and both sidecars' spans
//!   to the same Jaeger, every request traced, as `scripts/run --observe` runs them;
//! - `traces 10%+metrics`: the same with the sidecars sampling one request in ten
//!   ([`SAMPLING_RATE`], the production overlay's `samplingRate`) and the apps sampling calls
//!   that arrive without a decision at the same rate (`parentbased_traceidratio`).
//!
//! The four systems are started once and kept running; in each round every configuration
//! takes its turn at each request, one after the other, starting one configuration further on
//! each round. A configuration's ratio to `off` is taken within a round, from runs a minute
//! apart, so that the machine's drift (on a shared host, its speed moves by tens of percent over
//! minutes) lands on both sides of the ratio instead of on one configuration. A configuration's
//! cost is the median of its per-round ratios. Between turns the exporters get [`QUIET`] to send
//! what they hold, so no configuration pays for the one before it. What was exported is checked
//! to have arrived ([`crate::exports`]).
//!
//! Runs a minute apart still differ by several percent on such a host, more than the cost to be
//! shown. So the rounds are followed by as many rounds side by side: each configuration loaded at
//! the same time as `off`, both at the same concurrency, for the same seconds, so whatever the
//! machine does in those seconds it does to both. Two figures come of it per round: the ratio of
//! the two systems' rates, and the ratio of their CPU per request, counted over every process of
//! each system (apps, sidecars, servers and its own Jaeger and Prometheus). The first charges
//! half of the backends' CPU to `off`, as they take it from both systems alike; the second
//! charges all of it to the configuration that has them, and on a machine both systems keep
//! busy, CPU per request is what throughput is made of.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use devstack::{ComponentSet, Jaeger, LogSink};

use crate::{
    args::{Parsed, UsageError, number, seconds},
    backlog::EventBroker,
    bench::WORKERS_PER_CONNECTION,
    error::{Result, setup},
    exports::{self, Backends, Observed},
    load::{self, Pools, Scenario, Shared, Target, Watched, Worker},
    observe_report::{self, ConfigRun, PairRun, RequestRun, SystemSeen},
    ops::TaskClient,
    procfs,
    report::{Measurement, RunCost},
    system::{Otlp, System, Telemetry},
};

/// The requests measured, in this order on each system.
pub const REQUESTS: [Scenario; 2] = [Scenario::Get, Scenario::Create];
/// Callers creating the GetTask pool (not measured).
const POOL_CONCURRENCY: usize = 16;
/// Longest wait for a run's events to be handled before the next run starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The pause after each turn: longer than the apps' and sidecars' batch span exporters wait
/// before sending what they hold (5 s), so the spans of one turn reach Jaeger before the next.
const QUIET: Duration = Duration::from_secs(6);
/// What Prometheus scrapes: both apps and both sidecars.
const SCRAPE_TARGETS: usize = 4;

fn say(line: &str) {
    eprintln!("==> {line}");
}

#[derive(Debug, Clone)]
pub struct ObserveArgs {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub rounds: usize,
    /// Tasks created up front for GetTask to read.
    pub get_pool: usize,
    pub out: PathBuf,
    pub smoke: bool,
}

impl ObserveArgs {
    fn new(smoke: bool) -> Self {
        Self {
            concurrency: 16,
            warmup: Duration::from_millis(if smoke { 500 } else { 1000 }),
            duration: Duration::from_secs(if smoke { 2 } else { 10 }),
            rounds: if smoke { 1 } else { 3 },
            get_pool: if smoke { 100 } else { 1000 },
            out: PathBuf::from("target/bench/observe.json"),
            smoke,
        }
    }
}

/// The options of `observe`; `--smoke` changes the defaults, explicit options still win.
pub fn parse(options: Vec<(String, Option<String>)>) -> std::result::Result<Parsed, UsageError> {
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut args = ObserveArgs::new(smoke);
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--concurrency" => args.concurrency = number(&name, &value, 1, 1024)?,
            "--duration-secs" => {
                args.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            "--warmup-secs" => args.warmup = seconds(&name, &value)?,
            "--rounds" => args.rounds = number(&name, &value, 1, 20)?,
            "--get-pool" => args.get_pool = number(&name, &value, 1, 100_000)?,
            "--out" => args.out = PathBuf::from(value),
            _ => return Err(format!("unknown option {name:?} for observe").into()),
        }
    }
    Ok(Parsed::Observe(args))
}

/// What the apps and their sidecars export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    Off,
    Metrics,
    TracesAndMetrics,
    SampledTracesAndMetrics,
}

/// The share of requests `traces 10%+metrics` traces: a production setting, where tracing every
/// request would cost more than it shows.
pub const SAMPLING_RATE: f64 = 0.1;

impl Config {
    /// The first round's order; `off` is the reference the others are divided by.
    pub const ALL: [Config; 4] = [
        Config::Off,
        Config::Metrics,
        Config::TracesAndMetrics,
        Config::SampledTracesAndMetrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Off => "off",
            Config::Metrics => "metrics",
            Config::TracesAndMetrics => "traces+metrics",
            Config::SampledTracesAndMetrics => "traces 10%+metrics",
        }
    }

    fn metrics(self) -> bool {
        self != Config::Off
    }

    fn traces(self) -> bool {
        matches!(
            self,
            Config::TracesAndMetrics | Config::SampledTracesAndMetrics
        )
    }

    fn sampling_rate(self) -> Option<f64> {
        (self == Config::SampledTracesAndMetrics).then_some(SAMPLING_RATE)
    }
}

/// Round `round`'s order (from 0): the configurations in turn, starting one further each
/// round, so that none always runs first or last.
pub fn order(round: usize) -> [Config; 4] {
    let mut order = Config::ALL;
    order.rotate_left(round % Config::ALL.len());
    order
}

/// A configuration's system: Jaeger first (daprd is told where it is when the stack starts),
/// then the servers and both apps, then Prometheus (told the apps' and sidecars' metrics ports).
async fn start(config: Config) -> Result<(System, Backends)> {
    let mut backends = Backends::default();
    if config.traces() {
        backends.jaeger = Some(Jaeger::start(LogSink::Capture).await?);
    }
    let telemetry = Telemetry {
        metrics: config.metrics(),
        otlp: backends.jaeger.as_ref().map(|jaeger| Otlp {
            endpoint: jaeger.otlp_grpc_endpoint(),
            address: jaeger.otlp_grpc_address(),
        }),
        sampling_rate: config.sampling_rate(),
    };
    let system = System::start_with(ComponentSet::Redis, None, &telemetry).await?;
    if config.metrics() {
        backends.scrape(&system).await?;
    }
    Ok((system, backends))
}

/// The running system, as a configuration's runs use it.
struct Context<'a> {
    args: &'a ObserveArgs,
    clients: Vec<TaskClient>,
    broker: EventBroker,
    watched: Watched,
    get_ids: Arc<Vec<String>>,
    /// Calls task-api answered successfully so far: what its scraped request count must reach.
    served: u64,
}

impl<'a> Context<'a> {
    /// Connects to task-api and creates the tasks GetTask reads.
    async fn prepare(args: &'a ObserveArgs, system: &mut System) -> Result<Self> {
        let connections = args.concurrency.div_ceil(WORKERS_PER_CONNECTION);
        let clients = system.task_clients(connections).await?;
        let get_ids = load::create_tasks(&clients, args.get_pool, POOL_CONCURRENCY)
            .await
            .map_err(|e| setup(format!("creating the GetTask pool: {e}")))?;
        if get_ids.is_empty() {
            return Err(setup("the GetTask pool is empty"));
        }
        let context = Self {
            args,
            clients,
            broker: system.event_broker()?,
            watched: Watched {
                task_api: system.task_api.pid(),
                daprd: system.task_api.sidecar_pid(),
            },
            served: get_ids.len() as u64,
            get_ids: Arc::new(get_ids),
        };
        context.settle().await?;
        Ok(context)
    }

    /// Waits until task-api has handled every event published so far; how long that took.
    async fn settle(&self) -> Result<Duration> {
        self.broker
            .wait_drained(SETTLE_TIMEOUT)
            .await?
            .ok_or_else(|| {
                setup(format!(
                    "task events were still being handled after {SETTLE_TIMEOUT:?}"
                ))
            })
    }

    /// One run of `scenario`; the CPU (task-api's, its daprd's, the backends', the whole
    /// system's) counts from its start until its events were handled, so the spans and metrics
    /// of that work count too.
    async fn run(&mut self, scenario: Scenario, pids: &Pids) -> Result<RequestRun> {
        let c = self.args.concurrency;
        let pools = Pools {
            get_ids: self.get_ids.clone(),
            ..Pools::default()
        };
        let shared = Shared::new(pools, 0);
        let workers = (0..c)
            .map(|i| {
                let target = Target::TaskApi(self.clients[i / WORKERS_PER_CONNECTION].clone());
                Worker::new(i, c, scenario, target, shared.clone())
            })
            .collect();
        let backends_before = ticks(&pids.backends);
        let system_before = ticks(&pids.system);
        let (warmup, duration) = (self.args.warmup, self.args.duration);
        let result = load::run(workers, shared, warmup, duration, self.watched).await;
        let drained = self.settle().await?;
        let backends_cpu = cpu_since(&pids.backends, &backends_before);
        let system_cpu = cpu_since(&pids.system, &system_before);
        let per_request = |cpu: f64| cpu * 1_000.0 / result.succeeded as f64;
        let cpu = RunCost {
            seconds: self.watched.cpu_since(result.start_ticks),
            drained_after_secs: Some(drained.as_secs_f64()),
            store_ops: None,
        };
        self.served += result.succeeded;
        Ok(RequestRun {
            request: scenario.name(),
            backends_cpu_ms_per_req: (!pids.backends.is_empty() && result.succeeded > 0)
                .then(|| per_request(backends_cpu)),
            system_cpu_ms_per_req: (result.succeeded > 0).then(|| per_request(system_cpu)),
            figures: Measurement::of(&result, scenario, cpu),
        })
    }
}

/// The processes whose CPU a run counts.
struct Pids {
    /// Jaeger and Prometheus, when the configuration has them.
    backends: Vec<u32>,
    /// Every process of the system, the backends included.
    system: Vec<u32>,
}

/// CPU ticks of each of `pids` so far; 0 for one that cannot be read (it has exited, which
/// the checks after the runs report).
fn ticks(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|pid| procfs::cpu_ticks(*pid).unwrap_or(0))
        .collect()
}

/// CPU seconds `pids` used together since `before` (from [`ticks`]).
fn cpu_since(pids: &[u32], before: &[u64]) -> f64 {
    let after = ticks(pids);
    let used: u64 = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    used as f64 / procfs::clock_ticks_per_second()
}

/// A configuration's system, started once and measured in every round.
struct Measured<'a> {
    config: Config,
    system: System,
    backends: Backends,
    pids: Pids,
    context: Context<'a>,
    observed: Observed,
}

impl<'a> Measured<'a> {
    /// Starts `config`'s system, checks that Prometheus scrapes it before any load (so every
    /// run pays for scraping) and creates the GetTask pool.
    async fn start(args: &'a ObserveArgs, config: Config) -> Result<Self> {
        say(&format!("{}: starting its system", config.name()));
        let (mut system, mut backends) = start(config).await?;
        let mut observed = Observed::default();
        let prepared = async {
            if let Some(prometheus) = &backends.prometheus {
                exports::scraping(prometheus, SCRAPE_TARGETS, &mut observed).await?;
            }
            Context::prepare(args, &mut system).await
        }
        .await;
        match prepared {
            Ok(context) => {
                let backends_pids = backends.pids();
                let mut system_pids = system.pids();
                system_pids.extend(&backends_pids);
                Ok(Self {
                    config,
                    system,
                    backends,
                    pids: Pids {
                        backends: backends_pids,
                        system: system_pids,
                    },
                    context,
                    observed,
                })
            }
            Err(e) => {
                eprint!("{}{}", system.log_tails(30), backends.log_tails(30));
                stop(system, backends);
                Err(e)
            }
        }
    }

    /// One turn: `scenario` on this system, then the pause that lets its spans go out.
    async fn turn(&mut self, scenario: Scenario) -> Result<RequestRun> {
        let run = self.context.run(scenario, &self.pids).await?;
        say(&observe_report::run_line(self.config, &run));
        tokio::time::sleep(QUIET).await;
        Ok(run)
    }

    /// The proof that what was exported over every round arrived.
    async fn check(&mut self) -> Result<Observed> {
        self.system.check_running()?;
        let mut observed = std::mem::take(&mut self.observed);
        if let Some(prometheus) = &self.backends.prometheus {
            exports::scraping(prometheus, SCRAPE_TARGETS, &mut observed).await?;
            exports::counted(prometheus, &REQUESTS, self.context.served, &mut observed).await?;
        }
        if let Some(jaeger) = &self.backends.jaeger {
            exports::traced(jaeger, &REQUESTS, &mut observed).await?;
            exports::none_dropped(&self.system)?;
        }
        Ok(observed)
    }

    fn log_tails(&mut self) -> String {
        format!(
            "{}{}",
            self.system.log_tails(30),
            self.backends.log_tails(30)
        )
    }

    fn stop(self) {
        stop(self.system, self.backends);
    }
}

/// The apps first; the backends after them, as the apps send their last spans on the way out.
fn stop(mut system: System, backends: Backends) {
    system.stop();
    drop(backends);
}

/// Every round on the systems `measured`: each request, each configuration in the round's
/// order.
async fn rounds(args: &ObserveArgs, measured: &mut [Measured<'_>]) -> Result<Vec<ConfigRun>> {
    let mut runs: Vec<ConfigRun> = Vec::new();
    for round in 0..args.rounds {
        for scenario in REQUESTS {
            for (position, config) in order(round).into_iter().enumerate() {
                say(&format!(
                    "round {} of {}, {}: {}",
                    round + 1,
                    args.rounds,
                    config.name(),
                    scenario.name()
                ));
                let system = measured
                    .iter_mut()
                    .find(|m| m.config == config)
                    .ok_or_else(|| setup(format!("{} has no system", config.name())))?;
                let run = match system.turn(scenario).await {
                    Ok(run) => run,
                    Err(e) => {
                        eprint!("{}", system.log_tails());
                        return Err(e);
                    }
                };
                let slot = runs
                    .iter()
                    .position(|r| r.round == round + 1 && r.configuration == config.name());
                match slot {
                    Some(i) => runs[i].requests.push(run),
                    None => runs.push(ConfigRun {
                        configuration: config.name(),
                        round: round + 1,
                        position: position + 1,
                        requests: vec![run],
                    }),
                }
            }
        }
    }
    Ok(runs)
}

/// Round `round`'s order of the configurations run beside `off` (from 0), starting one
/// further each round.
pub fn side_by_side_order(round: usize) -> [Config; 3] {
    let mut order = [
        Config::Metrics,
        Config::TracesAndMetrics,
        Config::SampledTracesAndMetrics,
    ];
    let turns = order.len();
    order.rotate_left(round % turns);
    order
}

/// One turn side by side: `scenario` on `off`'s system and on `with`'s at the same time, then
/// the pause that lets the spans go out.
async fn side_by_side(
    off: &mut Measured<'_>,
    with: &mut Measured<'_>,
    scenario: Scenario,
) -> Result<(RequestRun, RequestRun)> {
    let (off_run, with_run) = tokio::join!(
        off.context.run(scenario, &off.pids),
        with.context.run(scenario, &with.pids)
    );
    let runs = match (off_run, with_run) {
        (Ok(off_run), Ok(with_run)) => (off_run, with_run),
        (Err(e), _) => {
            eprint!("{}", off.log_tails());
            return Err(e);
        }
        (_, Err(e)) => {
            eprint!("{}", with.log_tails());
            return Err(e);
        }
    };
    say(&format!(
        "beside {}",
        observe_report::run_line(with.config, &runs.1)
    ));
    say(&format!(
        "beside {}",
        observe_report::run_line(off.config, &runs.0)
    ));
    tokio::time::sleep(QUIET).await;
    Ok(runs)
}

/// As many rounds again, each configuration side by side with `off`: each request, each
/// configuration in the round's order.
async fn side_by_side_rounds(
    args: &ObserveArgs,
    measured: &mut [Measured<'_>],
) -> Result<Vec<PairRun>> {
    let configs: Vec<Config> = measured.iter().map(|m| m.config).collect();
    let position = |config: Config| {
        configs
            .iter()
            .position(|c| *c == config)
            .ok_or_else(|| setup(format!("{} has no system", config.name())))
    };
    let off = position(Config::Off)?;
    let mut pairs = Vec::new();
    for round in 0..args.rounds {
        for scenario in REQUESTS {
            for config in side_by_side_order(round) {
                say(&format!(
                    "side by side, round {} of {}, {} beside off: {}",
                    round + 1,
                    args.rounds,
                    config.name(),
                    scenario.name()
                ));
                let with = position(config)?;
                let (low, high) = measured.split_at_mut(off.max(with));
                let (off_system, with_system) = if off < with {
                    (&mut low[off], &mut high[0])
                } else {
                    (&mut high[0], &mut low[with])
                };
                let (off_run, with_run) = side_by_side(off_system, with_system, scenario).await?;
                pairs.push(PairRun {
                    configuration: config.name(),
                    round: round + 1,
                    request: scenario.name(),
                    off: off_run,
                    with: with_run,
                });
            }
        }
    }
    Ok(pairs)
}

/// What [`measure_all`] measured.
pub struct Measurements {
    pub runs: Vec<ConfigRun>,
    pub pairs: Vec<PairRun>,
    pub seen: Vec<SystemSeen>,
}

/// Starts every configuration's system, measures the rounds (one at a time, then side by side),
/// checks the exports.
async fn measure_all(args: &ObserveArgs) -> Result<Measurements> {
    let mut measured = Vec::new();
    for config in Config::ALL {
        match Measured::start(args, config).await {
            Ok(m) => measured.push(m),
            Err(e) => {
                measured.into_iter().for_each(Measured::stop);
                return Err(e);
            }
        }
    }
    let outcome = async {
        let runs = rounds(args, &mut measured).await?;
        let pairs = side_by_side_rounds(args, &mut measured).await?;
        let mut seen = Vec::new();
        for m in &mut measured {
            match m.check().await {
                Ok(observed) => seen.push(SystemSeen {
                    configuration: m.config.name(),
                    observed,
                }),
                Err(e) => {
                    eprint!("{}", m.log_tails());
                    return Err(e);
                }
            }
        }
        Ok(Measurements { runs, pairs, seen })
    }
    .await;
    measured.into_iter().for_each(Measured::stop);
    outcome
}

/// `observe`: every round, every configuration; the table, the targets and the JSON.
pub async fn main(args: &ObserveArgs) -> ExitCode {
    let started = Instant::now();
    let started_at_unix = crate::bench::unix_now();
    let measured = match measure_all(args).await {
        Ok(measured) => measured,
        Err(e) => {
            eprintln!("task-api-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let report = observe_report::Report::of(args, measured, started_at_unix, started.elapsed());
    report.print(args);
    if let Err(e) = crate::write_json(&args.out, &report) {
        eprintln!("task-api-bench: {e}");
        return ExitCode::from(2);
    }
    println!(
        "\n{} cores, shared by the load client, task-api, notification-service, both daprd, the servers, Jaeger and Prometheus. Results: {}",
        procfs::cores(),
        args.out.display()
    );
    if report.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_configuration_further() {
        use Config::*;
        assert_eq!(
            order(0),
            [Off, Metrics, TracesAndMetrics, SampledTracesAndMetrics]
        );
        assert_eq!(
            order(1),
            [Metrics, TracesAndMetrics, SampledTracesAndMetrics, Off]
        );
        assert_eq!(order(3)[0], SampledTracesAndMetrics);
        assert_eq!(order(4), order(0));
        assert_eq!(
            side_by_side_order(1),
            [TracesAndMetrics, SampledTracesAndMetrics, Metrics]
        );
        assert_eq!(side_by_side_order(3), side_by_side_order(0));
    }

    #[test]
    fn options_and_smoke() {
        let parse = |args: &[&str]| {
            let options = crate::args::options(args.iter().map(|a| a.to_string()))?;
            match parse(options)? {
                Parsed::Observe(args) => Ok(args),
                _ => Err(UsageError::from("not observe")),
            }
        };
        let full = parse(&[]).unwrap();
        assert_eq!((full.concurrency, full.rounds), (16, 3));
        assert_eq!(full.duration, Duration::from_secs(10));
        let smoke = parse(&["--smoke", "--rounds=2"]).unwrap();
        assert_eq!((smoke.rounds, smoke.concurrency), (2, 16));
        assert!(smoke.duration < full.duration);
        assert!(parse(&["--rounds", "0"]).is_err());
        assert!(parse(&["--brokers", "kafka"]).is_err());
    }
}
