//! Figures, the markdown table, the targets and the JSON file.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    events::DeliverySummary,
    load::{Op, RunResult, Scenario},
    store_ops::OpsPerRequest,
};

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1_000.0)
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub requests: usize,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
}

/// What a run cost, from the start of its warm-up until task-api had handled every event it
/// published: the CPU of task-api, its daprd and the load client (seconds), and the store
/// operations per successful request (where the mode counts them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCost {
    pub seconds: [f64; 3],
    /// How long after the load ended the events took to be handled (task-api's runs).
    pub drained_after_secs: Option<f64>,
    pub store_ops: Option<OpsPerRequest>,
}

fn per_request_ms(cpu_seconds: f64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| cpu_seconds * 1_000.0 / requests as f64)
}

/// One side (task-api or the plain app) of one scenario at one concurrency.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    pub requests: usize,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Failed requests, warm-up included.
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub measured_secs: f64,
    /// A pool of tasks ran out before the duration; fewer seconds were measured.
    pub pool_exhausted: bool,
    /// CPU milliseconds per successful request (warm-up included), from the run's start until
    /// its events were handled: task-api, task-api's daprd, the load client.
    pub task_api_cpu_ms_per_req: Option<f64>,
    pub daprd_cpu_ms_per_req: Option<f64>,
    pub client_cpu_ms_per_req: Option<f64>,
    /// The same over the measured window alone, per measured request.
    pub task_api_cpu_ms_per_req_in_window: Option<f64>,
    pub daprd_cpu_ms_per_req_in_window: Option<f64>,
    /// Seconds from the end of the load until task-api had handled every event of the run.
    pub events_drained_after_secs: Option<f64>,
    /// Redis commands the sidecars sent per successful request (warm-up included), from the
    /// run's start until its events were handled (see `store_ops`).
    pub store_ops_per_req: Option<OpsPerRequest>,
    /// Highest VmRSS sampled during the measured window.
    pub task_api_rss_max_mib: Option<f64>,
    pub daprd_rss_max_mib: Option<f64>,
    /// The mix, per request type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ops: BTreeMap<&'static str, OpSummary>,
}

fn op_summaries(run: &RunResult, secs: f64) -> BTreeMap<&'static str, OpSummary> {
    Op::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| !run.latencies[*i].is_empty() || run.errors[*i] > 0)
        .map(|(i, op)| {
            let latencies = &run.latencies[i];
            let summary = OpSummary {
                requests: latencies.len(),
                rps: latencies.len() as f64 / secs,
                p50_ms: percentile_ms(latencies, 0.50),
                p99_ms: percentile_ms(latencies, 0.99),
                errors: run.errors[i],
            };
            (op.name(), summary)
        })
        .collect()
}

impl Measurement {
    pub fn of(run: &RunResult, scenario: Scenario, cpu: RunCost) -> Self {
        let mut all: Vec<u32> = run.latencies.iter().flatten().copied().collect();
        all.sort_unstable();
        let requests = all.len();
        let secs = run.measured_secs.max(f64::EPSILON);
        let in_window = |seconds| per_request_ms(seconds, requests as u64);
        Self {
            requests,
            rps: if run.measured_secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            p50_ms: percentile_ms(&all, 0.50),
            p90_ms: percentile_ms(&all, 0.90),
            p99_ms: percentile_ms(&all, 0.99),
            max_ms: all.last().map(|us| f64::from(*us) / 1_000.0),
            errors: run.total_errors(),
            error_messages: run.messages.clone(),
            measured_secs: run.measured_secs,
            pool_exhausted: run.pool_exhausted,
            task_api_cpu_ms_per_req: per_request_ms(cpu.seconds[0], run.succeeded),
            daprd_cpu_ms_per_req: per_request_ms(cpu.seconds[1], run.succeeded),
            client_cpu_ms_per_req: per_request_ms(cpu.seconds[2], run.succeeded),
            task_api_cpu_ms_per_req_in_window: in_window(run.cpu_task_api),
            daprd_cpu_ms_per_req_in_window: in_window(run.cpu_daprd),
            events_drained_after_secs: cpu.drained_after_secs,
            store_ops_per_req: cpu.store_ops,
            task_api_rss_max_mib: run.rss_task_api.iter().max().map(|kib| kib_to_mib(*kib)),
            daprd_rss_max_mib: run.rss_daprd.iter().max().map(|kib| kib_to_mib(*kib)),
            ops: if scenario == Scenario::Mixed {
                op_summaries(run, secs)
            } else {
                BTreeMap::new()
            },
        }
    }
}

fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: &'static str,
    pub concurrency: usize,
    pub task_api: Measurement,
    pub plain: Measurement,
    /// task-api's figure over the plain app's.
    pub rps_ratio: Option<f64>,
    pub p50_ratio: Option<f64>,
    pub p90_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// task-api's daprd CPU per request over the same daprd's per plain request.
    pub daprd_cpu_ratio: Option<f64>,
    /// task-api's store operations per request over the plain app's (all that were counted).
    pub store_ops_ratio: Option<f64>,
}

impl ScenarioResult {
    pub fn new(
        scenario: Scenario,
        concurrency: usize,
        task_api: Measurement,
        plain: Measurement,
    ) -> Self {
        Self {
            scenario: scenario.name(),
            concurrency,
            rps_ratio: quotient(Some(task_api.rps), Some(plain.rps)),
            p50_ratio: quotient(task_api.p50_ms, plain.p50_ms),
            p90_ratio: quotient(task_api.p90_ms, plain.p90_ms),
            p99_ratio: quotient(task_api.p99_ms, plain.p99_ms),
            daprd_cpu_ratio: quotient(task_api.daprd_cpu_ms_per_req, plain.daprd_cpu_ms_per_req),
            store_ops_ratio: quotient(
                task_api.store_ops_per_req.map(|o| o.total()),
                plain.store_ops_per_req.map(|o| o.total()),
            ),
            task_api,
            plain,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// Highest resident set task-api reached over the whole run (VmHWM).
    pub task_api_peak_mib: Option<f64>,
    /// The concurrency whose runs the RSS samples below come from (the highest measured).
    pub sampled_concurrency: usize,
    pub task_api_rss_max_mib: Option<f64>,
    pub task_api_rss_mean_mib: Option<f64>,
    pub task_api_rss_samples: usize,
    pub daprd_peak_mib: Option<f64>,
    pub daprd_rss_max_mib: Option<f64>,
    pub daprd_rss_mean_mib: Option<f64>,
}

impl Memory {
    pub fn of(
        concurrency: usize,
        task_api_samples: &[u64],
        daprd_samples: &[u64],
        task_api_hwm_kib: Option<u64>,
        daprd_hwm_kib: Option<u64>,
    ) -> Self {
        let max = |s: &[u64]| s.iter().max().map(|kib| kib_to_mib(*kib));
        let mean =
            |s: &[u64]| (!s.is_empty()).then(|| kib_to_mib(s.iter().sum::<u64>()) / s.len() as f64);
        Self {
            task_api_peak_mib: task_api_hwm_kib.map(kib_to_mib),
            sampled_concurrency: concurrency,
            task_api_rss_max_mib: max(task_api_samples),
            task_api_rss_mean_mib: mean(task_api_samples),
            task_api_rss_samples: task_api_samples.len(),
            daprd_peak_mib: daprd_hwm_kib.map(kib_to_mib),
            daprd_rss_max_mib: max(daprd_samples),
            daprd_rss_mean_mib: mean(daprd_samples),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Events {
    /// Every sampled completion of every level.
    pub overall: DeliverySummary,
    pub per_concurrency: BTreeMap<usize, DeliverySummary>,
}

/// A target, checked and reported, never enforced.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub requirement: String,
    pub actual: Option<f64>,
    /// `None` when the run did not measure it (e.g. a concurrency level left out).
    pub pass: Option<bool>,
}

/// A target on a ratio of task-api's figure to the plain app's.
fn ratio_target(
    results: &[ScenarioResult],
    scenario: Scenario,
    concurrency: usize,
    (what, requirement): (&str, &str),
    figure: impl Fn(&ScenarioResult) -> Option<f64>,
    pass: impl Fn(f64) -> bool,
) -> Target {
    let actual = results
        .iter()
        .find(|r| r.scenario == scenario.name() && r.concurrency == concurrency)
        .and_then(figure);
    Target {
        name: format!("{} {what} at {concurrency}", scenario.name()),
        requirement: requirement.into(),
        actual,
        pass: actual.map(pass),
    }
}

/// The plain-baseline targets: writes at 16 and 64 in flight reach 80% of the plain app's
/// throughput, at 1 in flight their p50 is at most 1.5 times its, at 16 their daprd CPU per
/// request at most 1.5 times its; GetTask keeps 90% of its throughput with a p99 within 1.2
/// times its at 16 and 64.
fn baseline_targets(results: &[ScenarioResult]) -> Vec<Target> {
    let mut targets = Vec::new();
    for scenario in Scenario::WRITES {
        for c in [16, 64] {
            let what = ("throughput", "task-api rps >= 0.8 x plain rps");
            targets.push(ratio_target(
                results,
                scenario,
                c,
                what,
                |r| r.rps_ratio,
                |x| x >= 0.8,
            ));
        }
        let what = ("p50", "task-api p50 <= 1.5 x plain p50");
        targets.push(ratio_target(
            results,
            scenario,
            1,
            what,
            |r| r.p50_ratio,
            |x| x <= 1.5,
        ));
        let what = (
            "daprd CPU per request",
            "task-api's daprd CPU per request <= 1.5 x the plain app's",
        );
        targets.push(ratio_target(
            results,
            scenario,
            16,
            what,
            |r| r.daprd_cpu_ratio,
            |x| x <= 1.5,
        ));
    }
    for c in [16, 64] {
        let what = ("throughput", "task-api rps >= 0.9 x plain rps");
        targets.push(ratio_target(
            results,
            Scenario::Get,
            c,
            what,
            |r| r.rps_ratio,
            |x| x >= 0.9,
        ));
        let what = ("p99", "task-api p99 <= 1.2 x plain p99");
        targets.push(ratio_target(
            results,
            Scenario::Get,
            c,
            what,
            |r| r.p99_ratio,
            |x| x <= 1.2,
        ));
    }
    targets
}

pub fn targets(
    results: &[ScenarioResult],
    memory: &Memory,
    events: &Events,
    total_errors: u64,
) -> Vec<Target> {
    let mut targets = baseline_targets(results);
    let rss = (memory.sampled_concurrency == 64)
        .then_some(memory.task_api_rss_max_mib)
        .flatten();
    targets.push(Target {
        name: "task-api RSS at 64 in flight".into(),
        requirement: "max VmRSS < 30 MiB".into(),
        actual: rss,
        pass: rss.map(|mib| mib < 30.0),
    });
    targets.push(Target {
        name: "request errors".into(),
        requirement: "0".into(),
        actual: Some(total_errors as f64),
        pass: Some(total_errors == 0),
    });
    let missing = events.overall.lost + events.overall.unreadable;
    targets.push(Target {
        name: "lost events".into(),
        requirement: "0 of the sampled completions without a notification".into(),
        actual: Some(missing as f64),
        pass: (events.overall.sampled > 0).then_some(missing == 0),
    });
    targets.push(Target {
        name: "duplicated events".into(),
        requirement: "0 of the sampled completions with more than one notification".into(),
        actual: Some(events.overall.duplicated as f64),
        pass: (events.overall.sampled > 0).then_some(events.overall.duplicated == 0),
    });
    targets
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0))
}

fn mib(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1} MiB"))
}

/// CPU milliseconds per request, to three decimals (`-` when not measured).
pub fn cpu(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The results table, in markdown.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | in flight | task-api rps | plain rps | ratio | p50 ms (task-api / plain) | p50 ratio | p90 ms (task-api / plain) | p90 ratio | p99 ms (task-api / plain) | p99 ratio | daprd CPU ms/req (task-api / plain) | daprd CPU ratio | task-api CPU ms/req | events handled after (s) | errors (task-api / plain) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (a, p) = (&r.task_api, &r.plain);
        let exhausted = |m: &Measurement, who: &str| {
            if m.pool_exhausted {
                format!(" ({who}: {:.1} s, pool used up)", m.measured_secs)
            } else {
                String::new()
            }
        };
        out.push_str(&format!(
            "| {}{}{} | {} | {:.0} | {:.0} | {} | {} / {} | {} | {} / {} | {} | {} / {} | {} | {} / {} | {} | {} | {} | {} / {} |\n",
            r.scenario,
            exhausted(a, "task-api"),
            exhausted(p, "plain"),
            r.concurrency,
            a.rps,
            p.rps,
            percent(r.rps_ratio),
            ms(a.p50_ms),
            ms(p.p50_ms),
            ratio(r.p50_ratio),
            ms(a.p90_ms),
            ms(p.p90_ms),
            ratio(r.p90_ratio),
            ms(a.p99_ms),
            ms(p.p99_ms),
            ratio(r.p99_ratio),
            cpu(a.daprd_cpu_ms_per_req),
            cpu(p.daprd_cpu_ms_per_req),
            ratio(r.daprd_cpu_ratio),
            cpu(a.task_api_cpu_ms_per_req),
            a.events_drained_after_secs
                .map_or_else(|| "-".into(), |s| format!("{s:.1}")),
            a.errors,
            p.errors,
        ));
    }
    out
}

