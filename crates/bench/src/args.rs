//! Command-line options.

use std::{path::PathBuf, time::Duration};

pub const USAGE: &str = "usage: task-api-bench [options]
       task-api-bench cost --baseline DIR [--label NAME] [--stores LIST] [--concurrency LIST] [--duration-secs N] [--smoke]
       task-api-bench list [--stores LIST] [--sizes LIST] [--duration-secs N] [--smoke]
       task-api-bench brokers [--brokers LIST] [--concurrency LIST] [--duration-secs N] [--smoke]

Without a command: starts Redis, notification-service and task-api with their Dapr sidecars,
then measures task-api against the Dapr calls it makes (the ceiling) at each concurrency level.

cost: CreateTask, UpdateTaskStatus and DeleteTask through the task-api and notification-service
binaries in DIR (an earlier build) and through this build, on each store (default
redis,postgresql; concurrency 16,64; 10 s per run).

list: ListTasks' first page at 1,000, 10,000 and 100,000 tasks (--sizes), unfiltered and by the
status 1% of tasks have, one caller and 8 at once, on each store.

brokers: UpdateTaskStatus throughput and completion-to-notification latency (p50, p99, lost,
duplicated) on each broker (default in-memory,redis,kafka; concurrency 1,16; 10 s per run).

  --concurrency LIST     in-flight requests per level, comma-separated (default 1,16,64)
  --duration-secs N      measured seconds per scenario and level (default 10)
  --warmup-secs X        unmeasured seconds before each measurement (default 1)
  --get-pool N           tasks created up front for GetTask and the mix (default 1000)
  --max-pool N           most pending tasks prepared for one status-change run (default 100000)
  --out PATH             where the JSON results go (default target/bench/results.json)
  --smoke                a few seconds in all: concurrency 1,4, 1 s per scenario, small pools
  -h, --help             this text";

/// What to run.
#[derive(Debug, Clone)]
pub struct Args {
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub get_pool: usize,
    pub max_pool: usize,
    /// Most completions per level whose notification is timed.
    pub sample_cap: usize,
    pub out: PathBuf,
    pub smoke: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Args),
    Cost(crate::cost::CostArgs),
    List(crate::listing::ListArgs),
    Brokers(crate::brokers::BrokerArgs),
    Help,
}

/// Reads the command and its options; `--smoke` changes the defaults, explicit options still
/// win.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut args = args.into_iter().peekable();
    match args.peek().map(String::as_str) {
        Some("cost") => {
            args.next();
            parse_cost(args)
        }
        Some("list") => {
            args.next();
            parse_list(args)
        }
        Some("brokers") => {
            args.next();
            parse_brokers(args)
        }
        _ => parse_ceiling(args),
    }
}

/// `--name value` or `--name=value` pairs, and bare flags.
fn options(
    args: impl IntoIterator<Item = String>,
) -> Result<Vec<(String, Option<String>)>, String> {
    const FLAGS: [&str; 3] = ["--smoke", "-h", "--help"];
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.split_once('=') {
            Some((name, value)) => out.push((name.to_string(), Some(value.to_string()))),
            None if FLAGS.contains(&arg.as_str()) => out.push((arg, None)),
            None => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                out.push((arg, Some(value)));
            }
        }
    }
    Ok(out)
}

fn parse_stores(text: &str) -> Result<Vec<devstack::ComponentSet>, String> {
    text.split(',')
        .map(|store| match store.trim() {
            "redis" => Ok(devstack::ComponentSet::Redis),
            "postgresql" | "postgres" => Ok(devstack::ComponentSet::Postgres),
            other => Err(format!("unknown store {other:?}: redis or postgresql")),
        })
        .collect()
}

fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    let mut sizes = text
        .split(',')
        .map(|s| number("--sizes", s.trim(), 20, 1_000_000))
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

fn parse_cost(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let options = options(args)?;
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut cost = crate::cost::CostArgs {
        baseline: std::path::PathBuf::new(),
        baseline_label: "baseline".into(),
        stores: vec![
            devstack::ComponentSet::Redis,
            devstack::ComponentSet::Postgres,
        ],
        concurrency: if smoke { vec![4] } else { vec![16, 64] },
        warmup: Duration::from_millis(if smoke { 300 } else { 1000 }),
        duration: Duration::from_secs(if smoke { 1 } else { 10 }),
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--baseline" => cost.baseline = value.into(),
            "--label" => cost.baseline_label = value,
            "--stores" => cost.stores = parse_stores(&value)?,
            "--concurrency" => cost.concurrency = parse_levels(&value)?,
            "--duration-secs" => {
                cost.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            _ => return Err(format!("unknown option {name:?} for cost")),
        }
    }
    if cost.baseline.as_os_str().is_empty() {
        return Err("cost needs --baseline DIR (a directory with an earlier build's task-api and notification-service)".into());
    }
    Ok(Parsed::Cost(cost))
}

