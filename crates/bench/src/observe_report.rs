//! `observe`'s figures: per configuration the median over rounds and the median of the
//! per-round ratios to `off`, one at a time and side by side; the tables, the targets and the
//! JSON file.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    bench::WORKERS_PER_CONNECTION,
    exports::Observed,
    observe::{Config, Measurements, ObserveArgs, REQUESTS},
    procfs,
    report::{Measurement, Target, targets_text},
};

/// The most throughput tracing and metrics may cost: every configuration keeps at least this
/// share of `off`'s requests per second.
const KEPT_AT_LEAST: f64 = 0.95;

/// One request's run on one system.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRun {
    pub request: &'static str,
    #[serde(flatten)]
    pub figures: Measurement,
    /// CPU of Jaeger and Prometheus together per successful request, counted like task-api's
    /// (`None` when neither runs).
    pub backends_cpu_ms_per_req: Option<f64>,
    /// CPU of every process of the system (apps, sidecars, servers, backends) per successful
    /// request, counted the same way.
    pub system_cpu_ms_per_req: Option<f64>,
}

/// One request, one configuration and `off` loaded at the same time.
#[derive(Debug, Clone, Serialize)]
pub struct PairRun {
    pub configuration: &'static str,
    /// From 1.
    pub round: usize,
    pub request: &'static str,
    pub off: RequestRun,
    pub with: RequestRun,
}

impl PairRun {
    /// The configuration's rps over `off`'s, in the same seconds.
    fn rps_ratio(&self) -> Option<f64> {
        let off = self.off.figures.rps;
        (off > 0.0).then(|| self.with.figures.rps / off)
    }

    /// `off`'s CPU per request over the configuration's, every process of each system counted:
    /// the share of `off`'s throughput the configuration keeps on a machine that is busy.
    fn cpu_kept(&self) -> Option<f64> {
        let off = self.off.system_cpu_ms_per_req?;
        let with = self.with.system_cpu_ms_per_req?;
        (with > 0.0).then(|| off / with)
    }
}

/// One request in one configuration side by side with `off`, over every round.
#[derive(Debug, Clone, Serialize)]
pub struct PairSummary {
    pub request: &'static str,
    pub configuration: &'static str,
    pub rounds: usize,
    pub off_rps_median: Option<f64>,
    pub rps_median: Option<f64>,
    pub ratio_per_round: Vec<f64>,
    pub ratio_to_off: Option<f64>,
    pub off_system_cpu_ms_per_req_median: Option<f64>,
    pub system_cpu_ms_per_req_median: Option<f64>,
    pub cpu_kept_per_round: Vec<f64>,
    pub cpu_kept: Option<f64>,
    /// Failed requests of both systems in every round, warm-up included.
    pub errors: u64,
}

impl PairSummary {
    fn of(pairs: &[PairRun], request: &'static str, config: Config) -> Self {
        let mine: Vec<&PairRun> = pairs
            .iter()
            .filter(|p| p.request == request && p.configuration == config.name())
            .collect();
        let ratio_per_round: Vec<f64> = mine.iter().filter_map(|p| p.rps_ratio()).collect();
        let cpu_kept_per_round: Vec<f64> = mine.iter().filter_map(|p| p.cpu_kept()).collect();
        Self {
            request,
            configuration: config.name(),
            rounds: mine.len(),
            off_rps_median: median(mine.iter().map(|p| p.off.figures.rps)),
            rps_median: median(mine.iter().map(|p| p.with.figures.rps)),
            ratio_to_off: median(ratio_per_round.iter().copied()),
            ratio_per_round,
            off_system_cpu_ms_per_req_median: median(
                mine.iter().filter_map(|p| p.off.system_cpu_ms_per_req),
            ),
            system_cpu_ms_per_req_median: median(
                mine.iter().filter_map(|p| p.with.system_cpu_ms_per_req),
            ),
            cpu_kept: median(cpu_kept_per_round.iter().copied()),
            cpu_kept_per_round,
            errors: mine
                .iter()
                .map(|p| p.off.figures.errors + p.with.figures.errors)
                .sum(),
        }
    }
}

/// One configuration in one round.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRun {
    pub configuration: &'static str,
    /// From 1; `position` is its place in the round's order.
    pub round: usize,
    pub position: usize,
    pub requests: Vec<RequestRun>,
}

/// What one configuration's backends were seen to receive over every round.
#[derive(Debug, Clone, Serialize)]
pub struct SystemSeen {
    pub configuration: &'static str,
    pub observed: Observed,
}

