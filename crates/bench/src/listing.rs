//! `task-api-bench list`: what a ListTasks page costs as the number of tasks grows.
//!
//! For each store, the system starts empty and is filled to each size in turn (1,000, then
//! 10,000, then 100,000 tasks by default). Tasks are written fast, straight through task-api's
//! sidecar, but with task-api's own code: the stored record is what CreateTask (and, for the 1%
//! that are completed, UpdateTaskStatus) stores, and the list entries are written by task-api's
//! own index, batched as concurrent creates batch them. At each size it measures the first page
//! of 20, unfiltered and filtered by the status 1% of tasks have (completed), one caller at a
//! time, then 8 callers at once; and task-api's memory.

use std::time::Duration;

use devstack::ComponentSet;
use serde::Serialize;
use task_api::{
    config::SidecarConfig,
    domain::{NewTask, Nonce, Priority, Task, TaskEventType, TaskId, TaskRecord, TaskStatus, time},
    proto::task::v1 as pb,
    stored::Loader,
};

use crate::{
    cost::{ms, store_name},
    drive::{Called, Figures, drive},
    error::{CallError, Result, failed, setup},
    ops::{self, TaskClient},
    procfs,
    system::System,
};

/// Tasks written per batch while filling.
const FILL_BATCH: usize = 2_000;
/// One task in this many is completed.
const COMPLETED_EVERY: usize = 100;

#[derive(Debug, Clone)]
pub struct ListArgs {
    pub stores: Vec<ComponentSet>,
    pub sizes: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub store: &'static str,
    pub tasks: usize,
    pub unfiltered: Figures,
    pub filtered: Figures,
    pub unfiltered_8: Figures,
    pub filtered_8: Figures,
    pub task_api_rss_kib: Option<u64>,
    pub task_api_peak_rss_kib: Option<u64>,
}

fn say(line: &str) {
    eprintln!("==> {line}");
}

pub async fn run(args: &ListArgs) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &store in &args.stores {
        say(&format!("{}: starting an empty system", store_name(store)));
        let mut system = System::start(store, None).await?;
        let outcome = measure(args, &mut system, store, &mut rows).await;
        if outcome.is_err() {
            eprint!("{}", system.log_tails(30));
        }
        system.stop();
        outcome?;
    }
    Ok(rows)
}

async fn measure(
    args: &ListArgs,
    system: &mut System,
    store: ComponentSet,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let sidecar = SidecarConfig {
        endpoint: format!("http://127.0.0.1:{}", system.task_api.sidecar.grpc_port()),
        api_token: None,
        wait: Duration::from_secs(30),
        call_timeout: Duration::from_secs(60),
    };
    let loader =
        Loader::new(&sidecar, ops::STATE_STORE).map_err(failed("reaching the state store"))?;
    let template = ops::new_task()?;
    let clients = system.task_clients(2).await?;

    let mut filled = 0;
    for &size in &args.sizes {
        if size > filled {
            say(&format!("{}: filling to {size} tasks", store_name(store)));
            fill(&loader, &template, filled, size).await?;
            filled = size;
        }
        let [unfiltered, filtered, unfiltered_8, filtered_8] = first_pages(args, &clients).await?;
        let row = Row {
            store: store_name(store),
            tasks: size,
            task_api_rss_kib: procfs::status_kib(system.task_api.pid(), "VmRSS"),
            task_api_peak_rss_kib: procfs::status_kib(system.task_api.pid(), "VmHWM"),
            unfiltered,
            filtered,
            unfiltered_8,
            filtered_8,
        };
        say(&format!(
            "{} at {size}: unfiltered p50 {} ms, completed p50 {} ms, 8 at once p99 {} / {} ms",
            row.store,
            ms(row.unfiltered.p50_ms),
            ms(row.filtered.p50_ms),
            ms(row.unfiltered_8.p99_ms),
            ms(row.filtered_8.p99_ms)
        ));
        rows.push(row);
        system.check_running()?;
    }
    Ok(())
}