/// A count per request, to two decimals (`-` when not counted).
pub fn count(n: Option<f64>) -> String {
    n.map_or_else(|| "-".into(), |n| format!("{n:.2}"))
}

/// Store operations per request, task-api against the plain app: state reads, state writes and
/// Redis streams commands, and the ratio of all counted.
pub fn store_ops_table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | in flight | task-api: state reads / writes / stream commands per request | plain: state reads / writes / stream commands per request | total (task-api / plain) | ratio |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let split = |o: &Option<OpsPerRequest>| match o {
        Some(o) => format!(
            "{} / {} / {}",
            count(o.state_reads),
            count(o.state_writes),
            count(o.stream)
        ),
        None => "-".into(),
    };
    let total = |o: &Option<OpsPerRequest>| count(o.map(|o| o.total()));
    for r in results {
        let (a, p) = (&r.task_api.store_ops_per_req, &r.plain.store_ops_per_req);
        if a.is_none() && p.is_none() {
            continue;
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} / {} | {} |\n",
            r.scenario,
            r.concurrency,
            split(a),
            split(p),
            total(a),
            total(p),
            ratio(r.store_ops_ratio),
        ));
    }
    out
}

pub fn memory_line(memory: &Memory) -> String {
    format!(
        "Memory: task-api peak (VmHWM) {}; VmRSS during the {}-in-flight runs max {}, mean {} ({} samples); its daprd VmRSS max {}, mean {}, peak {}.",
        mib(memory.task_api_peak_mib),
        memory.sampled_concurrency,
        mib(memory.task_api_rss_max_mib),
        mib(memory.task_api_rss_mean_mib),
        memory.task_api_rss_samples,
        mib(memory.daprd_rss_max_mib),
        mib(memory.daprd_rss_mean_mib),
        mib(memory.daprd_peak_mib),
    )
}

