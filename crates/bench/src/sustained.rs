//! `sustained`: the highest write rate task-api holds while every completion is notified.
//!
//! Open-loop load: writes are sent at a fixed rate whatever the answers do (a call is timed
//! from when it was due, so a slow answer cannot slow the load down), half CreateTask, half
//! UpdateTaskStatus completing a pending task. A ramp of rising rates, a few seconds each, finds
//! the highest rate task-api keeps up with: every call answered in time, and what was waiting
//! when the step ended handled within the target latency. Then a fraction of that
//! rate (80% by default) is held for 60 s, task-api's memory sampled throughout; when the load
//! stops, the time until nothing is left on its four topics is measured, and then the
//! notification of every completion of the hold is looked up: its delay after the call returned,
//! and whether it arrived exactly once.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use devstack::ComponentSet;
use serde::Serialize;

use crate::{
    args::{Parsed, UsageError, number, parse_brokers_list},
    backlog::EventBroker,
    brokers::broker_name,
    drive::Pool,
    error::Result,
    events::{self, Delivery, DeliverySummary},
    load::Sample,
    ops::{self, Credential, Plain, TaskClient},
    procfs,
    report::Target,
    system::{self, System},
};

/// Calls waiting for an answer at most; a call due while this many wait is not sent, and the
/// rate counts as not kept up with.
const MAX_IN_FLIGHT: usize = 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 connections the load is spread over.
const CONNECTIONS: usize = 4;
/// Longest wait for the events of the ramp to be handled before the hold.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait, once the hold's load stops, for nothing to be left on task-api's topics.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a notification once the backlog is handled.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The hold's notification delays are also given per window of this length.
const WINDOW: Duration = Duration::from_secs(10);
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Completions of each ramp step whose notification is looked up when the step ends.
const RAMP_LOOKUPS: usize = 20;
/// The most task-api may leave to drain once the load stops.
const DRAIN_TARGET_SECS: f64 = 2.0;
const RSS_TARGET_MIB: f64 = 30.0;

fn say(line: &str) {
    eprintln!("==> {line}");
}

#[derive(Debug, Clone)]
pub struct SustainedArgs {
    pub brokers: Vec<ComponentSet>,
    /// The ramp: from `start_rate` writes/s, times `growth` each step of `step`, up to
    /// `max_rate`.
    pub start_rate: f64,
    pub growth: f64,
    pub max_rate: f64,
    pub step: Duration,
    /// The hold: `fraction` of the highest rate kept up with, for `hold`.
    pub fraction: f64,
    pub hold: Duration,
    /// Hold at this rate, without a ramp.
    pub fixed_rate: Option<f64>,
    pub out: PathBuf,
}

impl SustainedArgs {
    fn new(smoke: bool) -> Self {
        Self {
            brokers: if smoke {
                vec![ComponentSet::Redis]
            } else {
                vec![ComponentSet::Redis, ComponentSet::Kafka]
            },
            start_rate: if smoke { 50.0 } else { 100.0 },
            growth: if smoke { 2.0 } else { 1.25 },
            max_rate: if smoke { 200.0 } else { 5_000.0 },
            step: Duration::from_secs(if smoke { 1 } else { 5 }),
            fraction: 0.8,
            hold: Duration::from_secs(if smoke { 3 } else { 60 }),
            fixed_rate: None,
            out: PathBuf::from("target/bench/sustained.json"),
        }
    }

    /// The ramp's rates, lowest first.
    fn rates(&self) -> Vec<f64> {
        let mut rates = Vec::new();
        let mut rate = self.start_rate;
        while rate <= self.max_rate && rates.len() < 100 {
            rates.push(rate.round());
            rate *= self.growth;
        }
        rates
    }
}

