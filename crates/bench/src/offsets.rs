//! Where task-api's consumer groups stand on Kafka, read over Kafka's own protocol: the newest
//! offset of each partition (ListOffsets v1) against the group's committed offset (OffsetFetch
//! v1), from the one broker, which is also every group's coordinator.
//!
//! A few hundred bytes a call, so it can be polled every 100 ms while a backlog drains (the
//! broker's command-line tools start a JVM per call).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::error::BacklogError;

const LIST_OFFSETS: i16 = 2;
const OFFSET_FETCH: i16 = 9;
/// The topic does not exist yet: nothing was ever published to it.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Largest response read; a few topics of a few partitions take a few hundred bytes.
const MAX_RESPONSE: usize = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds requests in Kafka's encoding (big-endian, length-prefixed strings and arrays).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.i16(s.len() as i16);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Reads a response; every read fails cleanly on a short buffer.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BacklogError> {
        if self.0.len() < N {
            return Err(BacklogError::kafka("a response ended early"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().unwrap_or([0; N]))
    }
    fn i16(&mut self) -> Result<i16, BacklogError> {
        self.take::<2>().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, BacklogError> {
        self.take::<4>().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, BacklogError> {
        self.take::<8>().map(i64::from_be_bytes)
    }
    /// A string, or `None` for a null one (length -1).
    fn string(&mut self) -> Result<Option<String>, BacklogError> {
        let Ok(len) = usize::try_from(self.i16()?) else {
            return Ok(None);
        };
        if self.0.len() < len {
            return Err(BacklogError::kafka("a response ended early"));
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }
    fn count(&mut self) -> Result<usize, BacklogError> {
        Ok(usize::try_from(self.i32()?).unwrap_or(0))
    }
}

/// `(topic, partition) -> offset` pairs from a response.
type Offsets = Vec<(String, i32, i64)>;

fn request(api_key: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut header = Writer::default();
    header
        .i16(api_key)
        .i16(1)
        .i32(correlation)
        .string("task-api-bench");
    let mut out = Writer::default();
    out.i32((header.0.len() + body.len()) as i32);
    out.0.extend_from_slice(&header.0);
    out.0.extend_from_slice(body);
    out.0
}

/// The topics, each with partitions `0..partitions`.
fn topic_array(w: &mut Writer, topics: &[&str], partitions: i32, latest: bool) {
    w.i32(topics.len() as i32);
    for topic in topics {
        w.string(topic).i32(partitions);
        for partition in 0..partitions {
            w.i32(partition);
            if latest {
                w.i64(-1);
            }
        }
    }
}

fn list_offsets_body(topics: &[&str], partitions: i32) -> Vec<u8> {
    let mut w = Writer::default();
    w.i32(-1);
    topic_array(&mut w, topics, partitions, true);
    w.0
}

fn offset_fetch_body(group: &str, topics: &[&str], partitions: i32) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(group);
    topic_array(&mut w, topics, partitions, false);
    w.0
}

/// ListOffsets v1: per partition, error code, timestamp, offset. A topic that does not exist
/// yet has offset 0.
fn parse_list_offsets(body: &[u8]) -> Result<Offsets, BacklogError> {
    let mut r = Reader(body);
    let mut out = Vec::new();
    for _ in 0..r.count()? {
        let topic = r.string()?.unwrap_or_default();
        for _ in 0..r.count()? {
            let partition = r.i32()?;
            let error = r.i16()?;
            let _timestamp = r.i64()?;
            let offset = r.i64()?;
            match error {
                0 => out.push((topic.clone(), partition, offset)),
                UNKNOWN_TOPIC_OR_PARTITION => out.push((topic.clone(), partition, 0)),
                code => {
                    return Err(BacklogError::kafka(format!(
                        "ListOffsets of {topic}: error {code}"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// OffsetFetch v1: per partition, committed offset (-1 for none), metadata, error code.
fn parse_offset_fetch(body: &[u8]) -> Result<Offsets, BacklogError> {
    let mut r = Reader(body);
    let mut out = Vec::new();
    for _ in 0..r.count()? {
        let topic = r.string()?.unwrap_or_default();
        for _ in 0..r.count()? {
            let partition = r.i32()?;
            let offset = r.i64()?;
            let _metadata = r.string()?;
            match r.i16()? {
                0 | UNKNOWN_TOPIC_OR_PARTITION => out.push((topic.clone(), partition, offset)),
                code => {
                    return Err(BacklogError::kafka(format!(
                        "OffsetFetch of {topic}: error {code}"
                    )));
                }
            }
        }
    }
    Ok(out)
}

async fn call(
    stream: &mut TcpStream,
    request: &[u8],
    correlation: i32,
) -> Result<Vec<u8>, BacklogError> {
    stream
        .write_all(request)
        .await
        .map_err(BacklogError::io("Kafka"))?;
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .await
        .map_err(BacklogError::io("Kafka"))?;
    let size = usize::try_from(i32::from_be_bytes(size)).unwrap_or(0);
    if !(4..=MAX_RESPONSE).contains(&size) {
        return Err(BacklogError::kafka(format!("a response of {size} bytes")));
    }
    let mut body = vec![0u8; size];
    stream
        .read_exact(&mut body)
        .await
        .map_err(BacklogError::io("Kafka"))?;
    let mut r = Reader(&body);
    if r.i32()? != correlation {
        return Err(BacklogError::kafka("a response to another request"));
    }
    Ok(body[4..].to_vec())
}

/// Messages on `topics` that consumer group `group` has not committed yet (handled), summed
/// over `partitions` partitions each. A group without a committed offset on a partition has
/// all of it ahead.
pub async fn lag(
    address: &str,
    group: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<u64, BacklogError> {
    let work = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(BacklogError::io("Kafka"))?;
        let ends = call(
            &mut stream,
            &request(LIST_OFFSETS, 1, &list_offsets_body(topics, partitions)),
            1,
        )
        .await
        .and_then(|body| parse_list_offsets(&body))?;
        let committed = call(
            &mut stream,
            &request(
                OFFSET_FETCH,
                2,
                &offset_fetch_body(group, topics, partitions),
            ),
            2,
        )
        .await
        .and_then(|body| parse_offset_fetch(&body))?;
        Ok(ends
            .iter()
            .map(|(topic, partition, end)| {
                let done = committed
                    .iter()
                    .find(|(t, p, _)| t == topic && p == partition)
                    .map_or(0, |(_, _, offset)| (*offset).max(0));
                u64::try_from(end - done).unwrap_or(0)
            })
            .sum())
    };
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .map_err(|_| BacklogError::Timeout {
            broker: "Kafka",
            waited: CALL_TIMEOUT,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_request_with_its_size_and_header() {
        let bytes = request(OFFSET_FETCH, 7, &offset_fetch_body("g", &["t"], 2));
        let size = i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(size, bytes.len() - 4);
        let mut r = Reader(&bytes[4..]);
        assert_eq!(r.i16().unwrap(), OFFSET_FETCH);
        assert_eq!(r.i16().unwrap(), 1);
        assert_eq!(r.i32().unwrap(), 7);
        assert_eq!(r.string().unwrap().as_deref(), Some("task-api-bench"));
        assert_eq!(r.string().unwrap().as_deref(), Some("g"));
        assert_eq!(r.count().unwrap(), 1);
        assert_eq!(r.string().unwrap().as_deref(), Some("t"));
        assert_eq!(r.count().unwrap(), 2);
        assert_eq!((r.i32().unwrap(), r.i32().unwrap()), (0, 1));
        assert!(r.0.is_empty());
    }

    #[test]
    fn parses_offsets_and_treats_a_missing_topic_as_empty() {
        let mut w = Writer::default();
        w.i32(1).string("t").i32(2);
        w.i32(0).i16(0).i64(-1).i64(42);
        w.i32(1).i16(UNKNOWN_TOPIC_OR_PARTITION).i64(-1).i64(-1);
        assert_eq!(
            parse_list_offsets(&w.0).unwrap(),
            vec![("t".to_string(), 0, 42), ("t".to_string(), 1, 0)]
        );
        let mut w = Writer::default();
        w.i32(1).string("t").i32(1);
        w.i32(0).i64(40).i16(-1).i16(0);
        assert_eq!(
            parse_offset_fetch(&w.0).unwrap(),
            vec![("t".to_string(), 0, 40)]
        );
        assert!(parse_offset_fetch(&w.0[..10]).is_err(), "a short response");
    }
}