impl ConfigRun {
    fn request(&self, request: &str) -> Option<&RequestRun> {
        self.requests.iter().find(|r| r.request == request)
    }
}

/// One request in one configuration, over every round.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub request: &'static str,
    pub configuration: &'static str,
    pub rounds: usize,
    pub rps_median: Option<f64>,
    pub rps_per_round: Vec<f64>,
    /// The configuration's rps over `off`'s in the same round, per round, and their median.
    pub ratio_to_off: Option<f64>,
    pub ratio_per_round: Vec<f64>,
    /// Medians over the rounds of each round's percentiles.
    pub p50_ms_median: Option<f64>,
    pub p99_ms_median: Option<f64>,
    pub task_api_cpu_ms_per_req_median: Option<f64>,
    pub daprd_cpu_ms_per_req_median: Option<f64>,
    pub backends_cpu_ms_per_req_median: Option<f64>,
    /// Failed requests in every round, warm-up included.
    pub errors: u64,
}

/// The median; of an even count, the mean of the middle two.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

impl Summary {
    fn of(runs: &[ConfigRun], request: &'static str, config: Config) -> Self {
        let mine: Vec<(usize, &RequestRun)> = runs
            .iter()
            .filter(|r| r.configuration == config.name())
            .filter_map(|r| r.request(request).map(|q| (r.round, q)))
            .collect();
        let off_in = |round: usize| {
            runs.iter()
                .find(|r| r.round == round && r.configuration == Config::Off.name())
                .and_then(|r| r.request(request))
        };
        let ratio_per_round: Vec<f64> = mine
            .iter()
            .filter_map(|(round, q)| {
                let off = off_in(*round)?.figures.rps;
                (off > 0.0).then(|| q.figures.rps / off)
            })
            .collect();
        let figure = |f: fn(&RequestRun) -> Option<f64>| median(mine.iter().filter_map(|q| f(q.1)));
        let rps_per_round: Vec<f64> = mine.iter().map(|(_, q)| q.figures.rps).collect();
        Self {
            request,
            configuration: config.name(),
            rounds: mine.len(),
            rps_median: median(rps_per_round.iter().copied()),
            rps_per_round,
            ratio_to_off: median(ratio_per_round.iter().copied()),
            ratio_per_round,
            p50_ms_median: figure(|q| q.figures.p50_ms),
            p99_ms_median: figure(|q| q.figures.p99_ms),
            task_api_cpu_ms_per_req_median: figure(|q| q.figures.task_api_cpu_ms_per_req),
            daprd_cpu_ms_per_req_median: figure(|q| q.figures.daprd_cpu_ms_per_req),
            backends_cpu_ms_per_req_median: figure(|q| q.backends_cpu_ms_per_req),
            errors: mine.iter().map(|(_, q)| q.figures.errors).sum(),
        }
    }

    /// How far `off`'s rps moved between rounds: (max - min) / median. A ratio to `off`
    /// within this of 1 is within the machine's noise.
    fn spread(&self) -> Option<f64> {
        let max = self.rps_per_round.iter().copied().reduce(f64::max)?;
        let min = self.rps_per_round.iter().copied().reduce(f64::min)?;
        self.rps_median
            .filter(|m| *m > 0.0)
            .map(|m| (max - min) / m)
    }
}

/// The targets: with metrics on, and with traces and metrics on, each request keeps
/// [`KEPT_AT_LEAST`] of `off`'s throughput, one at a time and side by side (both figures);
/// no request fails.
pub fn targets(summaries: &[Summary], pairs: &[PairSummary], concurrency: usize) -> Vec<Target> {
    let mut targets: Vec<Target> = summaries
        .iter()
        .filter(|s| s.configuration != Config::Off.name())
        .map(|s| Target {
            name: format!(
                "{} throughput at {concurrency} in flight with {} on",
                s.request, s.configuration
            ),
            requirement: format!(
                "median of the per-round ratios {} rps / off rps >= {KEPT_AT_LEAST}",
                s.configuration
            ),
            actual: s.ratio_to_off,
            pass: s.ratio_to_off.map(|r| r >= KEPT_AT_LEAST),
        })
        .collect();
    for s in pairs {
        let name = |how: &str| {
            format!(
                "{} throughput at {concurrency} in flight with {} on, side by side with off, {how}",
                s.request, s.configuration
            )
        };
        targets.push(Target {
            name: name("by rate"),
            requirement: format!(
                "median of the per-round ratios {} rps / off rps >= {KEPT_AT_LEAST}",
                s.configuration
            ),
            actual: s.ratio_to_off,
            pass: s.ratio_to_off.map(|r| r >= KEPT_AT_LEAST),
        });
        targets.push(Target {
            name: name("by CPU per request"),
            requirement: format!(
                "median of the per-round ratios off CPU/req / {} CPU/req (whole systems) >= {KEPT_AT_LEAST}",
                s.configuration
            ),
            actual: s.cpu_kept,
            pass: s.cpu_kept.map(|r| r >= KEPT_AT_LEAST),
        });
    }
    let errors: u64 = summaries.iter().map(|s| s.errors).sum::<u64>()
        + pairs.iter().map(|s| s.errors).sum::<u64>();
    targets.push(Target {
        name: "request errors".into(),
        requirement: "0".into(),
        actual: Some(errors as f64),
        pass: Some(errors == 0),
    });
    targets
}