/// The options of `sustained`; `--smoke` changes the defaults, explicit options still win.
pub fn parse(options: Vec<(String, Option<String>)>) -> std::result::Result<Parsed, UsageError> {
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut args = SustainedArgs::new(smoke);
    let rate = |name: &str, value: &str| number(name, value, 1, 100_000).map(|n| n as f64);
    let secs = |name: &str, value: &str| {
        number(name, value, 1, 3600).map(|n| Duration::from_secs(n as u64))
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--brokers" | "--broker" => args.brokers = parse_brokers_list(&value)?,
            "--start-rate" => args.start_rate = rate(&name, &value)?,
            "--max-rate" => args.max_rate = rate(&name, &value)?,
            "--rate" => args.fixed_rate = Some(rate(&name, &value)?),
            "--step-secs" => args.step = secs(&name, &value)?,
            "--hold-secs" => args.hold = secs(&name, &value)?,
            "--out" => args.out = PathBuf::from(value),
            _ => return Err(format!("unknown option {name:?} for sustained").into()),
        }
    }
    if args.max_rate < args.start_rate {
        return Err("--max-rate is below --start-rate".into());
    }
    Ok(Parsed::Sustained(args))
}

/// What one phase (a ramp step or the hold) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Writes per second sent for.
    pub rate: f64,
    pub secs: f64,
    pub due: u64,
    /// Not sent: MAX_IN_FLIGHT calls were already waiting, or no pending task was left.
    pub not_sent: u64,
    pub succeeded: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Successful writes per second, over the time from the first call due to the last answer.
    pub achieved_rate: f64,
    /// Call latency from when the call was due.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Events task-api still had to handle on its topics when the last call returned.
    pub events_left: Option<u64>,
    /// Ramp steps: how long after the last call returned nothing was left on the topics; `None`
    /// when something still was after the latency target.
    pub none_left_after_secs: Option<f64>,
    /// Ramp steps: completions old enough to have been notified within the latency target
    /// when the step ended, looked up then, and how many of them were not (or late).
    pub notifications_checked: usize,
    pub notifications_late: usize,
    /// Whether task-api kept up with the rate (see [`Phase::kept_up`]).
    pub kept_up: bool,
    #[serde(skip)]
    completions: Vec<Sample>,
}

impl Phase {
    /// Every call sent and answered without error, p99 under a second, at least 95% of the rate
    /// achieved, every completion looked up notified within the latency target, and nothing left
    /// on the topics within the latency target (`backlog_secs`) of the step's end.
    ///
    /// The events' drain is timed rather than the events waiting counted: on Kafka the count is
    /// the consumer groups' lag, and their committed offsets trail what was handled by up to a
    /// second (the consumer commits once a second), so at a few hundred writes a second a count
    /// taken at the end cannot tell handled events from a backlog.
    fn kept_up(&self, backlog_secs: f64) -> bool {
        let events_ok = self
            .none_left_after_secs
            .is_some_and(|secs| secs <= backlog_secs);
        self.errors == 0
            && self.not_sent == 0
            && self.p99_ms.is_some_and(|p99| p99 < 1_000.0)
            && self.achieved_rate >= 0.95 * self.rate
            && self.notifications_late == 0
            && events_ok
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    completions: Vec<Sample>,
}

/// One write, due at `due`: a create, or the completion of `pending`.
async fn write(
    mut client: TaskClient,
    pending: Option<String>,
    due: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let outcome = match &pending {
        None => tokio::time::timeout(CALL_TIMEOUT, ops::create(&mut client))
            .await
            .map(|r| r.map(|_| ())),
        Some(id) => tokio::time::timeout(CALL_TIMEOUT, ops::complete(&mut client, id)).await,
    };
    let returned_at = SystemTime::now();
    let latency = due.elapsed();
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(Ok(())) => {
            tally.latencies_us.push(latency.as_micros() as u64);
            if let Some(task_id) = pending {
                tally.completions.push(Sample {
                    task_id,
                    returned_at,
                });
            }
        }
        Ok(Err(message)) => {
            tally.errors += 1;
            tally.first_error.get_or_insert(message.to_string());
        }
        Err(_) => {
            tally.errors += 1;
            tally
                .first_error
                .get_or_insert(format!("no answer within {CALL_TIMEOUT:?}"));
        }
    }
}

