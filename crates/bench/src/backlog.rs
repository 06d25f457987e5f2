//! Whether every published task event has been handled, read from the Redis stream behind the
//! topic.
//!
//! Each scenario leaves work behind: task events are delivered to task-api after the calls that
//! published them returned, and a completion goes on to notification-service. The next
//! measurement must not pay for that, so the benchmark waits until every consumer group of the
//! stream has been handed the newest entry and has acknowledged everything (`XINFO`).

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..line_end]).map_err(|e| e.to_string())?;
    let after = line_end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|_| format!("bad length {line:?}"))
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
        Some(other) => Err(format!("unexpected reply type {:?}", *other as char)),
        None => Ok(None),
    }
}

async fn command(redis: &mut TcpStream, args: &[&str]) -> Result<Reply, String> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    redis
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_REPLY {
        let read = redis.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("Redis closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some((reply, _)) = parse(&buf)? {
            return Ok(reply);
        }
    }
    Err("Redis reply too large".into())
}

/// Whether every consumer group of `stream` has been handed its newest entry and acknowledged
/// all it received. A stream that does not exist yet has nothing pending.
async fn drained(address: &str, stream: &str) -> Result<bool, String> {
    let mut redis = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let info = command(&mut redis, &["XINFO", "STREAM", stream]).await?;
    if let Reply::Error(message) = &info {
        return if message.contains("no such key") {
            Ok(true)
        } else {
            Err(message.clone())
        };
    }
    let newest = info
        .field("last-generated-id")
        .and_then(Reply::text)
        .ok_or("XINFO STREAM without last-generated-id")?
        .to_string();
    let Reply::Array(groups) = command(&mut redis, &["XINFO", "GROUPS", stream]).await? else {
        return Err("XINFO GROUPS did not answer a list".into());
    };
    Ok(groups.iter().all(|group| {
        group.field("pending") == Some(&Reply::Int(0))
            && group.field("last-delivered-id").and_then(Reply::text) == Some(newest.as_str())
    }))
}

/// Waits, for at most `timeout`, until `stream` is drained; returns how long that took, or
/// `None` if it was not drained in time.
pub async fn wait_drained(
    address: &str,
    stream: &str,
    timeout: Duration,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    loop {
        if drained(address, stream).await? {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`wait_drained`], for every stream in `streams` in turn (one deadline for all).
pub async fn wait_all_drained(
    address: &str,
    streams: &[&str],
    timeout: Duration,
) -> Result<Option<Duration>, String> {
    let started = Instant::now();
    // Twice: relaying one stream publishes to another.
    for stream in streams.iter().chain(streams) {
        let left = timeout.saturating_sub(started.elapsed());
        if wait_drained(address, stream, left).await?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(started.elapsed()))
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
