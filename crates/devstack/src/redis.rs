//! A private Redis server: loopback only, a free port, nothing written to disk while it runs.
//! [`Redis::shutdown`] saves a snapshot, so a server stopped on purpose (a broker or store outage
//! in a test) comes back with its data.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{Error, LogSink, ManagedProcess};

const INSTALL_REDIS: &str = "apt-get install -y redis-server (or run scripts/test, which does)";

/// A running `redis-server` owned by this handle.
pub struct Redis {
    process: Option<ManagedProcess>,
    port: u16,
    dir: PathBuf,
    sink: LogSink,
}

impl Redis {
    /// Starts Debian's `redis-server` with its working directory in `dir`.
    pub async fn start(dir: &Path, sink: LogSink) -> Result<Self, Error> {
        crate::ports::on_fresh_port(async |port| Self::start_on(dir, port, sink.clone()).await)
            .await
    }

    /// Starts it on a given port.
    pub async fn start_on(dir: &Path, port: u16, sink: LogSink) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("the Redis directory"))?;
        let mut redis = Self {
            process: None,
            port,
            dir: dir.to_path_buf(),
            sink,
        };
        redis.start_again().await?;
        Ok(redis)
    }

    /// Starts the server again on the same port and directory, loading the snapshot
    /// [`Redis::shutdown`] saved.
    pub async fn start_again(&mut self) -> Result<(), Error> {
        crate::ports::ensure_free(self.port, "wanted for redis-server")?;
        let program = which("redis-server").ok_or_else(|| Error::Missing {
            what: "redis-server",
            detail: "not found on PATH".into(),
            install: INSTALL_REDIS.into(),
        })?;
        let mut command = Command::new(program);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir);
        let mut process = ManagedProcess::spawn("redis", command, self.sink.clone())?;
        let port = self.port;
        process
            .wait_until(Duration::from_secs(10), "no PONG", || async move {
                ping(port).await.then_some(())
            })
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the server the way an operator would (`SHUTDOWN SAVE`): clients are cut off, and
    /// the data is kept for [`Redis::start_again`].
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let saved = self.cli(&["SHUTDOWN", "SAVE"]);
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(10));
        }
        saved.map(|_| ())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as Dapr's `redisHost` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The running server process (`None` between [`Redis::shutdown`] and
    /// [`Redis::start_again`]).
    pub fn process(&mut self) -> Option<&mut ManagedProcess> {
        self.process.as_mut()
    }

    /// Runs `redis-cli` against this server and returns its output (for tests that look at what
    /// Dapr stored, or write data the way another implementation would have).
    pub fn cli(&self, args: &[&str]) -> Result<String, Error> {
        cli_at(self.port, args)
    }
}

/// What a consumer group of a stream has left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBacklog {
    /// Entries delivered to the group but not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group.
    pub lag: u64,
}

impl GroupBacklog {
    pub fn is_empty(&self) -> bool {
        self.pending == 0 && self.lag == 0
    }
}

impl Redis {
    /// The backlog of consumer group `group` on stream `stream` (a Dapr topic on `pubsub.redis`),
    /// `None` while the group does not exist.
    pub fn backlog(&self, stream: &str, group: &str) -> Result<Option<GroupBacklog>, Error> {
        let output = self.cli(&["XINFO", "GROUPS", stream])?;
        let lines: Vec<&str> = output.lines().collect();
        // Flat key/value lines, one group after another, each starting with "name".
        for group_lines in lines.split(|line| *line == "name").skip(1) {
            if group_lines.first() != Some(&group) {
                continue;
            }
            let value = |key: &str| {
                group_lines
                    .iter()
                    .position(|line| *line == key)
                    .and_then(|at| group_lines.get(at + 1))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            return Ok(Some(GroupBacklog {
                pending: value("pending").unwrap_or(u64::MAX),
                lag: value("lag").unwrap_or(u64::MAX),
            }));
        }
        Ok(None)
    }

    /// The `data` field of every entry of a stream (a Dapr topic on `pubsub.redis`), oldest
    /// first: what was published, however often it was delivered.
    pub fn stream_data(&self, stream: &str) -> Result<Vec<String>, Error> {
        let output = self.cli(&["XRANGE", stream, "-", "+"])?;
        let lines: Vec<&str> = output.lines().collect();
        Ok(lines
            .windows(2)
            .filter(|pair| pair[0] == "data")
            .map(|pair| pair[1].to_string())
            .collect())
    }

    /// The number of entries in a stream (0 for none).
    pub fn stream_length(&self, stream: &str) -> Result<u64, Error> {
        Ok(self.cli(&["XLEN", stream])?.trim().parse().unwrap_or(0))
    }

    /// See [`command_calls`].
    pub fn command_calls(&self) -> Result<BTreeMap<String, u64>, Error> {
        command_calls(self.port)
    }
}

/// `redis-cli` against the server on 127.0.0.1:`port`; its output.
fn cli_at(port: u16, args: &[&str]) -> Result<String, Error> {
    let program = which("redis-cli").ok_or_else(|| Error::Missing {
        what: "redis-cli",
        detail: "not found on PATH".into(),
        install: INSTALL_REDIS.into(),
    })?;
    let output = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(Error::io("redis-cli"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string())
}

/// How often each command ran on the server on 127.0.0.1:`port` since it started, by its
/// lower-case name (`INFO commandstats`). Redis counts the commands a script runs as well as
/// the script.
pub fn command_calls(port: u16) -> Result<BTreeMap<String, u64>, Error> {
    Ok(parse_command_calls(&cli_at(
        port,
        &["INFO", "commandstats"],
    )?))
}

/// `cmdstat_<name>:calls=<n>,...` lines into name -> calls.
fn parse_command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Whether a Redis server answers PING on 127.0.0.1:`port`.
pub async fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply)).await,
        Ok(Ok(_))
    ) && &reply == b"+PONG\r\n"
}

pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_calls_are_read_from_commandstats() {
        let info = "# Commandstats\r\n\
            cmdstat_eval:calls=6376,usec=91011,usec_per_call=14.27,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_xgroup|create:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=2\r\n\
            not a stat line\r\n";
        let calls = parse_command_calls(info);
        assert_eq!(calls.get("eval"), Some(&6376));
        assert_eq!(calls.get("xgroup|create"), Some(&4));
        assert_eq!(calls.len(), 2);
    }
}