#[derive(Debug, Serialize)]
struct Metadata {
    concurrency: usize,
    duration_secs: u64,
    warmup_secs: f64,
    rounds: usize,
    get_pool: usize,
    smoke: bool,
    cores: usize,
    clock_ticks_per_second: f64,
    workers_per_connection: usize,
    components: &'static str,
    configurations: BTreeMap<&'static str, &'static str>,
    order: &'static str,
    shares_the_cores: &'static str,
    started_at_unix: u64,
    elapsed_secs: f64,
}

/// Everything `observe` measured, as written to its JSON file.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    mode: &'static str,
    metadata: Metadata,
    /// `None` when a target was not measured and none was missed.
    all_targets_met: Option<bool>,
    summary: Vec<Summary>,
    side_by_side: Vec<PairSummary>,
    targets: Vec<Target>,
    runs: Vec<ConfigRun>,
    pairs: Vec<PairRun>,
    /// Per configuration, what its backends held at the end.
    exports: Vec<SystemSeen>,
}

fn configurations() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            Config::Off.name(),
            "no METRICS_PORT, no OTEL_* variables, daprd exporting no spans",
        ),
        (
            Config::Metrics.name(),
            "METRICS_PORT set on both apps; Prometheus scraping both apps and both daprd every second",
        ),
        (
            Config::TracesAndMetrics.name(),
            "as metrics, and both apps (OTEL_EXPORTER_OTLP_ENDPOINT, protocol grpc) and both daprd exporting spans to Jaeger's OTLP/gRPC receiver; daprd samplingRate 1",
        ),
        (
            Config::SampledTracesAndMetrics.name(),
            "as traces+metrics with daprd samplingRate 0.1 and the apps' OTEL_TRACES_SAMPLER=parentbased_traceidratio, argument 0.1",
        ),
    ])
}

impl Report {
    pub fn of(
        args: &ObserveArgs,
        measured: Measurements,
        started_at_unix: u64,
        elapsed: Duration,
    ) -> Self {
        let Measurements {
            runs,
            pairs,
            seen: exports,
        } = measured;
        let summary: Vec<Summary> = REQUESTS
            .iter()
            .flat_map(|request| {
                Config::ALL.map(|config| Summary::of(&runs, request.name(), config))
            })
            .collect();
        let side_by_side: Vec<PairSummary> = REQUESTS
            .iter()
            .flat_map(|request| {
                Config::ALL[1..]
                    .iter()
                    .map(|config| PairSummary::of(&pairs, request.name(), *config))
            })
            .collect();
        let targets = targets(&summary, &side_by_side, args.concurrency);
        Self {
            benchmark: "task-api-bench",
            mode: "observe",
            metadata: Metadata {
                concurrency: args.concurrency,
                duration_secs: args.duration.as_secs(),
                warmup_secs: args.warmup.as_secs_f64(),
                rounds: args.rounds,
                get_pool: args.get_pool,
                smoke: args.smoke,
                cores: procfs::cores(),
                clock_ticks_per_second: procfs::clock_ticks_per_second(),
                workers_per_connection: WORKERS_PER_CONNECTION,
                components: "tasks on a private Redis (state store); events on another (Redis streams)",
                configurations: configurations(),
                order: "one system per configuration, started once; each round runs every configuration at GetTask, then every configuration at CreateTask, starting one configuration further than the round before, with a 6 s pause after each run for the exporters; then as many rounds side by side, each configuration loaded at the same time as off, in the same order of requests",
                shares_the_cores: "the load client, task-api, notification-service, both daprd, the servers, Jaeger and Prometheus",
                started_at_unix,
                elapsed_secs: elapsed.as_secs_f64(),
            },
            all_targets_met: all_met(&targets),
            summary,
            side_by_side,
            targets,
            runs,
            pairs,
            exports,
        }
    }

