//! A closed-loop driver for the comparison runs (`cost`, `list`): a number of callers, each
//! sending one request at a time until the deadline; requests started during the warm-up are not
//! counted.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::error::CallError;

/// A call that takes longer than this counts as an error (and keeps every loop bounded).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a call did.
pub enum Called {
    /// Done; measured.
    Done,
    /// Nothing left to do (a pool ran out): this caller stops.
    Exhausted,
}

/// The figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub calls: u64,
    /// Successful calls, the warm-up's too: what CPU counted from the run's start is divided by.
    pub succeeded: u64,
    pub errors: u64,
    pub measured_secs: f64,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    succeeded: u64,
    errors: u64,
    first_error: Option<String>,
    last_end: Option<Instant>,
}

/// Runs `call(worker)` from `callers` callers for `warmup + duration`.
pub async fn drive<F, Fut>(callers: usize, warmup: Duration, duration: Duration, call: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Called, CallError>> + Send,
{
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let measure_from = started + warmup;
    let deadline = measure_from + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..callers {
        let call = call.clone();
        let tally = tally.clone();
        workers.spawn(async move {
            while Instant::now() < deadline {
                let began = Instant::now();
                let outcome = tokio::time::timeout(CALL_TIMEOUT, call(worker)).await;
                let ended = Instant::now();
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                let counted = began >= measure_from;
                let error = match outcome {
                    Ok(Ok(Called::Exhausted)) => return,
                    Ok(Ok(Called::Done)) => {
                        tally.succeeded += 1;
                        None
                    }
                    Ok(Err(error)) => Some(error.to_string()),
                    Err(_) => Some(CallError::Timeout(CALL_TIMEOUT).to_string()),
                };
                if !counted {
                    continue;
                }
                match error {
                    None => {
                        tally.latencies.push(ended - began);
                        tally.last_end = Some(tally.last_end.map_or(ended, |t| t.max(ended)));
                    }
                    Some(message) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(message);
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let tally = Arc::try_unwrap(tally)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    figures(tally, measure_from, deadline)
}

fn figures(mut tally: Tally, measure_from: Instant, deadline: Instant) -> Figures {
    // A pool that ran out ends the run early: the rate is over the time actually measured.
    let end = tally.last_end.map_or(deadline, |last| last.min(deadline));
    let measured_secs = end.saturating_duration_since(measure_from).as_secs_f64();
    tally.latencies.sort();
    let percentile = |p: f64| {
        (!tally.latencies.is_empty()).then(|| {
            let at = ((tally.latencies.len() as f64 * p).ceil() as usize)
                .clamp(1, tally.latencies.len())
                - 1;
            tally.latencies[at].as_secs_f64() * 1000.0
        })
    };
    Figures {
        calls: tally.latencies.len() as u64,
        succeeded: tally.succeeded,
        errors: tally.errors,
        measured_secs,
        rps: tally.latencies.len() as f64 / measured_secs.max(0.001),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        first_error: tally.first_error,
    }
}

/// A shared pool of task ids that callers take from.
#[derive(Clone, Default)]
pub struct Pool(Arc<Mutex<Vec<String>>>);

impl Pool {
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    pub fn put(&self, id: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_after_the_warm_up_and_stops_when_exhausted() {
        let pool = Pool::default();
        for n in 0..50 {
            pool.put(n.to_string());
        }
        let figures = drive(4, Duration::ZERO, Duration::from_secs(5), {
            let pool = pool.clone();
            move |_| {
                let pool = pool.clone();
                async move {
                    match pool.take() {
                        Some(_) => Ok(Called::Done),
                        None => Ok(Called::Exhausted),
                    }
                }
            }
        })
        .await;
        assert_eq!(figures.calls, 50);
        assert_eq!(figures.errors, 0);
        assert!(figures.measured_secs < 1.0, "ended when the pool ran out");
        assert!(figures.p99_ms.is_some());
    }
}
