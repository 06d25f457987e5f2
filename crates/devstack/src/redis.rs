//! A private Redis server: loopback only, a free port, nothing persisted.

use std::{path::Path, process::Command, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{Error, LogSink, ManagedProcess, free_port};

const INSTALL_REDIS: &str = "apt-get install -y redis-server (or run scripts/test, which does)";

/// A running `redis-server` owned by this handle.
pub struct Redis {
    process: ManagedProcess,
    port: u16,
}

impl Redis {
    /// Starts Debian's `redis-server` with its working directory in `dir`.
    pub async fn start(dir: &Path, sink: LogSink) -> Result<Self, Error> {
        let port = free_port()?;
        Self::start_on(dir, port, sink).await
    }

    /// Starts it on a given port.
    pub async fn start_on(dir: &Path, port: u16, sink: LogSink) -> Result<Self, Error> {
        crate::ports::ensure_free(port, "wanted for redis-server")?;
        let program = which("redis-server").ok_or_else(|| Error::Missing {
            what: "redis-server",
            detail: "not found on PATH".into(),
            install: INSTALL_REDIS.into(),
        })?;
        let mut command = Command::new(program);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir);
        let mut process = ManagedProcess::spawn("redis", command, sink)?;
        process
            .wait_until(Duration::from_secs(10), "no PONG", || async {
                ping(port).await.then_some(())
            })
            .await?;
        Ok(Self { process, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as Dapr's `redisHost` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// Runs `redis-cli` against this server and returns its output (for tests that look at what
    /// Dapr stored, or write data the way another implementation would have).
    pub fn cli(&self, args: &[&str]) -> Result<String, Error> {
        let program = which("redis-cli").ok_or_else(|| Error::Missing {
            what: "redis-cli",
            detail: "not found on PATH".into(),
            install: INSTALL_REDIS.into(),
        })?;
        let output = Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map_err(Error::io("redis-cli"))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_string())
    }
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