    pub fn errors(&self) -> u64 {
        self.summary.iter().map(|s| s.errors).sum::<u64>()
            + self.side_by_side.iter().map(|s| s.errors).sum::<u64>()
    }

    pub fn print(&self, args: &ObserveArgs) {
        println!(
            "\n## Tracing and metrics: {} in flight, {} round(s) of {:.1} s warm-up + {} s per request\n",
            args.concurrency,
            args.rounds,
            args.warmup.as_secs_f64(),
            args.duration.as_secs()
        );
        println!("{}", table(&self.summary));
        for line in noise_lines(&self.summary) {
            println!("{line}");
        }
        println!(
            "\n### Side by side: each configuration loaded at the same time as off\n\n{}",
            side_by_side_table(&self.side_by_side)
        );
        for run in &self.runs {
            for request in &run.requests {
                for message in &request.figures.error_messages {
                    println!(
                        "Error in {} ({}, round {}): {message}",
                        request.request, run.configuration, run.round
                    );
                }
            }
        }
        for pair in &self.pairs {
            for (system, run) in [("off", &pair.off), (pair.configuration, &pair.with)] {
                for message in &run.figures.error_messages {
                    println!(
                        "Error in {} ({system} beside {}, round {}): {message}",
                        pair.request, pair.configuration, pair.round
                    );
                }
            }
        }
        println!();
        print!("{}", targets_text(&self.targets));
    }
}

fn all_met(targets: &[Target]) -> Option<bool> {
    if targets.iter().any(|t| t.pass == Some(false)) {
        Some(false)
    } else if targets.iter().all(|t| t.pass == Some(true)) {
        Some(true)
    } else {
        None
    }
}

fn figure(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn list(values: &[f64], decimals: usize) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    items.join(", ")
}

/// The table, in markdown: one row per request and configuration.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| request | configuration | rps (median) | rps per round | ratio to off (median) | ratio per round | p50 ms | p99 ms | task-api CPU ms/req | daprd CPU ms/req | Jaeger + Prometheus CPU ms/req | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.request,
            s.configuration,
            figure(s.rps_median, 0),
            list(&s.rps_per_round, 0),
            figure(s.ratio_to_off, 3),
            list(&s.ratio_per_round, 3),
            figure(s.p50_ms_median, 2),
            figure(s.p99_ms_median, 2),
            figure(s.task_api_cpu_ms_per_req_median, 3),
            figure(s.daprd_cpu_ms_per_req_median, 3),
            figure(s.backends_cpu_ms_per_req_median, 3),
            s.errors,
        ));
    }
    out
}

/// The side-by-side table, in markdown: one row per request and configuration.
pub fn side_by_side_table(summaries: &[PairSummary]) -> String {
    let mut out = String::from(
        "| request | configuration | off rps (median) | its rps (median) | rps ratio (median) | rps ratio per round | off CPU ms/req, whole system | its CPU ms/req, whole system | kept by CPU (median) | kept by CPU per round | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s.request,
            s.configuration,
            figure(s.off_rps_median, 0),
            figure(s.rps_median, 0),
            figure(s.ratio_to_off, 3),
            list(&s.ratio_per_round, 3),
            figure(s.off_system_cpu_ms_per_req_median, 3),
            figure(s.system_cpu_ms_per_req_median, 3),
            figure(s.cpu_kept, 3),
            list(&s.cpu_kept_per_round, 3),
            s.errors,
        ));
    }
    out
}

/// How much `off` itself moved between rounds, per request: the noise the ratios sit in.
fn noise_lines(summaries: &[Summary]) -> Vec<String> {
    summaries
        .iter()
        .filter(|s| s.configuration == Config::Off.name() && s.rounds > 1)
        .filter_map(|s| {
            let spread = s.spread()?;
            Some(format!(
                "Noise: off's {} rps moved by {:.1}% of its median between rounds (max - min).",
                s.request,
                spread * 100.0
            ))
        })
        .collect()
}