fn parse_list(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let options = options(args)?;
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut list = crate::listing::ListArgs {
        stores: vec![
            devstack::ComponentSet::Redis,
            devstack::ComponentSet::Postgres,
        ],
        sizes: if smoke {
            vec![100, 1_000]
        } else {
            vec![1_000, 10_000, 100_000]
        },
        warmup: Duration::from_millis(if smoke { 200 } else { 1000 }),
        duration: Duration::from_secs(if smoke { 1 } else { 5 }),
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--stores" => list.stores = parse_stores(&value)?,
            "--sizes" => list.sizes = parse_sizes(&value)?,
            "--duration-secs" => {
                list.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            _ => return Err(format!("unknown option {name:?} for list")),
        }
    }
    Ok(Parsed::List(list))
}

fn parse_brokers(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let options = options(args)?;
    let smoke = options.iter().any(|(n, _)| n == "--smoke");
    let mut brokers = if smoke {
        crate::brokers::BrokerArgs::smoke()
    } else {
        crate::brokers::BrokerArgs::default()
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--brokers" => {
                brokers.brokers = value
                    .split(',')
                    .map(|broker| match broker.trim() {
                        "in-memory" => Ok(devstack::ComponentSet::InMemory),
                        "redis" => Ok(devstack::ComponentSet::Redis),
                        "kafka" => Ok(devstack::ComponentSet::Kafka),
                        other => Err(format!(
                            "unknown broker {other:?}: in-memory, redis or kafka"
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--concurrency" => brokers.concurrency = parse_levels(&value)?,
            "--duration-secs" => {
                brokers.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            _ => return Err(format!("unknown option {name:?} for brokers")),
        }
    }
    Ok(Parsed::Brokers(brokers))
}

/// The ceiling benchmark's options.
fn parse_ceiling(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut concurrency = None;
    let mut duration = None;
    let mut warmup = None;
    let mut get_pool = None;
    let mut max_pool = None;
    let mut out = None;
    let mut smoke = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(value) => Ok(value.clone()),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => smoke = true,
            "--concurrency" => concurrency = Some(parse_levels(&value()?)?),
            "--duration-secs" => duration = Some(number(&name, &value()?, 1, 3600)?),
            "--warmup-secs" => warmup = Some(seconds(&name, &value()?)?),
            "--get-pool" => get_pool = Some(number(&name, &value()?, 1, 100_000)?),
            "--max-pool" => max_pool = Some(number(&name, &value()?, 1, 1_000_000)?),
            "--out" => out = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown option {arg:?}")),
        }
    }
    Ok(Parsed::Run(Args {
        concurrency: concurrency.unwrap_or_else(
            || {
                if smoke { vec![1, 4] } else { vec![1, 16, 64] }
            },
        ),
        duration: Duration::from_secs(duration.unwrap_or(if smoke { 1 } else { 10 }) as u64),
        warmup: warmup.unwrap_or(Duration::from_millis(if smoke { 300 } else { 1000 })),
        get_pool: get_pool.unwrap_or(if smoke { 50 } else { 1000 }),
        max_pool: max_pool.unwrap_or(if smoke { 5_000 } else { 100_000 }),
        sample_cap: if smoke { 50 } else { 300 },
        out: out.unwrap_or_else(|| PathBuf::from("target/bench/results.json")),
        smoke,
    }))
}

fn parse_levels(text: &str) -> Result<Vec<usize>, String> {
    let mut levels = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = number("--concurrency", part, 1, 1024)?;
        if !levels.contains(&level) {
            levels.push(level);
        }
    }
    if levels.is_empty() {
        return Err("--concurrency needs at least one level".into());
    }
    Ok(levels)
}

fn number(name: &str, text: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be a whole number from {min} to {max}, got {text:?}"
        )),
    }
}

fn seconds(name: &str, text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=60.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{name} must be 0 to 60 seconds, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(|a| a.to_string()))? {
            Parsed::Run(args) => Ok(args),
            _ => Err("not the ceiling benchmark".into()),
        }
    }

    #[test]
    fn defaults_and_smoke() {
        let normal = run(&[]).unwrap();
        assert_eq!(normal.concurrency, [1, 16, 64]);
        assert_eq!(normal.duration, Duration::from_secs(10));
        let smoke = run(&["--smoke"]).unwrap();
        assert_eq!(smoke.concurrency, [1, 4]);
        assert_eq!(smoke.duration, Duration::from_secs(1));
        let both = run(&["--smoke", "--concurrency=2"]).unwrap();
        assert_eq!(both.concurrency, [2]);
    }

    #[test]
    fn commands() {
        let Ok(Parsed::Cost(cost)) =
            parse(["cost", "--baseline", "/b", "--stores=redis", "--smoke"].map(String::from))
        else {
            panic!("cost")
        };
        assert_eq!(cost.stores, [devstack::ComponentSet::Redis]);
        assert_eq!(cost.concurrency, [4]);
        assert!(
            parse(["cost"].map(String::from)).is_err(),
            "needs a baseline"
        );
        let Ok(Parsed::List(list)) = parse(["list", "--sizes", "5000,1000"].map(String::from))
        else {
            panic!("list")
        };
        assert_eq!(list.sizes, [1000, 5000]);
        assert!(parse(["list", "--stores", "mongo"].map(String::from)).is_err());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(run(&["--concurrency", "0"]).is_err());
        assert!(run(&["--concurrency", "a,b"]).is_err());
        assert!(run(&["--duration-secs"]).is_err());
        assert!(run(&["--warmup-secs", "-1"]).is_err());
        assert!(run(&["--bogus"]).is_err());
    }
}
