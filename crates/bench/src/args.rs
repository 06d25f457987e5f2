//! Command-line options.

use std::{path::PathBuf, time::Duration};

pub const USAGE: &str = "usage: task-api-bench [options]
       task-api-bench sustained [--brokers LIST] [--rate N | --start-rate N --max-rate N --step-secs N] [--hold-secs N] [--out PATH] [--smoke]
       task-api-bench cost --baseline DIR [--label NAME] [--stores LIST] [--concurrency LIST] [--duration-secs N] [--rounds N] [--smoke]
       task-api-bench list [--stores LIST] [--sizes LIST] [--duration-secs N] [--smoke]
       task-api-bench brokers [--brokers LIST] [--concurrency LIST] [--duration-secs N] [--smoke]
       task-api-bench observe [--concurrency N] [--duration-secs N] [--warmup-secs X] [--rounds N] [--get-pool N] [--out PATH] [--smoke]
       task-api-bench simple-app [--brokers LIST] [--concurrency LIST] [--duration-secs N] [--warmup-secs X] [--pool N] [--out PATH] [--smoke]

Without a command: on each broker (tasks on Redis; events on Redis streams, then Kafka), starts
the servers, notification-service and task-api with their Dapr sidecars, then measures every
request type through task-api against the plain app (the calls a simple Dapr app makes for it,
sent straight to task-api's daprd) at each concurrency level.

sustained: open-loop CreateTask and UpdateTaskStatus(completed), half each: a ramp of rising
rates finds the highest that task-api keeps up with (calls and events), then 80% of it is held
(default 60 s) and every completion's notification is timed; the backlog left when the load
stops is timed too (default brokers redis,kafka).

cost: CreateTask, UpdateTaskStatus and DeleteTask through the task-api and notification-service
binaries in DIR (an earlier build) and through this build, on each store (default
redis,postgresql; or kafka: tasks on Redis, events on Kafka; concurrency 16,64; 10 s per
run). Both run at once, each on a system of its own, loaded in turn: --rounds rounds (default
3), the builds' order alternating; medians and the median of the per-round ratios are reported.

list: ListTasks' first page at 1,000, 10,000 and 100,000 tasks (--sizes), unfiltered and by the
status 1% of tasks have, one caller and 8 at once, on each store.

brokers: UpdateTaskStatus throughput and completion-to-notification latency (p50, p99, lost,
duplicated) on each broker (default redis,kafka; concurrency 1,16; 10 s per run).

observe: what tracing and metrics cost. GetTask and CreateTask at 16 in flight (--concurrency),
on Redis, in four configurations, each on a system of its own, started once and kept running:
off (no METRICS_PORT, no OTEL_*), metrics (METRICS_PORT, Prometheus scraping both apps and both
daprd every second), traces+metrics (also the apps' and both daprd's spans to Jaeger over
OTLP/gRPC, every request traced) and traces 10%+metrics (one trace in ten). Each round runs every
configuration at each request in turn, 6 s apart, for --rounds rounds (default 3; 1 s warm-up +
10 s per request), then as many rounds side by side: each configuration loaded at the same time
as off; the median rps, p50/p99, the median of the per-round ratios to off and, side by side, of
the ratios of rates and of whole-system CPU per request are reported (target/bench/observe.json).
Exit status 2 when an export did not arrive: Prometheus did not scrape every target or count
every call, Jaeger holds no trace of a request with task-api's and its daprd's spans, or an app
dropped spans. --smoke: one round of each, 0.5 s warm-up + 2 s per request.

simple-app: what an app between the caller and its sidecar costs on its own. Each write and
GetTask three ways, one after the other at each level (default Redis streams; concurrency
1,16,64; 10 s per run): the plain calls straight to task-api's daprd, the same calls made by the
simple app (this benchmark's binary serving TaskService with nothing but those calls, through a
daprd of its own), and task-api (target/bench/simple-app.json). --smoke: concurrency 4, 1 s per
run.

  --brokers LIST         redis, kafka or both, comma-separated (default redis,kafka; --broker NAME
                         for one)
  --concurrency LIST     in-flight requests per level, comma-separated (default 1,16,64)
  --duration-secs N      measured seconds per scenario and level (default 10)
  --warmup-secs X        unmeasured seconds before each measurement (default 1)
  --get-pool N           tasks created up front for GetTask and the mix (default 1000)
  --max-pool N           most pending tasks prepared for one status-change run (default 100000)
  --out PATH             where the JSON results go (default target/bench/results.json)
  --smoke                a quick check: Redis only, concurrency 1,4, 1 s per scenario, small pools
  -h, --help             this text";

/// What to run.
#[derive(Debug, Clone)]
pub struct Args {
    pub brokers: Vec<devstack::ComponentSet>,
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
    Sustained(crate::sustained::SustainedArgs),
    Observe(crate::observe::ObserveArgs),
    SimpleApp(crate::simple_app::SimpleAppArgs),
    /// Serve the simple app (how `simple-app` starts it).
    ServeSimpleApp,
    Help,
}

/// The command that makes this binary serve the simple app.
pub const SERVE_SIMPLE_APP: &str = "serve-simple-app";

/// Why the command line was refused: said to the user, with the usage.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

impl From<String> for UsageError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for UsageError {
    fn from(message: &str) -> Self {
        Self(message.to_string())
    }
}

/// Reads the command and its options; `--smoke` changes the defaults, explicit options still
/// win.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
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
        Some("sustained") => {
            args.next();
            crate::sustained::parse(options(args)?)
        }
        Some("observe") => {
            args.next();
            crate::observe::parse(options(args)?)
        }
        Some("simple-app") => {
            args.next();
            crate::simple_app::parse(options(args)?)
        }
        Some(SERVE_SIMPLE_APP) => Ok(Parsed::ServeSimpleApp),
        _ => parse_main(args),
    }
}

