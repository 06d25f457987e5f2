//! Store operations per request: the commands the sidecars sent the Redis servers during a
//! run, counted by the servers themselves (`INFO commandstats`), so they are exact where CPU
//! figures move with the machine.
//!
//! A Dapr Redis state save is one script (`EVAL`) whatever it runs inside, a transaction its
//! scripts between a `MULTI` and an `EXEC`, a read one `HGETALL`; a publish is one `XADD`, and a
//! subscription reads with `XREADGROUP` and acknowledges with `XACK`. The commands a script runs (`HGET`, `HSET`, `HINCRBY`, `DEL`) are
//! counted by Redis too, and left out here, as is the servers' housekeeping (`INFO`, `PING`,
//! `XGROUP`). Every client of the servers counts: task-api's daprd and notification-service's
//! (the notifications a completion causes are part of its cost).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    error::{Result, failed},
    system::System,
};

/// What a command does, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    StateRead,
    StateWrite,
    Stream,
}

fn kind(command: &str) -> Option<Kind> {
    match command {
        "hgetall" | "get" | "mget" | "hmget" => Some(Kind::StateRead),
        // Saves and deletes are scripts; a TTL is set by a command of its own, and a
        // transaction's scripts go between two more.
        "eval" | "evalsha" | "expire" | "multi" | "exec" => Some(Kind::StateWrite),
        "xadd" | "xreadgroup" | "xack" | "xautoclaim" | "xclaim" | "xpending" | "xtrim" => {
            Some(Kind::Stream)
        }
        _ => None,
    }
}

/// Operations counted on the servers, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOps {
    pub state_reads: u64,
    pub state_writes: u64,
    pub stream: u64,
}

impl StoreOps {
    fn of(calls: &BTreeMap<String, u64>) -> Self {
        let mut ops = Self::default();
        for (command, &n) in calls {
            match kind(command) {
                Some(Kind::StateRead) => ops.state_reads += n,
                Some(Kind::StateWrite) => ops.state_writes += n,
                Some(Kind::Stream) => ops.stream += n,
                None => {}
            }
        }
        ops
    }

    /// The operations from `before` until these, per request; what `counted` says was not on
    /// Redis is `None`.
    pub fn per_request_since(
        &self,
        before: &StoreOps,
        requests: u64,
        counted: Counted,
    ) -> Option<OpsPerRequest> {
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / requests as f64;
        (requests > 0).then(|| OpsPerRequest {
            state_reads: counted
                .state
                .then(|| per(self.state_reads, before.state_reads)),
            state_writes: counted
                .state
                .then(|| per(self.state_writes, before.state_writes)),
            stream: counted.stream.then(|| per(self.stream, before.stream)),
        })
    }
}

/// Which of a system's stores are Redis, and so counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub state: bool,
    pub stream: bool,
}

/// Store operations per successful request (`None`: that store is not Redis, so not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OpsPerRequest {
    pub state_reads: Option<f64>,
    pub state_writes: Option<f64>,
    /// Redis streams commands: publishes, reads, acknowledgements.
    pub stream: Option<f64>,
}

impl OpsPerRequest {
    /// Everything counted.
    pub fn total(&self) -> f64 {
        [self.state_reads, self.state_writes, self.stream]
            .into_iter()
            .flatten()
            .sum()
    }
}

/// The Redis servers of a system, to count their operations.
#[derive(Debug, Clone, Default)]
pub struct StoreCounter {
    ports: Vec<u16>,
    counted: Counted,
}

impl StoreCounter {
    /// The system's Redis servers (state store, broker), whichever it runs.
    pub fn of(system: &System) -> Self {
        let components = system.stack.components();
        let ports = [system.stack.redis(), system.stack.broker()]
            .into_iter()
            .flatten()
            .map(devstack::Redis::port)
            .collect();
        Self {
            ports,
            counted: Counted {
                state: components.state_store() == "redis",
                stream: components.broker() == "redis",
            },
        }
    }

    /// The operations counted so far on every server.
    pub fn snapshot(&self) -> Result<StoreOps> {
        let mut total = StoreOps::default();
        for &port in &self.ports {
            let calls = devstack::redis_command_calls(port)
                .map_err(failed("reading a Redis server's command counts"))?;
            let ops = StoreOps::of(&calls);
            total.state_reads += ops.state_reads;
            total.state_writes += ops.state_writes;
            total.stream += ops.stream;
        }
        Ok(total)
    }

    /// The operations from `before` until now, per request.
    pub fn per_request_since(
        &self,
        before: &StoreOps,
        requests: u64,
    ) -> Result<Option<OpsPerRequest>> {
        Ok(self
            .snapshot()?
            .per_request_since(before, requests, self.counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_count_once_and_what_they_run_not_at_all() {
        let calls: BTreeMap<String, u64> = [
            ("eval", 10),
            ("hget", 20),
            ("hset", 20),
            ("hincrby", 10),
            ("hgetall", 7),
            ("expire", 3),
            ("multi", 2),
            ("exec", 2),
            ("xadd", 5),
            ("xack", 5),
            ("xreadgroup", 2),
            ("info", 9),
            ("xgroup|create", 4),
        ]
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect();
        assert_eq!(
            StoreOps::of(&calls),
            StoreOps {
                state_reads: 7,
                state_writes: 17,
                stream: 12,
            }
        );
    }

    #[test]
    fn per_request_is_the_difference_over_the_requests() {
        let before = StoreOps {
            state_reads: 100,
            state_writes: 50,
            stream: 10,
        };
        let after = StoreOps {
            state_reads: 300,
            state_writes: 450,
            stream: 210,
        };
        let all = Counted {
            state: true,
            stream: true,
        };
        let per = after.per_request_since(&before, 100, all).unwrap();
        assert_eq!(
            per,
            OpsPerRequest {
                state_reads: Some(2.0),
                state_writes: Some(4.0),
                stream: Some(2.0),
            }
        );
        assert_eq!(per.total(), 8.0);
        assert_eq!(after.per_request_since(&before, 0, all), None);
        // Events on Kafka: the streams' count means nothing and is left out.
        let state_only = Counted {
            state: true,
            stream: false,
        };
        let per = after.per_request_since(&before, 100, state_only).unwrap();
        assert_eq!(per.stream, None);
        assert_eq!(per.total(), 6.0);
    }
}
