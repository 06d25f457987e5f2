//! task-api-bench: task-api's throughput, latency, CPU, memory and event delivery, each
//! request type against a plain Dapr app's calls for it sent straight to task-api's daprd, on
//! Redis streams and on Kafka; the highest write rate task-api holds with every completion
//! notified; and what tracing and metrics cost.
//!
//! Run it with `scripts/bench` (which builds it and the apps in release mode); see
//! crates/bench/README.md for what it measures and how to read the tables.

mod args;
mod backlog;
mod bench;
mod brokers;
mod cost;
mod drive;
mod error;
mod events;
mod exports;
mod listing;
mod load;
mod observe;
mod observe_report;
mod offsets;
mod ops;
mod procfs;
mod report;
mod simple_app;
mod store_ops;
mod sustained;
mod system;

use std::{path::Path, process::ExitCode, time::Instant};

use serde::Serialize;

use crate::{
    args::{Args, Parsed, USAGE},
    bench::{BrokerReport, WORKERS_PER_CONNECTION},
    brokers::broker_name,
    error::{BenchError, Result, failed},
    system::System,
};

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
        Ok(Parsed::Sustained(sustained)) => return sustained::main(&sustained).await,
        Ok(Parsed::Observe(observe)) => return observe::main(&observe).await,
        Ok(Parsed::SimpleApp(simple_app)) => return simple_app::main(&simple_app).await,
        Ok(Parsed::ServeSimpleApp) => return simple_app::server::main().await,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("task-api-bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_main(&args).await {
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

/// The main benchmark on each broker in turn, each on a system of its own; `Ok(Some(reason))`
/// when requests failed or events were lost.
async fn run_main(args: &Args) -> Result<Option<String>> {
    let started = Instant::now();
    let started_unix = bench::unix_now();
    let mut reports = Vec::new();
    for &broker in &args.brokers {
        say(&format!(
            "{}: starting the state store and broker, notification-service and task-api, each app with its daprd",
            broker_name(broker)
        ));
        let mut system = System::start(broker, None).await?;
        let outcome = bench::on_system(args, &mut system, broker).await;
        if outcome.is_err() {
            eprint!("{}", system.log_tails(30));
        }
        say("stopping the apps and their sidecars");
        system.stop();
        drop(system);
        reports.push(outcome?);
    }
    for report in &reports {
        print_report(report);
    }
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
            components: "tasks on a private Redis (state store); events on Redis streams or a private Kafka broker (pub/sub)",
            mix: "50% GetTask, 20% CreateTask, 20% UpdateTaskStatus to completed, 10% ListTasks (first page of 20)",
            shares_the_cores: "the load client, task-api, notification-service, both daprd and the servers",
            started_at_unix: started_unix,
            elapsed_secs: started.elapsed().as_secs_f64(),
        },
        all_targets_met: all_met(reports.iter().flat_map(|r| &r.targets)),
        brokers: &reports,
    };
    write_json(&args.out, &file)?;
    println!(
        "\n{cores} cores, shared by the load client, task-api, notification-service, both daprd and the servers. Results: {}",
        args.out.display()
    );
    let errors: u64 = reports.iter().map(BrokerReport::errors).sum();
    let missing: usize = reports.iter().map(BrokerReport::missing_events).sum();
    Ok(match (errors, missing) {
        (0, 0) => None,
        (errors, missing) => Some(format!(
            "{errors} requests failed and {missing} sampled notifications were lost or unreadable"
        )),
    })
}

fn print_report(report: &BrokerReport) {
    println!("\n## {}\n", report.broker);
    println!("{}", report::table(&report.scenarios));
    println!(
        "Store operations per request (Redis commands the sidecars sent, counted by the servers, from a run's start until its events were handled):\n"
    );
    println!("{}", report::store_ops_table(&report.scenarios));
    println!("{}", report::memory_line(&report.memory));
    println!("{}", report::events_line(&report.events));
    if let Some(problem) = &report.events.overall.first_problem {
        println!("First event problem: {problem}");
    }
    for r in &report.scenarios {
        for (side, m) in [("task-api", &r.task_api), ("plain", &r.plain)] {
            for message in &m.error_messages {
                println!(
                    "Error in {} at {} ({side}): {message}",
                    r.scenario, r.concurrency
                );
            }
        }
    }
    for note in &report.notes {
        println!("Note: {note}");
    }
    println!();
    print!("{}", report::targets_text(&report.targets));
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
    /// `None` when some target was not measured and none was missed.
    all_targets_met: Option<bool>,
    brokers: &'a [BrokerReport],
}

fn all_met<'a>(targets: impl Iterator<Item = &'a report::Target> + Clone) -> Option<bool> {
    if targets.clone().any(|t| t.pass == Some(false)) {
        Some(false)
    } else if targets.into_iter().all(|t| t.pass == Some(true)) {
        Some(true)
    } else {
        None
    }
}

pub fn write_json(path: &Path, file: &impl Serialize) -> Result<()> {
    let write_error = |source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let json = serde_json::to_string_pretty(file).map_err(failed("encoding the results"))?;
    std::fs::write(path, json + "\n").map_err(write_error)
}
