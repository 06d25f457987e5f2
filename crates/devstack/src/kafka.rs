//! A private Apache Kafka broker: KRaft mode (broker and controller in one JVM), loopback only,
//! free ports, its log in the stack's directory.
//!
//! The jars come from Maven Central through `tools/kafka/install.sh` (run on demand, like the
//! Dapr build); the JVM is the machine's Java 17. [`Kafka::shutdown`] and [`Kafka::start_again`]
//! stop and restart it on the same ports with the same data, as a broker outage in a test.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Error, LogSink, ManagedProcess, binaries::ask_install_script, free_port};

/// Partitions of every topic the apps create: enough that consumers work in parallel and that
/// one task's events can arrive out of order, as they can on a real cluster.
pub const PARTITIONS: u32 = 4;
/// A fixed cluster id: every broker here is a private one-node cluster.
const CLUSTER_ID: &str = "q1Sh-9_ISia_zwGINzRvyQ";
const INSTALL: &str = "tools/kafka/install.sh (Java 17 and Maven; scripts/test runs it)";

/// A running Kafka broker owned by this handle.
pub struct Kafka {
    process: Option<ManagedProcess>,
    port: u16,
    dir: PathBuf,
    libs: PathBuf,
    sink: LogSink,
}

impl Kafka {
    /// Formats a fresh log directory under `dir` and starts the broker.
    pub async fn start(dir: &Path, sink: LogSink) -> Result<Self, Error> {
        let libs = libs()?;
        std::fs::create_dir_all(dir).map_err(Error::io("the Kafka directory"))?;
        let port = free_port()?;
        let controller = free_port()?;
        let properties = format!(
            "process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={logs}
num.partitions={PARTITIONS}
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
",
            logs = dir.join("logs").display()
        );
        let config = dir.join("server.properties");
        std::fs::write(&config, properties).map_err(Error::io("the Kafka configuration"))?;
        let format = java(&libs)
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(&config)
            .output()
            .map_err(Error::io("the Kafka storage tool"))?;
        if !format.status.success() {
            return Err(Error::Missing {
                what: "a formatted Kafka log directory",
                detail: String::from_utf8_lossy(&format.stderr).trim().to_string(),
                install: INSTALL.into(),
            });
        }
        let mut kafka = Self {
            process: None,
            port,
            dir: dir.to_path_buf(),
            libs,
            sink,
        };
        kafka.start_again().await?;
        Ok(kafka)
    }

    /// Starts the broker (again) on its ports and data; returns once it says it has started.
    pub async fn start_again(&mut self) -> Result<(), Error> {
        crate::ports::ensure_free(self.port, "wanted for the Kafka broker")?;
        let mut command = java(&self.libs);
        command
            .args(["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC"])
            // Warnings only, but the line that says the broker is up.
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info")
            .args(["kafka.Kafka"])
            .arg(self.dir.join("server.properties"));
        let mut process = ManagedProcess::spawn("kafka", command, self.sink.clone())?;
        process
            .wait_for_log("Kafka Server started", Duration::from_secs(60))
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the broker (SIGTERM: a controlled shutdown); its data stays for
    /// [`Kafka::start_again`].
    pub fn shutdown(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(20));
        }
    }

    /// `127.0.0.1:<port>`, as the component's `brokers` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The running broker (`None` between [`Kafka::shutdown`] and [`Kafka::start_again`]).
    pub fn process(&mut self) -> Option<&mut ManagedProcess> {
        self.process.as_mut()
    }

    /// Where consumer group `group` stands on each topic it reads, summed over partitions. A
    /// topic the group has no partitions of is absent.
    pub fn offsets(&self, group: &str) -> Result<HashMap<String, TopicOffsets>, Error> {
        let output = java(&self.libs)
            .args([
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
            ])
            .arg(self.address())
            .args(["--describe", "--group", group])
            .output()
            .map_err(Error::io("the Kafka consumer-group tool"))?;
        let mut topics: HashMap<String, TopicOffsets> = HashMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let columns: Vec<&str> = line.split_whitespace().collect();
            // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
            if columns.len() < 6 || columns[0] != group {
                continue;
            }
            let Ok(end) = columns[4].parse::<u64>() else {
                continue;
            };
            // No offset committed yet on a partition: all of it is pending.
            let committed = columns[3].parse::<u64>().unwrap_or(0);
            let entry = topics.entry(columns[1].to_string()).or_default();
            entry.end += end;
            entry.lag += end.saturating_sub(committed);
        }
        Ok(topics)
    }
}

impl Kafka {
    /// Every message on `topic`, as written (read from the start by a consumer of its own, until
    /// nothing more arrives for a few seconds): what was published, however often it was
    /// delivered.
    pub fn read_topic(&self, topic: &str) -> Result<Vec<String>, Error> {
        let output = java(&self.libs)
            .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
            .arg("--bootstrap-server")
            .arg(self.address())
            .args(["--topic", topic, "--from-beginning", "--timeout-ms", "5000"])
            .output()
            .map_err(Error::io("the Kafka console consumer"))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// A consumer group's standing on one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicOffsets {
    /// Messages ever written to the topic.
    pub end: u64,
    /// Of those, how many the group has not committed (handled) yet.
    pub lag: u64,
}

/// A `java` command with the broker's jars on the class path.
fn java(libs: &Path) -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|java| java.exists())
        .unwrap_or_else(|| PathBuf::from("java"));
    let mut command = Command::new(java);
    command.arg("-cp").arg(libs.join("*"));
    command
}

/// The jars, resolved by `tools/kafka/install.sh` (which returns at once when they are there).
fn libs() -> Result<PathBuf, Error> {
    ask_install_script("tools/kafka/install.sh", &[], "Apache Kafka", INSTALL)
}