/// The progress line of one run.
pub fn run_line(config: Config, run: &RequestRun) -> String {
    let f = &run.figures;
    format!(
        "{}: {} {:.0} rps (p50 {} ms, p99 {} ms), task-api {} ms CPU/req, daprd {} ms CPU/req, errors {}",
        config.name(),
        run.request,
        f.rps,
        figure(f.p50_ms, 2),
        figure(f.p99_ms, 2),
        figure(f.task_api_cpu_ms_per_req, 3),
        figure(f.daprd_cpu_ms_per_req, 3),
        f.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        load::{RunResult, Scenario},
        report::RunCost,
    };

    fn run(config: Config, round: usize, get_rps: u32, create_rps: u32) -> ConfigRun {
        let request = |scenario: Scenario, rps: u32| {
            let mut result = RunResult {
                measured_secs: 1.0,
                succeeded: u64::from(rps),
                ..RunResult::default()
            };
            result.latencies[0] = vec![1_000; rps as usize];
            RequestRun {
                request: scenario.name(),
                figures: Measurement::of(&result, scenario, RunCost::default()),
                backends_cpu_ms_per_req: None,
                system_cpu_ms_per_req: Some(1_000.0 / f64::from(rps)),
            }
        };
        ConfigRun {
            configuration: config.name(),
            round,
            position: 1,
            requests: vec![
                request(Scenario::Get, get_rps),
                request(Scenario::Create, create_rps),
            ],
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }

    #[test]
    fn ratios_are_per_round_against_that_rounds_off() {
        use Config::*;
        let runs = vec![
            run(Off, 1, 1000, 500),
            run(TracesAndMetrics, 1, 960, 450),
            run(Off, 2, 800, 500),
            run(TracesAndMetrics, 2, 780, 490),
            run(Off, 3, 1000, 500),
            run(TracesAndMetrics, 3, 900, 480),
        ];
        let get = Summary::of(&runs, "GetTask", TracesAndMetrics);
        assert_eq!(get.rounds, 3);
        assert_eq!(get.ratio_per_round, [0.96, 0.975, 0.9]);
        assert_eq!(get.ratio_to_off, Some(0.96));
        assert_eq!(get.rps_median, Some(900.0));
        let off = Summary::of(&runs, "GetTask", Off);
        assert_eq!(off.ratio_to_off, Some(1.0));
        assert_eq!(off.spread(), Some(0.2));
        let create = Summary::of(&runs, "CreateTask", TracesAndMetrics);
        assert_eq!(create.ratio_to_off, Some(0.96));
        let targets = targets(&[get, create, off], &[], 16);
        let verdicts: Vec<Option<bool>> = targets.iter().map(|t| t.pass).collect();
        assert_eq!(verdicts, [Some(true), Some(true), Some(true)]);
        assert!(targets[0].name.starts_with("GetTask throughput at 16"));
    }

    #[test]
    fn side_by_side_ratios_are_of_runs_in_the_same_seconds() {
        use Config::*;
        let pair = |round: usize, off: ConfigRun, with: ConfigRun| PairRun {
            configuration: with.configuration,
            round,
            request: "CreateTask",
            off: off.requests[1].clone(),
            with: with.requests[1].clone(),
        };
        // CPU per request here is 1 s over the rate: a slower run costs more per request.
        let pairs = vec![
            pair(
                1,
                run(Off, 1, 0, 500),
                run(SampledTracesAndMetrics, 1, 0, 490),
            ),
            pair(
                2,
                run(Off, 2, 0, 400),
                run(SampledTracesAndMetrics, 2, 0, 360),
            ),
            pair(
                3,
                run(Off, 3, 0, 1000),
                run(SampledTracesAndMetrics, 3, 0, 970),
            ),
            pair(1, run(Off, 1, 0, 500), run(Metrics, 1, 0, 500)),
        ];
        let sampled = PairSummary::of(&pairs, "CreateTask", SampledTracesAndMetrics);
        assert_eq!(sampled.rounds, 3);
        assert_eq!(sampled.ratio_per_round, [0.98, 0.9, 0.97]);
        assert_eq!(sampled.ratio_to_off, Some(0.97));
        assert_eq!(sampled.off_rps_median, Some(500.0));
        let kept = sampled.cpu_kept.unwrap();
        assert!((kept - 0.97).abs() < 1e-9, "{kept}");
        let metrics = PairSummary::of(&pairs, "CreateTask", Metrics);
        assert_eq!(metrics.ratio_to_off, Some(1.0));
        let verdicts: Vec<Option<bool>> = targets(&[], &[sampled, metrics], 16)
            .iter()
            .map(|t| t.pass)
            .collect();
        assert_eq!(
            verdicts,
            [Some(true), Some(true), Some(true), Some(true), Some(true)]
        );
        let failing = PairSummary::of(&pairs[1..2], "CreateTask", SampledTracesAndMetrics);
        let verdicts: Vec<Option<bool>> = targets(&[], &[failing], 16)
            .iter()
            .map(|t| t.pass)
            .collect();
        assert_eq!(verdicts, [Some(false), Some(false), Some(true)]);
    }
}
