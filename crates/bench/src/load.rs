//! Closed-loop load: each worker sends one request at a time until the deadline, and the
//! requests started after the warm-up are measured.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use crate::{
    error::CallError,
    ops::{self, Plain, TaskClient},
    procfs,
};

/// A call that takes longer than this counts as an error (and keeps every loop bounded).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct error messages kept per run.
const MESSAGES_KEPT: usize = 5;
/// How often memory is sampled during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Create,
    Get,
    Update,
    Status,
    Delete,
    Mixed,
}

impl Scenario {
    /// In the order the table lists them.
    pub const ALL: [Scenario; 6] = [
        Scenario::Create,
        Scenario::Update,
        Scenario::Status,
        Scenario::Delete,
        Scenario::Get,
        Scenario::Mixed,
    ];
    /// The writes, which the plain-baseline targets apply to.
    pub const WRITES: [Scenario; 4] = [
        Scenario::Create,
        Scenario::Update,
        Scenario::Status,
        Scenario::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Create => "CreateTask",
            Scenario::Get => "GetTask",
            Scenario::Update => "UpdateTask",
            Scenario::Status => "UpdateTaskStatus",
            Scenario::Delete => "DeleteTask",
            Scenario::Mixed => "Mixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Get,
    Update,
    Complete,
    Delete,
    List,
}

/// Request types.
pub const OPS: usize = 6;

impl Op {
    pub const ALL: [Op; OPS] = [
        Op::Create,
        Op::Get,
        Op::Update,
        Op::Complete,
        Op::Delete,
        Op::List,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "CreateTask",
            Op::Get => "GetTask",
            Op::Update => "UpdateTask",
            Op::Complete => "UpdateTaskStatus",
            Op::Delete => "DeleteTask",
            Op::List => "ListTasks",
        }
    }

    /// The mix: 50% get, 20% create, 20% status change, 10% list (first page of 20).
    fn mixed(rng: &mut fastrand::Rng) -> Op {
        match rng.u32(0..100) {
            0..50 => Op::Get,
            50..70 => Op::Create,
            70..90 => Op::Complete,
            _ => Op::List,
        }
    }
}

/// Who is measured: task-api, the plain app's calls sent straight to its daprd, or the simple
/// app making those calls (`simple-app`).
#[derive(Clone)]
pub enum Target {
    TaskApi(TaskClient),
    Plain(Plain),
    /// Works on the plain app's keys, as the plain calls do: it reads the `plain_get_keys`,
    /// changes the cycled keys (status changes included) and deletes each key of `once`.
    SimpleApp(TaskClient),
}

/// A completed status change whose notification is timed later.
#[derive(Debug, Clone)]
pub struct Sample {
    pub task_id: String,
    pub returned_at: SystemTime,
}

/// The tasks (task-api ids, or the plain app's keys) a run works on.
#[derive(Default)]
pub struct Pools {
    /// Read by GetTask (task-api ids); the plain app reads `bench-plain-get-N` below this many.
    pub get_ids: Arc<Vec<String>>,
    pub plain_get_keys: usize,
    /// Changed again and again by UpdateTask (and by the plain app's status changes): each
    /// worker takes its own of them in turn, so no two writes ever race for one.
    pub cycle: Arc<Vec<String>>,
    /// Used once each: pending tasks for UpdateTaskStatus, tasks for DeleteTask.
    pub once: Vec<String>,
}

/// What workers of one run share.
pub struct Shared {
    get_ids: Arc<Vec<String>>,
    plain_get_keys: usize,
    cycle: Arc<Vec<String>>,
    /// Each is taken once: every measured status change is a real pending-to-completed change
    /// that publishes an event and notifies, every delete deletes a task.
    once: Mutex<Vec<String>>,
    /// Numbers the titles of UpdateTask, so each is a change.
    edits: AtomicU64,
    stopped: AtomicBool,
    stopped_at: Mutex<Option<Instant>>,
    completions: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    sample_cap: usize,
}

impl Shared {
    pub fn new(pools: Pools, sample_cap: usize) -> Arc<Self> {
        Arc::new(Self {
            get_ids: pools.get_ids,
            plain_get_keys: pools.plain_get_keys,
            cycle: pools.cycle,
            once: Mutex::new(pools.once),
            edits: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stopped_at: Mutex::new(None),
            completions: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            sample_cap,
        })
    }