pub fn events_line(events: &Events) -> String {
    let o = &events.overall;
    format!(
        "Event delivery (UpdateTaskStatus(completed) returned -> notification recorded): p50 {} ms, p99 {} ms, max {} ms over {} sampled completions; lost {}, duplicated {}, unreadable {}.",
        ms(o.p50_ms),
        ms(o.p99_ms),
        ms(o.max_ms),
        o.sampled,
        o.lost,
        o.duplicated,
        o.unreadable,
    )
}

pub fn targets_text(targets: &[Target]) -> String {
    let mut out = String::from("Targets (reported, not enforced):\n");
    for t in targets {
        let verdict = match t.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "not measured",
        };
        let actual = t.actual.map_or_else(|| "-".into(), |a| format!("{a:.2}"));
        out.push_str(&format!(
            "  [{verdict}] {}: {} (actual {actual})\n",
            t.name, t.requirement
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1_000).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), Some(50.0));
        assert_eq!(percentile_ms(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[7_000], 0.99), Some(7.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }

    #[test]
    fn ratios_targets_and_missing_levels() {
        let mut run = RunResult {
            measured_secs: 2.0,
            succeeded: 200,
            ..Default::default()
        };
        run.latencies[0] = vec![1_000; 200];
        let cpu = |daprd| RunCost {
            seconds: [0.1, daprd, 0.1],
            drained_after_secs: None,
            store_ops: None,
        };
        let api = Measurement::of(&run, Scenario::Create, cpu(0.4));
        run.latencies[0] = vec![1_000; 400];
        let plain = Measurement::of(&run, Scenario::Create, cpu(0.2));
        assert_eq!(api.daprd_cpu_ms_per_req, Some(2.0));
        let result = ScenarioResult::new(Scenario::Create, 16, api, plain);
        assert_eq!(result.rps_ratio, Some(0.5));
        assert_eq!(result.p99_ratio, Some(1.0));
        assert_eq!(result.daprd_cpu_ratio, Some(2.0));
        let events = Events {
            overall: DeliverySummary::default(),
            per_concurrency: BTreeMap::new(),
        };
        let targets = targets(&[result], &Memory::default(), &events, 0);
        let find = |name: &str| targets.iter().find(|t| t.name == name).unwrap();
        assert_eq!(find("CreateTask throughput at 16").pass, Some(false));
        assert_eq!(
            find("CreateTask daprd CPU per request at 16").pass,
            Some(false)
        );
        assert_eq!(
            find("CreateTask throughput at 64").pass,
            None,
            "not measured"
        );
        assert_eq!(find("CreateTask p50 at 1").pass, None, "not measured");
    }
}
