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
    ops::{self, Ceiling, TaskClient},
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
    Status,
    Mixed,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Create,
        Scenario::Get,
        Scenario::Status,
        Scenario::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Create => "CreateTask",
            Scenario::Get => "GetTask",
            Scenario::Status => "UpdateTaskStatus",
            Scenario::Mixed => "Mixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Get,
    Complete,
    List,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Create, Op::Get, Op::Complete, Op::List];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "CreateTask",
            Op::Get => "GetTask",
            Op::Complete => "UpdateTaskStatus",
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

/// Who is measured: task-api, or the same Dapr calls sent straight to its daprd.
#[derive(Clone)]
pub enum Target {
    TaskApi(TaskClient),
    Ceiling(Ceiling),
}

/// A completed status change whose notification is timed later.
#[derive(Debug, Clone)]
pub struct Sample {
    pub task_id: String,
    pub returned_at: SystemTime,
}

/// What workers of one run share.
pub struct Shared {
    /// Ids of pooled tasks GetTask reads.
    get_ids: Arc<Vec<String>>,
    /// Number of keys the ceiling reads and changes (`bench-ceiling-get-N`, `-update-N`).
    ceiling_keys: usize,
    /// Pending tasks for status changes: each is completed once, so every measured status
    /// change is a real pending-to-completed change that publishes an event and notifies.
    pending: Mutex<Vec<String>>,
    stopped: AtomicBool,
    stopped_at: Mutex<Option<Instant>>,
    completions: AtomicU64,
    samples: Mutex<Vec<Sample>>,
    sample_cap: usize,
}