/// `--name value` or `--name=value` pairs, and bare flags.
pub fn options(
    args: impl IntoIterator<Item = String>,
) -> Result<Vec<(String, Option<String>)>, UsageError> {
    const FLAGS: [&str; 3] = ["--smoke", "-h", "--help"];
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.split_once('=') {
            Some((name, value)) => out.push((name.to_string(), Some(value.to_string()))),
            None if FLAGS.contains(&arg.as_str()) => out.push((arg, None)),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| UsageError::from(format!("{arg} needs a value")))?;
                out.push((arg, Some(value)));
            }
        }
    }
    Ok(out)
}

/// The component set a store's name selects (tasks there; PostgreSQL's events on Redis).
fn store_named(name: &str) -> Option<devstack::ComponentSet> {
    match name {
        "redis" => Some(devstack::ComponentSet::Redis),
        "postgresql" | "postgres" => Some(devstack::ComponentSet::Postgres),
        _ => None,
    }
}

/// Systems to compare builds on: the stores, or `kafka` (tasks on Redis, events on Kafka), where
/// what differs between builds is how they use the broker.
fn parse_systems(text: &str) -> Result<Vec<devstack::ComponentSet>, UsageError> {
    text.split(',')
        .map(|name| match name.trim() {
            "kafka" => Ok(devstack::ComponentSet::Kafka),
            other => store_named(other).ok_or_else(|| {
                format!("unknown system {other:?}: redis, postgresql or kafka").into()
            }),
        })
        .collect()
}

fn parse_stores(text: &str) -> Result<Vec<devstack::ComponentSet>, UsageError> {
    text.split(',')
        .map(|name| {
            let name = name.trim();
            store_named(name)
                .ok_or_else(|| format!("unknown store {name:?}: redis or postgresql").into())
        })
        .collect()
}

fn parse_sizes(text: &str) -> Result<Vec<usize>, UsageError> {
    let mut sizes = text
        .split(',')
        .map(|s| number("--sizes", s.trim(), 20, 1_000_000))
        .collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

fn parse_cost(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
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
        rounds: if smoke { 1 } else { 3 },
    };
    for (name, value) in options {
        let value = value.unwrap_or_default();
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => {}
            "--rounds" => cost.rounds = number(&name, &value, 1, 20)?,
            "--baseline" => cost.baseline = value.into(),
            "--label" => cost.baseline_label = value,
            "--stores" => cost.stores = parse_systems(&value)?,
            "--concurrency" => cost.concurrency = parse_levels(&value)?,
            "--duration-secs" => {
                cost.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            _ => return Err(format!("unknown option {name:?} for cost").into()),
        }
    }
    if cost.baseline.as_os_str().is_empty() {
        return Err("cost needs --baseline DIR (a directory with an earlier build's task-api and notification-service)".into());
    }
    Ok(Parsed::Cost(cost))
}

fn parse_list(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
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
            _ => return Err(format!("unknown option {name:?} for list").into()),
        }
    }
    Ok(Parsed::List(list))
}

