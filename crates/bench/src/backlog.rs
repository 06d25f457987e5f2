//! Whether every published task event has been handled: read from the Redis streams behind the
//! topics (`XINFO`), or from the consumer groups' offsets on Kafka.
//!
//! Each scenario leaves work behind: task events are delivered to task-api after the calls that
//! published them returned, and a completion goes on to notification-service. The next
//! measurement must not pay for that, so the benchmark waits until every consumer group of each
//! topic has been handed the newest entry and has acknowledged everything; the sustained mode
//! times how long that takes once the load stops.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{error::BacklogError, offsets, ops};

/// How often a draining backlog is looked at.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// Largest reply read; XINFO replies for a handful of groups are a few hundred bytes.
const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Text(String),
    Int(i64),
    Nil,
    Array(Vec<Reply>),
    Error(String),
}

impl Reply {
    fn text(&self) -> Option<&str> {
        match self {
            Reply::Text(text) => Some(text),
            _ => None,
        }
    }

    /// The value after `key` in a flat key/value array (RESP2 maps).
    fn field(&self, key: &str) -> Option<&Reply> {
        let Reply::Array(items) = self else {
            return None;
        };
        items
            .chunks(2)
            .find(|pair| pair[0].text() == Some(key))
            .and_then(|pair| pair.get(1))
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, BacklogError> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..line_end])
        .map_err(|_| BacklogError::redis("a reply line that is not UTF-8"))?;
    let after = line_end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|_| BacklogError::redis(format!("bad length {line:?}")))
    };
    match buf.first() {
        Some(b'+') => Ok(Some((Reply::Text(line.to_string()), after))),
        Some(b'-') => Ok(Some((Reply::Error(line.to_string()), after))),
        Some(b':') => Ok(Some((Reply::Int(number()?), after))),
        Some(b'$') => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[after..after + len]).into_owned();
            Ok(Some((Reply::Text(text), after + len + 2)))
        }
        Some(b'*') => {
            let Ok(count) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        Some(other) => Err(BacklogError::redis(format!(
            "unexpected reply type {:?}",
            *other as char
        ))),
        None => Ok(None),
    }
}

async fn command(redis: &mut TcpStream, args: &[&str]) -> Result<Reply, BacklogError> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    redis
        .write_all(request.as_bytes())
        .await
        .map_err(BacklogError::io("Redis"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_REPLY {
        let read = redis
            .read(&mut chunk)
            .await
            .map_err(BacklogError::io("Redis"))?;
        if read == 0 {
            return Err(BacklogError::redis("closed the connection"));
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some((reply, _)) = parse(&buf)? {
            return Ok(reply);
        }
    }
    Err(BacklogError::redis("a reply too large"))
}

/// Entries of `stream` its consumer groups have still to handle: delivered but not
/// acknowledged, plus not yet delivered. A stream that does not exist yet has none.
async fn stream_left(redis: &mut TcpStream, stream: &str) -> Result<u64, BacklogError> {
    let info = command(redis, &["XINFO", "STREAM", stream]).await?;
    if let Reply::Error(message) = &info {
        return if message.contains("no such key") {
            Ok(0)
        } else {
            Err(BacklogError::redis(message.clone()))
        };
    }
    let newest = info
        .field("last-generated-id")
        .and_then(Reply::text)
        .ok_or_else(|| BacklogError::redis("XINFO STREAM without last-generated-id"))?
        .to_string();
    let Reply::Array(groups) = command(redis, &["XINFO", "GROUPS", stream]).await? else {
        return Err(BacklogError::redis("XINFO GROUPS did not answer a list"));
    };
    let mut left = 0;
    for group in &groups {
        let pending = match group.field("pending") {
            Some(Reply::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 1,
        };
        // Redis reports no lag once entries were trimmed; then all that is known is whether
        // the group was handed the newest entry.
        let lag = match group.field("lag") {
            Some(Reply::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => u64::from(group.field("last-delivered-id").and_then(Reply::text) != Some(&newest)),
        };
        left += pending + lag;
    }
    Ok(left)
}

/// Where task-api's events wait: the broker behind its `outbox` and `pubsub` components.
#[derive(Debug, Clone)]
pub enum EventBroker {
    /// Redis streams at this address: each topic a stream, each app a consumer group.
    Redis(String),
    /// A Kafka broker at this address: the outbox topics read by the group
    /// `task-api-outbox`, task-events and its retry topic by `task-api`.
    Kafka(String),
}

impl EventBroker {
    /// Events task-api has still to handle on its four topics (see [`ops::TOPICS`]).
    pub async fn left(&self) -> Result<u64, BacklogError> {
        match self {
            EventBroker::Redis(address) => {
                let mut redis = TcpStream::connect(address)
                    .await
                    .map_err(BacklogError::io("Redis"))?;
                let mut left = 0;
                for stream in ops::TOPICS {
                    left += stream_left(&mut redis, stream).await?;
                }
                Ok(left)
            }
            EventBroker::Kafka(address) => {
                let partitions = devstack::KAFKA_PARTITIONS as i32;
                let (outbox, events) = ops::TOPICS.split_at(2);
                Ok(
                    offsets::lag(address, "task-api-outbox", outbox, partitions).await?
                        + offsets::lag(address, "task-api", events, partitions).await?,
                )
            }
        }
    }

    /// Waits, for at most `timeout`, until nothing is left (twice in a row, 100 ms apart, as
    /// an event moves from one topic to the next); how long that took, or `None` if it did not
    /// happen in time.
    pub async fn wait_drained(&self, timeout: Duration) -> Result<Option<Duration>, BacklogError> {
        let started = Instant::now();
        let mut empty_before = false;
        loop {
            let empty = self.left().await? == 0;
            if empty && empty_before {
                return Ok(Some(started.elapsed().saturating_sub(POLL_EVERY)));
            }
            empty_before = empty;
            if started.elapsed() >= timeout {
                return Ok(None);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_replies_and_waits_for_the_rest() {
        let reply = b"*2\r\n*4\r\n$4\r\nname\r\n$8\r\ntask-api\r\n$7\r\npending\r\n:0\r\n$-1\r\n";
        let (parsed, used) = parse(reply).unwrap().unwrap();
        assert_eq!(used, reply.len());
        let Reply::Array(items) = parsed else {
            panic!("not an array")
        };
        assert_eq!(items[0].field("pending"), Some(&Reply::Int(0)));
        assert_eq!(
            items[0].field("name").and_then(Reply::text),
            Some("task-api")
        );
        assert_eq!(items[1], Reply::Nil);
        assert_eq!(parse(&reply[..20]).unwrap(), None);
        assert_eq!(
            parse(b"-ERR no such key\r\n").unwrap().unwrap().0,
            Reply::Error("ERR no such key".into())
        );
    }
}