/// First pages of 20, unfiltered and of completed tasks, by one caller and by eight at once.
async fn first_pages(args: &ListArgs, clients: &[TaskClient]) -> Result<[Figures; 4]> {
    let page = |status: TaskStatus| pb::ListTasksRequest {
        status: match status {
            TaskStatus::Completed => pb::TaskStatus::Completed as i32,
            _ => pb::TaskStatus::Unspecified as i32,
        },
        page_size: 20,
        ..Default::default()
    };
    let mut figures = Vec::new();
    for (callers, status) in [
        (1, TaskStatus::Pending),
        (1, TaskStatus::Completed),
        (8, TaskStatus::Pending),
        (8, TaskStatus::Completed),
    ] {
        let request = page(status);
        let clients = clients.to_vec();
        figures.push(
            drive(callers, args.warmup, args.duration, move |worker| {
                let mut client: TaskClient = clients[worker % clients.len()].clone();
                let request = request.clone();
                async move {
                    let page = client.list_tasks(request).await?.into_inner();
                    // 20, or all there are (1% of 1,000 tasks is 10).
                    if page.tasks.is_empty() || page.tasks.len() > 20 {
                        return Err(CallError::Wrong(format!(
                            "a first page of {} tasks",
                            page.tasks.len()
                        )));
                    }
                    Ok(Called::Done)
                }
            })
            .await,
        );
    }
    <[Figures; 4]>::try_from(figures).map_err(|_| setup("four runs"))
}

/// Writes tasks `from..to`, with their list entries, through task-api's own loader.
async fn fill(loader: &Loader, template: &NewTask, from: usize, to: usize) -> Result<()> {
    let mut n = from;
    while n < to {
        let end = (n + FILL_BATCH).min(to);
        let mut records = Vec::with_capacity(end - n);
        for k in n..end {
            let mut new = template.clone();
            new.priority = Priority::ALL[k % Priority::ALL.len()];
            let task = Task::create(TaskId::generate(), new, time::now());
            let mut record = TaskRecord::create(task, Nonce::random()).record;
            if k % COMPLETED_EVERY == COMPLETED_EVERY - 1 {
                let mut done = record.live().cloned().ok_or_else(|| setup("not live"))?;
                done.set_status(TaskStatus::Completed, time::now());
                record = record
                    .update(
                        done,
                        TaskEventType::StatusChanged(TaskStatus::Completed),
                        Nonce::random(),
                    )
                    .ok_or_else(|| setup("not live"))?
                    .record;
            }
            records.push(record);
        }
        for chunk in records.chunks(500) {
            loader.load(chunk).await.map_err(failed("loading tasks"))?;
        }
        n = end;
    }
    Ok(())
}

/// The list table, with the targets: p50 at the largest size within 2x of the smallest; 8 at
/// once, filtered, p99 under 100 ms at the largest; task-api under 30 MiB.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| store | tasks | first page p50 / p99 ms | completed (1%) p50 / p99 ms | 8 at once p99 ms, all / completed | task-api RSS MiB (peak) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mib =
        |kib: Option<u64>| kib.map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} / {} | {} / {} | {} / {} | {} ({}) |\n",
            row.store,
            row.tasks,
            ms(row.unfiltered.p50_ms),
            ms(row.unfiltered.p99_ms),
            ms(row.filtered.p50_ms),
            ms(row.filtered.p99_ms),
            ms(row.unfiltered_8.p99_ms),
            ms(row.filtered_8.p99_ms),
            mib(row.task_api_rss_kib),
            mib(row.task_api_peak_rss_kib),
        ));
    }
    out
}

/// Each target, met or not, per store.
pub fn targets(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let stores: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.store).collect();
    for store in stores {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.store == store).collect();
        let (Some(small), Some(large)) = (mine.first(), mine.last()) else {
            continue;
        };
        for (what, a, b) in [
            (
                "first page",
                small.unfiltered.p50_ms,
                large.unfiltered.p50_ms,
            ),
            (
                "completed page",
                small.filtered.p50_ms,
                large.filtered.p50_ms,
            ),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                let ratio = b / a;
                out.push(format!(
                    "{store}: {what} p50 at {} is {ratio:.2}x its p50 at {} (target at most 2x): {}",
                    large.tasks,
                    small.tasks,
                    verdict(ratio <= 2.0)
                ));
            }
        }
        if let Some(p99) = large.filtered_8.p99_ms {
            out.push(format!(
                "{store}: 8 filtered lists at once at {} tasks, p99 {p99:.1} ms (target under 100): {}",
                large.tasks,
                verdict(p99 < 100.0)
            ));
        }
        if let Some(peak) = mine.iter().filter_map(|r| r.task_api_peak_rss_kib).max() {
            let mib = peak as f64 / 1024.0;
            out.push(format!(
                "{store}: task-api peak RSS {mib:.1} MiB (target under 30): {}",
                verdict(mib < 30.0)
            ));
        }
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