/// `redis`, `kafka` or both, comma-separated.
pub fn parse_brokers_list(text: &str) -> Result<Vec<devstack::ComponentSet>, UsageError> {
    let mut brokers = Vec::new();
    for broker in text.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let set = match broker {
            "redis" => devstack::ComponentSet::Redis,
            "kafka" => devstack::ComponentSet::Kafka,
            other => return Err(format!("unknown broker {other:?}: redis or kafka").into()),
        };
        if !brokers.contains(&set) {
            brokers.push(set);
        }
    }
    if brokers.is_empty() {
        return Err("--brokers needs at least one broker".into());
    }
    Ok(brokers)
}

fn parse_brokers(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
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
            "--brokers" | "--broker" => brokers.brokers = parse_brokers_list(&value)?,
            "--concurrency" => brokers.concurrency = parse_levels(&value)?,
            "--duration-secs" => {
                brokers.duration = Duration::from_secs(number(&name, &value, 1, 3600)? as u64)
            }
            _ => return Err(format!("unknown option {name:?} for brokers").into()),
        }
    }
    Ok(Parsed::Brokers(brokers))
}

/// The main benchmark's options.
fn parse_main(args: impl IntoIterator<Item = String>) -> Result<Parsed, UsageError> {
    let mut brokers = None;
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
        let mut value = || -> Result<String, UsageError> {
            match &inline {
                Some(value) => Ok(value.clone()),
                None => args
                    .next()
                    .ok_or_else(|| UsageError::from(format!("{name} needs a value"))),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--smoke" => smoke = true,
            "--brokers" | "--broker" => brokers = Some(parse_brokers_list(&value()?)?),
            "--concurrency" => concurrency = Some(parse_levels(&value()?)?),
            "--duration-secs" => duration = Some(number(&name, &value()?, 1, 3600)?),
            "--warmup-secs" => warmup = Some(seconds(&name, &value()?)?),
            "--get-pool" => get_pool = Some(number(&name, &value()?, 1, 100_000)?),
            "--max-pool" => max_pool = Some(number(&name, &value()?, 1, 1_000_000)?),
            "--out" => out = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown option {arg:?}").into()),
        }
    }
    Ok(Parsed::Run(Args {
        brokers: brokers.unwrap_or_else(|| {
            if smoke {
                vec![devstack::ComponentSet::Redis]
            } else {
                vec![devstack::ComponentSet::Redis, devstack::ComponentSet::Kafka]
            }
        }),
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

pub fn parse_levels(text: &str) -> Result<Vec<usize>, UsageError> {
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

pub fn number(name: &str, text: &str, min: usize, max: usize) -> Result<usize, UsageError> {
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{name} must be a whole number from {min} to {max}, got {text:?}").into()),
    }
}

pub fn seconds(name: &str, text: &str) -> Result<Duration, UsageError> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=60.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("{name} must be 0 to 60 seconds, got {text:?}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, UsageError> {
        match parse(args.iter().map(|a| a.to_string()))? {
            Parsed::Run(args) => Ok(args),
            _ => Err("not the main benchmark".into()),
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
        use devstack::ComponentSet::{Kafka, Redis};
        assert_eq!(normal.brokers, [Redis, Kafka]);
        assert_eq!(smoke.brokers, [Redis]);
        assert_eq!(run(&["--broker", "kafka"]).unwrap().brokers, [Kafka]);
        assert!(run(&["--brokers", "in-memory"]).is_err());
    }

    #[test]
    fn commands() {
        let Ok(Parsed::Cost(cost)) =
            parse(["cost", "--baseline", "/b", "--stores=redis", "--smoke"].map(String::from))
        else {
            panic!("cost")
        };
        assert_eq!(cost.stores, [devstack::ComponentSet::Redis]);
        let Ok(Parsed::Cost(on_kafka)) =
            parse(["cost", "--baseline", "/b", "--stores=kafka,redis"].map(String::from))
        else {
            panic!("cost on kafka")
        };
        assert_eq!(
            on_kafka.stores,
            [devstack::ComponentSet::Kafka, devstack::ComponentSet::Redis]
        );
        assert!(parse(["cost", "--baseline", "/b", "--stores=mongo"].map(String::from)).is_err());
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
        let Ok(Parsed::Observe(observe)) = parse(["observe", "--smoke"].map(String::from)) else {
            panic!("observe")
        };
        assert_eq!(observe.rounds, 1);
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