impl Shared {
    pub fn new(
        get_ids: Arc<Vec<String>>,
        ceiling_keys: usize,
        pending: Vec<String>,
        sample_cap: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            get_ids,
            ceiling_keys,
            pending: Mutex::new(pending),
            stopped: AtomicBool::new(false),
            stopped_at: Mutex::new(None),
            completions: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            sample_cap,
        })
    }

    fn take_pending(&self) -> Option<String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn add_pending(&self, id: String) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
    }

    /// Tasks still pending after the run.
    pub fn drain_pending(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the run for every worker: the pool of pending tasks is used up.
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

enum CallError {
    Failed(Op, String),
    /// No pending task left for a status change.
    PoolEmpty,
}

struct Done {
    op: Op,
    created: Option<String>,
    completed: Option<String>,
}

/// One in-flight request slot.
pub struct Worker {
    index: usize,
    stride: usize,
    scenario: Scenario,
    target: Target,
    rng: fastrand::Rng,
    shared: Arc<Shared>,
    /// The ceiling's next update key: workers take disjoint keys (index, index + stride, ...)
    /// so their ETag-guarded writes never conflict, as task-api's status changes of distinct
    /// tasks never do.
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
            Scenario::Status => Op::Complete,
            Scenario::Mixed => Op::mixed(&mut self.rng),
        }
    }

    async fn call(&mut self, op: Op) -> Result<Done, CallError> {
        let done = |op| Done {
            op,
            created: None,
            completed: None,
        };
        match &mut self.target {
            Target::TaskApi(client) => match op {
                Op::Create => {
                    let id = ops::create(client)
                        .await
                        .map_err(|e| CallError::Failed(op, e))?;
                    Ok(Done {
                        created: Some(id),
                        ..done(op)
                    })
                }
                Op::Get => {
                    let ids = &self.shared.get_ids;
                    let id = &ids[self.rng.usize(0..ids.len())];
                    ops::get(client, id)
                        .await
                        .map_err(|e| CallError::Failed(op, e))?;
                    Ok(done(op))
                }
                Op::Complete => match self.shared.take_pending() {
                    Some(id) => {
                        ops::complete(client, &id)
                            .await
                            .map_err(|e| CallError::Failed(op, e))?;
                        Ok(Done {
                            completed: Some(id),
                            ..done(op)
                        })
                    }
                    // In the mix, creates refill the pool as fast as status changes drain it;
                    // should it run dry anyway, this slot creates a task instead.
                    None if self.scenario == Scenario::Mixed => {
                        let id = ops::create(client)
                            .await
                            .map_err(|e| CallError::Failed(Op::Create, e))?;
                        Ok(Done {
                            created: Some(id),
                            ..done(Op::Create)
                        })
                    }
                    None => Err(CallError::PoolEmpty),
                },
                Op::List => {
                    ops::list(client)
                        .await
                        .map_err(|e| CallError::Failed(op, e))?;
                    Ok(done(op))
                }
            },
            Target::Ceiling(ceiling) => {
                let keys = self.shared.ceiling_keys;
                let result = match op {
                    Op::Create => ceiling.create().await,
                    Op::Get => ceiling.get(self.rng.usize(0..keys)).await,
                    Op::Complete => {
                        let key = self.cursor;
                        self.cursor += self.stride;
                        if self.cursor >= keys {
                            self.cursor = self.index;
                        }
                        ceiling.complete(key).await
                    }
                    Op::List => ceiling.list(self.rng.usize(0..keys), keys).await,
                };
                result.map_err(|e| CallError::Failed(op, e))?;
                Ok(done(op))
            }
        }
    }

    async fn run(mut self, window: Window) -> WorkerLog {
        let mut log = WorkerLog::default();
        let is_task_api = matches!(self.target, Target::TaskApi(_));
        loop {
            let started = Instant::now();
            if started >= window.end || self.shared.is_stopped() {
                break;
            }
            let op = self.pick();
            let result = tokio::time::timeout(CALL_TIMEOUT, self.call(op)).await;
            let finished = Instant::now();
            let returned_at = SystemTime::now();
            let measured = started >= window.measure_from;
            match result {
                Err(_) => log.error(op, format!("no answer within {CALL_TIMEOUT:?}")),
                Ok(Err(CallError::Failed(op, message))) => log.error(op, message),
                Ok(Err(CallError::PoolEmpty)) => {
                    self.shared.stop(started);
                    break;
                }
                Ok(Ok(done)) => {
                    if measured {
                        let offset = started.duration_since(window.measure_from);
                        log.ops[done.op.index()].push((micros(offset), micros(finished - started)));
                    }
                    if let Some(id) = done.created
                        && is_task_api
                    {
                        if self.scenario == Scenario::Mixed {
                            self.shared.add_pending(id.clone());
                        }
                        log.created.push(id);
                    }
                    if let Some(id) = done.completed
                        && measured
                        && self.scenario == Scenario::Status
                    {
                        self.shared.maybe_sample(&id, returned_at);
                    }
                }
            }
        }
        log
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
    ops: [Vec<(u32, u32)>; 4],
    errors: [u64; 4],
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

/// What one run measured.
#[derive(Debug, Default)]
pub struct RunResult {
    /// Latencies (µs) of measured successful requests, per op.
    pub latencies: [Vec<u32>; 4],
    pub errors: [u64; 4],
    pub messages: Vec<String>,
    /// Seconds measured: the duration, or less if the pending pool ran out.
    pub measured_secs: f64,
    pub pool_exhausted: bool,
    /// Ids task-api created (including during the warm-up).
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

/// Runs `concurrency` workers for `warmup + duration`.
pub async fn run(
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    warmup: Duration,
    duration: Duration,
    watched: Watched,
) -> RunResult {
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
    let mut result = RunResult::default();
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
    let cutoff = micros(measured_end.duration_since(window.measure_from));
    result.measured_secs = measured_end
        .duration_since(window.measure_from)
        .as_secs_f64();
    result.pool_exhausted = stopped_at.is_some();
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
        result.created.extend(log.created);
    }
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

struct Usage {
    cpu: [f64; 3],
    rss_task_api: Vec<u64>,
    rss_daprd: Vec<u64>,
}

/// CPU time over the measured window, and memory sampled through it.
async fn sample_usage(window: Window, shared: Arc<Shared>, watched: Watched) -> Usage {
    let pids = [watched.task_api, watched.daprd, std::process::id()];
    let ticks = || pids.map(|pid| procfs::cpu_ticks(pid).unwrap_or(0));
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = ticks();
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
    let after = ticks();
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
) -> Result<(), String> {
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
                    .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")));
                if let Err(e) = outcome {
                    first_error.get_or_insert(format!("DeleteTask({id}): {e}"));
                }
            }
            first_error
        }));
    }
    let mut first_error = None;
    for handle in handles {
        let outcome = handle.await.map_err(|e| e.to_string())?;
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
) -> Result<Vec<String>, String> {
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
                    .map_err(|_| format!("CreateTask gave no answer within {CALL_TIMEOUT:?}"))?;
                ids.push(created?);
            }
            Ok::<_, String>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for handle in handles {
        ids.extend(handle.await.map_err(|e| e.to_string())??);
    }
    Ok(ids)
}