/// Sends `rate` writes a second for `duration`, alternately a create and a completion; bounded
/// by the number of writes due.
async fn open_loop(clients: &[TaskClient], rate: f64, duration: Duration, pending: &Pool) -> Phase {
    let due_total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut calls = tokio::task::JoinSet::new();
    let mut not_sent = 0;
    let start = Instant::now();
    for n in 0..due_total {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        while calls.try_join_next().is_some() {}
        let completion = if n % 2 == 1 {
            pending.take().map(Some)
        } else {
            Some(None)
        };
        let Some(task) = completion.filter(|_| in_flight.load(Ordering::Relaxed) < MAX_IN_FLIGHT)
        else {
            not_sent += 1;
            continue;
        };
        let client = clients[n as usize % clients.len()].clone();
        let (tally, in_flight) = (tally.clone(), in_flight.clone());
        in_flight.fetch_add(1, Ordering::Relaxed);
        calls.spawn(async move {
            write(client, task, due, tally).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while calls.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    tally.latencies_us.sort_unstable();
    let percentile = |q: f64| {
        let n = tally.latencies_us.len();
        (n > 0).then(|| {
            tally.latencies_us[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1_000.0
        })
    };
    Phase {
        rate,
        secs,
        due: due_total,
        not_sent,
        succeeded: tally.latencies_us.len() as u64,
        errors: tally.errors,
        first_error: tally.first_error.take(),
        achieved_rate: tally.latencies_us.len() as f64 / secs.max(0.001),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        events_left: None,
        none_left_after_secs: None,
        notifications_checked: 0,
        notifications_late: 0,
        kept_up: false,
        completions: tally.completions,
    }
}

/// task-api's VmRSS every 100 ms until `done` is set; the samples (KiB).
fn sample_rss(pid: u32, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        // Bounded by the phase it samples: `done` is set when the phase ends.
        while !done.load(Ordering::Relaxed) {
            if let Some(kib) = procfs::status_kib(pid, "VmRSS") {
                samples.push(kib);
            }
            tokio::time::sleep(RSS_EVERY).await;
        }
        samples
    })
}

/// The running system, as the sustained run uses it.
struct Context {
    clients: Vec<TaskClient>,
    writer: Plain,
    broker: EventBroker,
    notifications: (tonic::transport::Channel, Credential),
    task_api_pid: u32,
    /// How many seconds' worth of events may wait at the end of a ramp step: the notification
    /// latency target.
    backlog_secs: f64,
}

impl Context {
    async fn connect(system: &mut System, broker: ComponentSet) -> Result<Self> {
        let clients = system.task_clients(CONNECTIONS).await?;
        let sidecar =
            system::channel(system.task_api.sidecar.grpc_port(), "task-api's daprd").await?;
        Ok(Self {
            clients,
            writer: Plain::new(sidecar, ops::new_task()?),
            broker: system.event_broker()?,
            notifications: (
                system::channel(system.notifications.port, "notification-service").await?,
                Credential::new("dapr-api-token", system.stack.app_token())?,
            ),
            task_api_pid: system.task_api.pid(),
            backlog_secs: latency_target_ms(broker) / 1_000.0,
        })
    }

    /// A pool of `count` pending tasks, written straight to the state store as CreateTask
    /// stores them (see the main benchmark).
    async fn pending(&mut self, count: usize) -> Result<Pool> {
        say(&format!("writing {count} pending tasks"));
        let pool = Pool::default();
        for id in self.writer.write_pending_tasks(count).await? {
            pool.put(id);
        }
        Ok(pool)
    }

    async fn phase(&mut self, rate: f64, duration: Duration, pending: &Pool) -> Result<Phase> {
        let mut phase = open_loop(&self.clients, rate, duration, pending).await;
        let stopped = Instant::now();
        phase.events_left = Some(self.broker.left().await?);
        let target = Duration::from_secs_f64(self.backlog_secs);
        phase.none_left_after_secs = self
            .broker
            .wait_drained(target)
            .await?
            .map(|_| stopped.elapsed().as_secs_f64())
            .filter(|secs| *secs <= self.backlog_secs);
        (phase.notifications_checked, phase.notifications_late) = self.late(&phase).await;
        phase.kept_up = phase.kept_up(self.backlog_secs);
        Ok(phase)
    }

    /// Looks up, once each, up to [`RAMP_LOOKUPS`] of the phase's completions that returned at
    /// least the latency target ago, spread over the phase: `(looked up, not notified within the
    /// target)`. The events of a rate task-api does not keep up with queue up, and their
    /// notifications come later and later; the backlog alone does not show it within a step on
    /// Kafka, whose committed offsets trail what was handled by up to a second.
    async fn late(&self, phase: &Phase) -> (usize, usize) {
        let target = Duration::from_secs_f64(self.backlog_secs);
        let now = SystemTime::now();
        let old_enough: Vec<&Sample> = phase
            .completions
            .iter()
            .filter(|s| now.duration_since(s.returned_at).unwrap_or_default() >= target)
            .collect();
        let every = old_enough.len().div_ceil(RAMP_LOOKUPS).max(1);
        let samples: Vec<Sample> = old_enough.into_iter().step_by(every).cloned().collect();
        let (channel, credential) = self.notifications.clone();
        let found = events::check(channel, credential, samples, Duration::ZERO).await;
        let late = found
            .iter()
            .filter(
                |(_, d)| !matches!(d, Delivery::Once(ms) if *ms <= target.as_secs_f64() * 1_000.0),
            )
            .count();
        (found.len(), late)
    }

    async fn settle(&self, timeout: Duration) -> Result<Option<Duration>> {
        Ok(self.broker.wait_drained(timeout).await?)
    }
}

/// The notification latency target: under a second on Redis streams, two on Kafka.
fn latency_target_ms(broker: ComponentSet) -> f64 {
    match broker {
        ComponentSet::Kafka => 2_000.0,
        _ => 1_000.0,
    }
}

/// Pending tasks for writes at `rate` for `duration` (half of them completions), with a margin.
fn completions_for(rate: f64, duration: Duration) -> usize {
    (rate * duration.as_secs_f64() / 2.0 * 1.05) as usize + 50
}

/// Steps up the rate until task-api no longer keeps up; every step run.
async fn ramp(ctx: &mut Context, args: &SustainedArgs) -> Result<Vec<Phase>> {
    let rates = args.rates();
    let need = rates.iter().map(|r| completions_for(*r, args.step)).sum();
    let pending = ctx.pending(need).await?;
    ctx.settle(SETTLE_TIMEOUT).await?;
    let mut steps = Vec::new();
    for rate in rates {
        let step = ctx.phase(rate, args.step, &pending).await?;
        say(&format!(
            "ramp: {rate:.0} writes/s for {} s: {:.0} achieved, p99 {} ms, {} events waiting, none left after {}, {} of {} notifications late, {}",
            args.step.as_secs(),
            step.achieved_rate,
            step.p99_ms
                .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            step.events_left.unwrap_or_default(),
            step.none_left_after_secs.map_or_else(
                || format!("more than {:.0} s", ctx.backlog_secs),
                |s| format!("{s:.1} s")
            ),
            step.notifications_late,
            step.notifications_checked,
            if step.kept_up {
                "kept up"
            } else {
                "fell behind"
            }
        ));
        let kept_up = step.kept_up;
        steps.push(step);
        if !kept_up {
            break;
        }
    }
    Ok(steps)
}

/// The notification delays of the hold, per window of [`WINDOW`] by when the call returned.
fn windows(
    hold_started: SystemTime,
    completions: &[Sample],
    deliveries: &[(String, Delivery)],
) -> Vec<DeliverySummary> {
    let mut windows: Vec<Vec<(String, Delivery)>> = Vec::new();
    for (sample, delivery) in completions.iter().zip(deliveries) {
        let after = sample
            .returned_at
            .duration_since(hold_started)
            .unwrap_or_default();
        let at = (after.as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        if windows.len() <= at {
            windows.resize(at + 1, Vec::new());
        }
        windows[at].push(delivery.clone());
    }
    windows.iter().map(|w| DeliverySummary::of(w)).collect()
}

/// What the sustained run found on one broker.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerRun {
    pub broker: &'static str,
    pub ramp: Vec<Phase>,
    /// The highest ramp rate task-api kept up with (writes/s); `None` when it kept up with none
    /// or the rate was given.
    pub highest_kept_up: Option<f64>,
    /// It kept up with the ramp's last rate (--max-rate): the highest is at least that.
    pub reached_max_rate: bool,
    pub hold: Phase,
    /// Notification delays of every completion of the hold, after its call returned.
    pub notifications: DeliverySummary,
    pub notifications_per_window: Vec<DeliverySummary>,
    pub window_secs: u64,
    /// Events waiting when the last call of the hold returned, and how long until none was left.
    pub events_left_at_stop: Option<u64>,
    pub drained_after_secs: Option<f64>,
    pub task_api_rss_max_mib: Option<f64>,
    pub task_api_rss_mean_mib: Option<f64>,
    pub targets: Vec<Target>,
}

/// Holds `rate` for the set time, then times the drain and every completion's notification.
async fn hold(
    ctx: &mut Context,
    args: &SustainedArgs,
    rate: f64,
) -> Result<(
    Phase,
    Option<f64>,
    Vec<u64>,
    Vec<(String, Delivery)>,
    SystemTime,
)> {
    let pending = ctx.pending(completions_for(rate, args.hold)).await?;
    ctx.settle(SETTLE_TIMEOUT).await?;
    say(&format!(
        "holding {rate:.0} writes/s for {} s",
        args.hold.as_secs()
    ));
    let done = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(ctx.task_api_pid, done.clone());
    let started = SystemTime::now();
    let mut phase = open_loop(&ctx.clients, rate, args.hold, &pending).await;
    let stopped = Instant::now();
    let left = ctx.broker.left().await?;
    let drained = ctx
        .settle(DRAIN_TIMEOUT)
        .await?
        .map(|_| stopped.elapsed().as_secs_f64());
    done.store(true, Ordering::Relaxed);
    let rss = rss.await.unwrap_or_default();
    phase.events_left = Some(left);
    phase.none_left_after_secs = drained;
    phase.kept_up = phase.kept_up(f64::INFINITY);
    say(&format!(
        "held {:.0} writes/s: {} events waiting at the stop, none left after {}; checking {} notifications",
        phase.achieved_rate,
        left,
        drained.map_or_else(
            || format!("more than {DRAIN_TIMEOUT:?}"),
            |s| format!("{s:.1} s")
        ),
        phase.completions.len()
    ));
    let (channel, credential) = ctx.notifications.clone();
    let deliveries = events::check(
        channel,
        credential,
        phase.completions.clone(),
        DELIVERY_TIMEOUT,
    )
    .await;
    Ok((phase, drained, rss, deliveries, started))
}

fn targets(run: &BrokerRun, broker: ComponentSet) -> Vec<Target> {
    let n = &run.notifications;
    let latency = latency_target_ms(broker);
    let target =
        |name: &str, requirement: String, actual: Option<f64>, pass: Option<bool>| Target {
            name: name.into(),
            requirement,
            actual,
            pass,
        };
    let missing = (n.lost + n.unreadable) as f64;
    vec![
        target(
            "hold kept up",
            "every write of the hold sent and answered, call p99 under 1 s, 95% of the rate achieved".into(),
            Some(run.hold.achieved_rate),
            Some(run.hold.kept_up),
        ),
        target(
            "notification p99 during the hold",
            format!("< {latency:.0} ms"),
            n.p99_ms,
            n.p99_ms.map(|p| p < latency),
        ),
        target(
            "events left after the load stops",
            format!("none after {DRAIN_TARGET_SECS:.0} s (seconds until none)"),
            run.drained_after_secs,
            Some(
                run.drained_after_secs
                    .is_some_and(|s| s <= DRAIN_TARGET_SECS),
            ),
        ),
        target(
            "lost notifications",
            "0".into(),
            Some(missing),
            (n.sampled > 0).then_some(missing == 0.0),
        ),
        target(
            "duplicated notifications",
            "0".into(),
            Some(n.duplicated as f64),
            (n.sampled > 0).then_some(n.duplicated == 0),
        ),
        target(
            "task-api RSS during the run",
            format!("max VmRSS < {RSS_TARGET_MIB:.0} MiB"),
            run.task_api_rss_max_mib,
            run.task_api_rss_max_mib.map(|m| m < RSS_TARGET_MIB),
        ),
    ]
}

/// The ramp (unless a rate is given), then the hold, on a running system.
async fn on_system(
    args: &SustainedArgs,
    system: &mut System,
    broker: ComponentSet,
) -> Result<BrokerRun> {
    let mut ctx = Context::connect(system, broker).await?;
    let (steps, rate, highest) = match args.fixed_rate {
        Some(rate) => (Vec::new(), rate, None),
        None => {
            let steps = ramp(&mut ctx, args).await?;
            let highest = steps
                .iter()
                .filter(|s| s.kept_up)
                .map(|s| s.rate)
                .reduce(f64::max);
            // Kept up with none: the hold runs at the fraction of the first step, and says so.
            let base = highest.unwrap_or(args.start_rate);
            (steps, (base * args.fraction).max(1.0).round(), highest)
        }
    };
    let (phase, drained, rss, deliveries, started) = hold(&mut ctx, args, rate).await?;
    system.check_running()?;
    let kib_to_mib = |kib: u64| kib as f64 / 1024.0;
    let mut run = BrokerRun {
        broker: broker_name(broker),
        highest_kept_up: highest,
        reached_max_rate: args.fixed_rate.is_none()
            && steps.len() == args.rates().len()
            && steps.last().is_some_and(|s| s.kept_up),
        ramp: steps,
        notifications: DeliverySummary::of(&deliveries),
        notifications_per_window: windows(started, &phase.completions, &deliveries),
        window_secs: WINDOW.as_secs(),
        events_left_at_stop: phase.events_left,
        drained_after_secs: drained,
        task_api_rss_max_mib: rss.iter().max().map(|k| kib_to_mib(*k)),
        task_api_rss_mean_mib: (!rss.is_empty())
            .then(|| kib_to_mib(rss.iter().sum::<u64>()) / rss.len() as f64),
        hold: phase,
        targets: Vec::new(),
    };
    run.targets = targets(&run, broker);
    Ok(run)
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// One row per broker.
fn table(runs: &[BrokerRun]) -> String {
    let mut out = String::from(
        "| broker | highest rate kept up with (writes/s) | held (writes/s, achieved) | call p50 / p99 ms | errors | completions | notified p50 / p99 / max ms | lost | duplicated | events waiting at the stop | none left after (s) | task-api RSS max / mean MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let (h, n) = (&run.hold, &run.notifications);
        out.push_str(&format!(
            "| {} | {} | {:.0} ({:.0}) | {} / {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {} / {} |\n",
            run.broker,
            match (run.highest_kept_up, run.reached_max_rate) {
                (Some(r), true) => format!("{r:.0} or more (the ramp's last)"),
                (Some(r), false) => format!("{r:.0}"),
                (None, _) => "-".into(),
            },
            h.rate,
            h.achieved_rate,
            ms(h.p50_ms),
            ms(h.p99_ms),
            h.errors + h.not_sent,
            n.sampled,
            ms(n.p50_ms),
            ms(n.p99_ms),
            ms(n.max_ms),
            n.lost + n.unreadable,
            n.duplicated,
            run.events_left_at_stop.map_or_else(|| "-".into(), |l| l.to_string()),
            run.drained_after_secs.map_or_else(|| "more than the wait".into(), |s| format!("{s:.1}")),
            run.task_api_rss_max_mib.map_or_else(|| "-".into(), |m| format!("{m:.1}")),
            run.task_api_rss_mean_mib.map_or_else(|| "-".into(), |m| format!("{m:.1}")),
        ));
    }
    out
}

#[derive(Serialize)]
struct ResultsFile<'a> {
    benchmark: &'static str,
    mode: &'static str,
    cores: usize,
    started_at_unix: u64,
    brokers: &'a [BrokerRun],
}

fn print(runs: &[BrokerRun]) {
    println!();
    println!("{}", table(runs));
    for run in runs {
        let p99s: Vec<String> = run
            .notifications_per_window
            .iter()
            .map(|w| ms(w.p99_ms))
            .collect();
        println!(
            "{}: notified p99 per {} s of the hold (ms): {}",
            run.broker,
            run.window_secs,
            p99s.join(", ")
        );
        if let Some(problem) = run
            .notifications
            .first_problem
            .as_ref()
            .or(run.hold.first_error.as_ref())
        {
            println!("{}: first problem: {problem}", run.broker);
        }
    }
    for run in runs {
        println!();
        print!(
            "{}",
            crate::report::targets_text(&run.targets)
                .replace("Targets", &format!("Targets on {}", run.broker))
        );
    }
}

/// `sustained` on each broker, each on a system of its own.
pub async fn main(args: &SustainedArgs) -> ExitCode {
    let started_at_unix = crate::bench::unix_now();
    let mut runs = Vec::new();
    for &broker in &args.brokers {
        say(&format!(
            "{}: starting the servers, notification-service and task-api",
            broker_name(broker)
        ));
        let outcome = match System::start(broker, None).await {
            Ok(mut system) => {
                let run = on_system(args, &mut system, broker).await;
                if run.is_err() {
                    eprint!("{}", system.log_tails(30));
                }
                system.stop();
                run
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("task-api-bench: {e}");
                return ExitCode::from(2);
            }
        }
    }
    print(&runs);
    let file = ResultsFile {
        benchmark: "task-api-bench",
        mode: "sustained",
        cores: procfs::cores(),
        started_at_unix,
        brokers: &runs,
    };
    if let Err(e) = crate::write_json(&args.out, &file) {
        eprintln!("task-api-bench: {e}");
        return ExitCode::from(2);
    }
    println!(
        "\n{} cores, shared by the load client, task-api, notification-service, both daprd and the servers. Results: {}",
        procfs::cores(),
        args.out.display()
    );
    let failed = runs.iter().any(|r| {
        let n = &r.notifications;
        r.hold.errors > 0 || n.lost + n.unreadable + n.duplicated > 0
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_rises_geometrically_to_the_cap() {
        let args = SustainedArgs::new(true);
        assert_eq!(args.rates(), [50.0, 100.0, 200.0]);
        let full = SustainedArgs::new(false);
        let rates = full.rates();
        assert_eq!(rates.first(), Some(&100.0));
        assert!(rates.iter().all(|r| *r <= 5_000.0));
        assert!(rates.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn a_step_keeps_up_only_with_its_events_handled() {
        let mut phase = Phase {
            rate: 100.0,
            succeeded: 300,
            achieved_rate: 99.0,
            p99_ms: Some(20.0),
            events_left: Some(1_500),
            none_left_after_secs: Some(0.8),
            ..Phase::default()
        };
        assert!(
            phase.kept_up(1.0),
            "what was waiting was handled within the second"
        );
        phase.none_left_after_secs = Some(1.2);
        assert!(!phase.kept_up(1.0), "handled, but later than the target");
        phase.none_left_after_secs = None;
        assert!(!phase.kept_up(1.0), "still waiting after the target");
        phase.none_left_after_secs = Some(0.1);
        phase.notifications_late = 1;
        assert!(!phase.kept_up(1.0), "a notification came late");
        phase.notifications_late = 0;
        phase.not_sent = 1;
        assert!(!phase.kept_up(1.0));
    }
}