    fn take_once(&self) -> Option<String> {
        self.once.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn add_once(&self, id: String) {
        self.once.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// Tasks not used by the run.
    pub fn drain_once(&self) -> Vec<String> {
        std::mem::take(&mut *self.once.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the run for every worker: a pool of tasks is used up.
    fn stop(&self, at: Instant) {
        let mut stopped_at = self.stopped_at.lock().unwrap_or_else(|e| e.into_inner());
        if stopped_at.is_none() {
            *stopped_at = Some(at);
        }
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Every 10th measured completion, up to the cap.
    fn maybe_sample(&self, task_id: &str, returned_at: SystemTime) {
        let n = self.completions.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(10) {
            return;
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < self.sample_cap {
            samples.push(Sample {
                task_id: task_id.to_string(),
                returned_at,
            });
        }
    }
}

/// Why a worker's request did not count as done.
enum OpError {
    Failed(Op, CallError),
    /// No task left in the pool of tasks used once.
    PoolEmpty,
}

struct Done {
    op: Op,
    created: Option<String>,
    completed: Option<String>,
}

impl Done {
    fn of(op: Op) -> Self {
        Self {
            op,
            created: None,
            completed: None,
        }
    }
}

/// One in-flight request slot.
pub struct Worker {
    index: usize,
    stride: usize,
    scenario: Scenario,
    target: Target,
    rng: fastrand::Rng,
    shared: Arc<Shared>,
    /// The next entry of the cycled pool: workers take disjoint ones (index, index + stride,
    /// ...) so their writes never conflict, as task-api's changes of distinct tasks never do.
    cursor: usize,
}

impl Worker {
    pub fn new(
        index: usize,
        stride: usize,
        scenario: Scenario,
        target: Target,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            index,
            stride,
            scenario,
            target,
            rng: fastrand::Rng::with_seed(0x5eed + index as u64),
            shared,
            cursor: index,
        }
    }

    fn pick(&mut self) -> Op {
        match self.scenario {
            Scenario::Create => Op::Create,
            Scenario::Get => Op::Get,
            Scenario::Update => Op::Update,
            Scenario::Status => Op::Complete,
            Scenario::Delete => Op::Delete,
            Scenario::Mixed => Op::mixed(&mut self.rng),
        }
    }

    /// This worker's next entry of the cycled pool.
    fn next_in_cycle(&mut self) -> Result<String, OpError> {
        let cycle = self.shared.cycle.clone();
        if cycle.is_empty() {
            return Err(OpError::PoolEmpty);
        }
        let at = self.cursor % cycle.len();
        self.cursor += self.stride;
        if self.cursor >= cycle.len() {
            self.cursor = self.index;
        }
        Ok(cycle[at].clone())
    }

    async fn call(&mut self, op: Op) -> Result<Done, OpError> {
        match self.target.clone() {
            Target::TaskApi(mut client) => self.call_task_api(&mut client, op, false).await,
            Target::Plain(mut plain) => self.call_plain(&mut plain, op).await,
            Target::SimpleApp(mut client) => self.call_task_api(&mut client, op, true).await,
        }
    }

    /// A TaskService call, to task-api or (`plain_keys`) to the simple app, which works on the
    /// plain app's keys as [`Worker::call_plain`] does.
    async fn call_task_api(
        &mut self,
        client: &mut TaskClient,
        op: Op,
        plain_keys: bool,
    ) -> Result<Done, OpError> {
        let failed = |e| OpError::Failed(op, e);
        match op {
            Op::Get if plain_keys => {
                let keys = self.shared.plain_get_keys;
                if keys == 0 {
                    return Err(OpError::PoolEmpty);
                }
                let key = ops::plain_get_key(self.rng.usize(0..keys));
                ops::get(client, &key).await.map_err(failed)?;
                Ok(Done::of(op))
            }
            Op::Complete if plain_keys => {
                let key = self.next_in_cycle()?;
                ops::complete(client, &key).await.map_err(failed)?;
                Ok(Done::of(op))
            }
            Op::Create => {
                let id = ops::create(client).await.map_err(failed)?;
                Ok(Done {
                    created: Some(id),
                    ..Done::of(op)
                })
            }
            Op::Get => {
                let ids = self.shared.get_ids.clone();
                let id = &ids[self.rng.usize(0..ids.len())];
                ops::get(client, id).await.map_err(failed)?;
                Ok(Done::of(op))
            }
            Op::Update => {
                let id = self.next_in_cycle()?;
                let n = self.shared.edits.fetch_add(1, Ordering::Relaxed);
                ops::update(client, &id, n).await.map_err(failed)?;
                Ok(Done::of(op))
            }
            Op::Complete => match self.shared.take_once() {
                Some(id) => {
                    ops::complete(client, &id).await.map_err(failed)?;
                    Ok(Done {
                        completed: Some(id),
                        ..Done::of(op)
                    })
                }
                // In the mix, creates refill the pool as fast as status changes drain it;
                // should it run dry anyway, this slot creates a task instead.
                None if self.scenario == Scenario::Mixed => {
                    Box::pin(self.call_task_api(client, Op::Create, false)).await
                }
                None => Err(OpError::PoolEmpty),
            },
            Op::Delete => {
                let id = self.shared.take_once().ok_or(OpError::PoolEmpty)?;
                ops::delete(client, &id).await.map_err(failed)?;
                Ok(Done::of(op))
            }
            Op::List => {
                ops::list(client).await.map_err(failed)?;
                Ok(Done::of(op))
            }
        }
    }

    async fn call_plain(&mut self, plain: &mut Plain, op: Op) -> Result<Done, OpError> {
        let failed = |e| OpError::Failed(op, e);
        let keys = self.shared.plain_get_keys;
        match op {
            Op::Create => {
                let key = plain.create().await.map_err(failed)?;
                Ok(Done {
                    created: Some(key),
                    ..Done::of(op)
                })
            }
            Op::Get => plain
                .get(self.rng.usize(0..keys))
                .await
                .map_err(failed)
                .map(|()| Done::of(op)),
            Op::Update => {
                let key = self.next_in_cycle()?;
                let n = self.shared.edits.fetch_add(1, Ordering::Relaxed);
                plain
                    .update(&key, n)
                    .await
                    .map_err(failed)
                    .map(|()| Done::of(op))
            }
            Op::Complete => {
                let key = self.next_in_cycle()?;
                plain
                    .complete(&key)
                    .await
                    .map_err(failed)
                    .map(|()| Done::of(op))
            }
            Op::Delete => {
                let key = self.shared.take_once().ok_or(OpError::PoolEmpty)?;
                plain
                    .delete(&key)
                    .await
                    .map_err(failed)
                    .map(|()| Done::of(op))
            }
            Op::List => plain
                .list(self.rng.usize(0..keys), keys)
                .await
                .map_err(failed)
                .map(|()| Done::of(op)),
        }
    }

    async fn run(mut self, window: Window) -> WorkerLog {
        let mut log = WorkerLog::default();
        loop {
            let started = Instant::now();
            if started >= window.end || self.shared.is_stopped() {
                break;
            }
            let op = self.pick();
            let result = tokio::time::timeout(CALL_TIMEOUT, self.call(op)).await;
            let finished = Instant::now();
            let measured = started >= window.measure_from;
            match result {
                Err(_) => log.error(op, format!("no answer within {CALL_TIMEOUT:?}")),
                Ok(Err(OpError::Failed(op, error))) => log.error(op, error.to_string()),
                Ok(Err(OpError::PoolEmpty)) => {
                    self.shared.stop(started);
                    break;
                }
                Ok(Ok(done)) => {
                    log.succeeded += 1;
                    if measured {
                        let offset = started.duration_since(window.measure_from);
                        log.ops[done.op.index()].push((micros(offset), micros(finished - started)));
                    }
                    self.record(&mut log, done, measured);
                }
            }
        }
        log
    }

    /// Keeps what a successful call created or completed.
    fn record(&self, log: &mut WorkerLog, done: Done, measured: bool) {
        let is_task_api = matches!(self.target, Target::TaskApi(_));
        if let Some(id) = done.created {
            if self.scenario == Scenario::Mixed && is_task_api {
                self.shared.add_once(id.clone());
            }
            log.created.push(id);
        }
        if let Some(id) = done.completed
            && measured
            && self.scenario == Scenario::Status
        {
            self.shared.maybe_sample(&id, SystemTime::now());
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

#[derive(Default)]
struct WorkerLog {
    /// Per op: (start, in microseconds after the warm-up; latency in microseconds).
    ops: [Vec<(u32, u32)>; OPS],
    errors: [u64; OPS],
    /// Successful calls, warm-up included.
    succeeded: u64,
    messages: Vec<String>,
    created: Vec<String>,
}

impl WorkerLog {
    fn error(&mut self, op: Op, message: String) {
        self.errors[op.index()] += 1;
        let message = format!("{}: {message}", op.name());
        if self.messages.len() < MESSAGES_KEPT && !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }
}

/// Processes whose CPU and memory a run records.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    pub task_api: u32,
    pub daprd: u32,
}

impl Watched {
    /// CPU ticks so far of task-api, its daprd and this process (0 for one that is gone).
    pub fn ticks(&self) -> [u64; 3] {
        [self.task_api, self.daprd, std::process::id()]
            .map(|pid| procfs::cpu_ticks(pid).unwrap_or(0))
    }

    /// CPU seconds each used since `start` (from [`Watched::ticks`]).
    pub fn cpu_since(&self, start: [u64; 3]) -> [f64; 3] {
        let now = self.ticks();
        let per_second = procfs::clock_ticks_per_second();
        [0, 1, 2].map(|i| now[i].saturating_sub(start[i]) as f64 / per_second)
    }
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct RunResult {
    /// Latencies (µs) of measured successful requests, per op.
    pub latencies: [Vec<u32>; OPS],
    pub errors: [u64; OPS],
    pub messages: Vec<String>,
    /// Successful requests, warm-up included: what the CPU from the run's start is divided by.
    pub succeeded: u64,
    /// CPU ticks of task-api, its daprd and this process when the run (its warm-up) began.
    pub start_ticks: [u64; 3],
    /// Seconds measured: the duration, or less if the pending pool ran out.
    pub measured_secs: f64,
    pub pool_exhausted: bool,
    /// Ids (keys, for the plain app) created, including during the warm-up.
    pub created: Vec<String>,
    /// CPU seconds used in the measured window.
    pub cpu_task_api: f64,
    pub cpu_daprd: f64,
    pub cpu_client: f64,
    /// VmRSS samples (KiB) during the measured window.
    pub rss_task_api: Vec<u64>,
    pub rss_daprd: Vec<u64>,
}

impl RunResult {
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Tasks enough for a run of `window` (warm-up included) that uses each once, at `rps` with
/// `margin`, and a few per caller of the `c` in flight.
pub fn tasks_for(rps: f64, window: Duration, margin: f64, c: usize) -> usize {
    (rps * window.as_secs_f64() * margin) as usize + 4 * c
}

/// Runs `concurrency` workers for `warmup + duration`.
pub async fn run(
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    warmup: Duration,
    duration: Duration,
    watched: Watched,
) -> RunResult {
    let start_ticks = watched.ticks();
    let start = Instant::now();
    let window = Window {
        measure_from: start + warmup,
        end: start + warmup + duration,
    };
    let sampler = tokio::spawn(sample_usage(window, shared.clone(), watched));
    let handles: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(worker.run(window)))
        .collect();
    let mut logs = Vec::with_capacity(handles.len());
    let mut result = RunResult {
        start_ticks,
        ..RunResult::default()
    };
    for handle in handles {
        match handle.await {
            Ok(log) => logs.push(log),
            Err(e) => result.messages.push(format!("a worker failed: {e}")),
        }
    }
    let stopped_at = *shared.stopped_at.lock().unwrap_or_else(|e| e.into_inner());
    let measured_end = match stopped_at {
        Some(at) if at < window.end => at.max(window.measure_from),
        _ => window.end,
    };
    result.measured_secs = measured_end
        .duration_since(window.measure_from)
        .as_secs_f64();
    result.pool_exhausted = stopped_at.is_some();
    merge(
        &mut result,
        logs,
        micros(measured_end.duration_since(window.measure_from)),
    );
    if let Ok(usage) = sampler.await {
        result.cpu_task_api = usage.cpu[0];
        result.cpu_daprd = usage.cpu[1];
        result.cpu_client = usage.cpu[2];
        result.rss_task_api = usage.rss_task_api;
        result.rss_daprd = usage.rss_daprd;
    }
    for latencies in &mut result.latencies {
        latencies.sort_unstable();
    }
    result
}

/// Adds the workers' logs to `result`, keeping the latencies of requests started before
/// `cutoff` (µs after the warm-up).
fn merge(result: &mut RunResult, logs: Vec<WorkerLog>, cutoff: u32) {
    for log in logs {
        for (i, op) in log.ops.into_iter().enumerate() {
            result.latencies[i].extend(
                op.into_iter()
                    .filter(|(start, _)| *start < cutoff)
                    .map(|(_, latency)| latency),
            );
        }
        for (i, errors) in log.errors.into_iter().enumerate() {
            result.errors[i] += errors;
        }
        for message in log.messages {
            if result.messages.len() < MESSAGES_KEPT && !result.messages.contains(&message) {
                result.messages.push(message);
            }
        }
        result.succeeded += log.succeeded;
        result.created.extend(log.created);
    }
}

struct Usage {
    cpu: [f64; 3],
    rss_task_api: Vec<u64>,
    rss_daprd: Vec<u64>,
}

/// CPU time over the measured window, and memory sampled through it.
async fn sample_usage(window: Window, shared: Arc<Shared>, watched: Watched) -> Usage {
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = watched.ticks();
    let mut usage = Usage {
        cpu: [0.0; 3],
        rss_task_api: Vec::new(),
        rss_daprd: Vec::new(),
    };
    while Instant::now() < window.end && !shared.is_stopped() {
        if let Some(kib) = procfs::status_kib(watched.task_api, "VmRSS") {
            usage.rss_task_api.push(kib);
        }
        if let Some(kib) = procfs::status_kib(watched.daprd, "VmRSS") {
            usage.rss_daprd.push(kib);
        }
        let next = (Instant::now() + SAMPLE_EVERY).min(window.end);
        tokio::time::sleep_until(next.into()).await;
    }
    let after = watched.ticks();
    let per_second = procfs::clock_ticks_per_second();
    for i in 0..3 {
        usage.cpu[i] = after[i].saturating_sub(before[i]) as f64 / per_second;
    }
    usage
}

/// Deletes `ids` through task-api with `concurrency` callers (not measured). Every id is tried;
/// the first failure is returned.
pub async fn delete_tasks(
    clients: &[TaskClient],
    ids: Vec<String>,
    concurrency: usize,
) -> Result<(), CallError> {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..concurrency.clamp(1, ids.len().max(1)) {
        let mut client = clients[i % clients.len()].clone();
        let (ids, next) = (ids.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut first_error = None;
            // Each id is handed out once: the loop ends after the last.
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed) as usize) {
                let outcome = tokio::time::timeout(CALL_TIMEOUT, ops::delete(&mut client, id))
                    .await
                    .unwrap_or(Err(CallError::Timeout(CALL_TIMEOUT)));
                if let Err(e) = outcome {
                    first_error.get_or_insert(CallError::About {
                        call: "DeleteTask",
                        id: id.clone(),
                        source: Box::new(e),
                    });
                }
            }
            first_error
        }));
    }
    let mut first_error = None;
    for handle in handles {
        let outcome = handle.await?;
        if first_error.is_none() {
            first_error = outcome;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Creates `count` tasks through task-api with `concurrency` callers (not measured); their ids.
pub async fn create_tasks(
    clients: &[TaskClient],
    count: usize,
    concurrency: usize,
) -> Result<Vec<String>, CallError> {
    let remaining = Arc::new(AtomicU64::new(count as u64));
    let mut handles = Vec::new();
    for i in 0..concurrency.clamp(1, count.max(1)) {
        let mut client = clients[i % clients.len()].clone();
        let remaining = remaining.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            // One decrement per task: the loop ends after `count` creates in all.
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let created = tokio::time::timeout(CALL_TIMEOUT, ops::create(&mut client))
                    .await
                    .map_err(|_| CallError::Timeout(CALL_TIMEOUT))?;
                ids.push(created?);
            }
            Ok::<_, CallError>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for handle in handles {
        ids.extend(handle.await??);
    }
    Ok(ids)
}
