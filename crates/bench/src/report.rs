//! Figures, the markdown table, the targets and the JSON file.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    events::DeliverySummary,
    load::{Op, RunResult, Scenario},
};

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]) / 1_000.0)
}

fn per_thousand(cpu_seconds: f64, requests: usize) -> Option<f64> {
    (requests > 0).then(|| cpu_seconds * 1_000.0 / requests as f64)
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

/// One side (task-api or ceiling) of one scenario at one concurrency.
#[derive(Debug, Clone, Serialize)]
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
    /// The pool of pending tasks ran out before the duration; fewer seconds were measured.
    pub pool_exhausted: bool,
    /// CPU seconds per 1,000 measured requests: task-api, its daprd, the load client.
    pub task_api_cpu_s_per_1k: Option<f64>,
    pub daprd_cpu_s_per_1k: Option<f64>,
    pub client_cpu_s_per_1k: Option<f64>,
    /// Highest VmRSS sampled during the measured window.
    pub task_api_rss_max_mib: Option<f64>,
    pub daprd_rss_max_mib: Option<f64>,
    /// The mix, per request type.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ops: BTreeMap<&'static str, OpSummary>,
}

impl Measurement {
    pub fn of(run: &RunResult, scenario: Scenario) -> Self {
        let mut all: Vec<u32> = run.latencies.iter().flatten().copied().collect();
        all.sort_unstable();
        let requests = all.len();
        let secs = run.measured_secs.max(f64::EPSILON);
        let ops = if scenario == Scenario::Mixed {
            Op::ALL
                .iter()
                .enumerate()
                .map(|(i, op)| {
                    let latencies = &run.latencies[i];
                    (
                        op.name(),
                        OpSummary {
                            requests: latencies.len(),
                            rps: latencies.len() as f64 / secs,
                            p50_ms: percentile_ms(latencies, 0.50),
                            p99_ms: percentile_ms(latencies, 0.99),
                            errors: run.errors[i],
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
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
            task_api_cpu_s_per_1k: per_thousand(run.cpu_task_api, requests),
            daprd_cpu_s_per_1k: per_thousand(run.cpu_daprd, requests),
            client_cpu_s_per_1k: per_thousand(run.cpu_client, requests),
            task_api_rss_max_mib: run.rss_task_api.iter().max().map(|kib| kib_to_mib(*kib)),
            daprd_rss_max_mib: run.rss_daprd.iter().max().map(|kib| kib_to_mib(*kib)),
            ops,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: &'static str,
    pub concurrency: usize,
    pub task_api: Measurement,
    pub ceiling: Measurement,
    /// task-api's requests/s over the ceiling's.
    pub rps_ratio: Option<f64>,
    /// task-api's p99 over the ceiling's.
    pub p99_ratio: Option<f64>,
}

impl ScenarioResult {
    pub fn new(
        scenario: Scenario,
        concurrency: usize,
        task_api: Measurement,
        ceiling: Measurement,
    ) -> Self {
        let rps_ratio = (ceiling.rps > 0.0).then(|| task_api.rps / ceiling.rps);
        let p99_ratio = match (task_api.p99_ms, ceiling.p99_ms) {
            (Some(api), Some(ceiling)) if ceiling > 0.0 => Some(api / ceiling),
            _ => None,
        };
        Self {
            scenario: scenario.name(),
            concurrency,
            task_api,
            ceiling,
            rps_ratio,
            p99_ratio,
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

pub fn targets(
    results: &[ScenarioResult],
    memory: &Memory,
    events: &Events,
    total_errors: u64,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for scenario in [Scenario::Create, Scenario::Get] {
        for concurrency in [16, 64] {
            let found = results
                .iter()
                .find(|r| r.scenario == scenario.name() && r.concurrency == concurrency);
            let rps = found.and_then(|r| r.rps_ratio);
            targets.push(Target {
                name: format!("{} throughput at {concurrency}", scenario.name()),
                requirement: "task-api rps >= 0.9 x ceiling rps".into(),
                actual: rps,
                pass: rps.map(|r| r >= 0.9),
            });
            let p99 = found.and_then(|r| r.p99_ratio);
            targets.push(Target {
                name: format!("{} p99 at {concurrency}", scenario.name()),
                requirement: "task-api p99 <= 1.2 x ceiling p99".into(),
                actual: p99,
                pass: p99.map(|r| r <= 1.2),
            });
        }
    }
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

/// The results table, in markdown.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | concurrency | task-api rps | ceiling rps | ratio | p50 ms (task-api / ceiling) | p90 ms (task-api / ceiling) | p99 ms (task-api / ceiling) | p99 ratio | errors (task-api / ceiling) | CPU s/1k req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let exhausted = if r.task_api.pool_exhausted {
            format!(" ({:.1} s: pool used up)", r.task_api.measured_secs)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {}{exhausted} | {} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {} / {} | {} | {} / {} | {} |\n",
            r.scenario,
            r.concurrency,
            r.task_api.rps,
            r.ceiling.rps,
            percent(r.rps_ratio),
            ms(r.task_api.p50_ms),
            ms(r.ceiling.p50_ms),
            ms(r.task_api.p90_ms),
            ms(r.ceiling.p90_ms),
            ms(r.task_api.p99_ms),
            ms(r.ceiling.p99_ms),
            ratio(r.p99_ratio),
            r.task_api.errors,
            r.ceiling.errors,
            r.task_api
                .task_api_cpu_s_per_1k
                .map_or_else(|| "-".into(), |v| format!("{v:.3}")),
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
    fn ratios_and_missing_levels() {
        let mut run = RunResult {
            measured_secs: 2.0,
            ..Default::default()
        };
        run.latencies[0] = vec![1_000; 200];
        let api = Measurement::of(&run, Scenario::Create);
        run.latencies[0] = vec![1_000; 400];
        let ceiling = Measurement::of(&run, Scenario::Create);
        let result = ScenarioResult::new(Scenario::Create, 16, api, ceiling);
        assert_eq!(result.rps_ratio, Some(0.5));
        assert_eq!(result.p99_ratio, Some(1.0));
        let events = Events {
            overall: DeliverySummary::default(),
            per_concurrency: BTreeMap::new(),
        };
        let targets = targets(&[result], &Memory::default(), &events, 0);
        let create16 = &targets[0];
        assert_eq!(create16.pass, Some(false));
        assert!(
            targets
                .iter()
                .any(|t| t.name.contains("at 64") && t.pass.is_none())
        );
    }
}
