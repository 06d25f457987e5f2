//! A private PostgreSQL server: loopback only, a free port, a temporary data directory.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI) the server runs as the
//! `postgres` user that Debian's package creates, in a directory that user owns. `initdb` is slow
//! (seconds), so it runs once into a template kept in the cache directory; every server starts
//! from a copy of it.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Error, LogSink, ManagedProcess};

const INSTALL_POSTGRES: &str = "apt-get install -y postgresql (or run scripts/test, which does)";

/// A running `postgres` owned by this handle.
pub struct Postgres {
    process: Option<ManagedProcess>,
    port: u16,
    sink: LogSink,
    owner: Option<Owner>,
    bin_dir: PathBuf,
    // Dropped last: the data directory outlives the server.
    dir: tempfile::TempDir,
}

/// The unprivileged user the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Starts a server on a free port with a fresh, empty database cluster.
    pub async fn start(sink: LogSink) -> Result<Self, Error> {
        let bin_dir = bin_dir()?;
        let owner = owner()?;
        let template = template(&bin_dir, owner)?;
        let dir = tempfile::Builder::new()
            .prefix("task-api-postgres-")
            .tempdir()
            .map_err(Error::io("the PostgreSQL directory"))?;
        let data = dir.path().join("data");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .map_err(Error::io("copying the PostgreSQL template"))?;
        if !copied.success() {
            return Err(Error::Io {
                what: "copying the PostgreSQL template".into(),
                source: std::io::Error::other(format!("cp -a exited with {copied}")),
            });
        }
        if let Some(owner) = owner {
            chown(dir.path(), owner)?;
        }
        let mut postgres = Self {
            process: None,
            port: 0,
            sink,
            owner,
            bin_dir,
            dir,
        };
        crate::ports::on_fresh_port(async |port| {
            postgres.port = port;
            postgres.start_again().await
        })
        .await?;
        Ok(postgres)
    }

    /// Starts the server again on the same port and data (after [`Postgres::stop`]).
    pub async fn start_again(&mut self) -> Result<(), Error> {
        crate::ports::ensure_free(self.port, "wanted for postgres")?;
        let data = self.dir.path().join("data");
        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .arg("-k")
            .arg(self.dir.path())
            // Test data needs no durability against power loss; a clean stop still keeps it.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]);
        if let Some(owner) = self.owner {
            command.uid(owner.uid).gid(owner.gid);
        }
        let mut process = ManagedProcess::spawn("postgres", command, self.sink.clone())?;
        process
            .wait_for_log(
                "database system is ready to accept connections",
                Duration::from_secs(30),
            )
            .await?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the server (fast shutdown: open sessions are ended, data is kept).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.signal(libc::SIGINT);
            process.stop(Duration::from_secs(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string, as Dapr's `state.postgresql` wants it.
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            self.port
        )
    }

    pub fn process(&mut self) -> Option<&mut ManagedProcess> {
        self.process.as_mut()
    }

    /// Runs `psql -Atc <sql>` against this server and returns its output (tests read what Dapr
    /// stored).
    pub fn psql(&self, sql: &str) -> Result<String, Error> {
        let program = crate::redis::which("psql").ok_or_else(|| Error::Missing {
            what: "psql",
            detail: "not found on PATH".into(),
            install: INSTALL_POSTGRES.into(),
        })?;
        let output = Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .output()
            .map_err(Error::io("psql"))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian installs the server programs under /usr/lib/postgresql/<version>/bin, off the PATH.
fn bin_dir() -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    if let Some(newest) = candidates.pop() {
        return Ok(newest);
    }
    match crate::redis::which("postgres") {
        Some(program) => Ok(program
            .canonicalize()
            .unwrap_or(program)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()),
        None => Err(Error::Missing {
            what: "PostgreSQL",
            detail: "no postgres or initdb under /usr/lib/postgresql/*/bin or on PATH".into(),
            install: INSTALL_POSTGRES.into(),
        }),
    }
}

/// `None` when we are not root (the server runs as us); else the `postgres` user.
fn owner() -> Result<Option<Owner>, Error> {
    // SAFETY: getuid never fails.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(Error::io("/etc/passwd"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3).then(|| {
                Some(Owner {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                })
            })
        })
        .flatten()
        .map(Some)
        .ok_or_else(|| Error::Missing {
            what: "the postgres user",
            detail: "PostgreSQL refuses to run as root and there is no postgres user to run it as"
                .into(),
            install: INSTALL_POSTGRES.into(),
        })
}

/// An initialised, empty cluster to copy from, made once per cache directory and server version.
fn template(bin_dir: &Path, owner: Option<Owner>) -> Result<PathBuf, Error> {
    let version = bin_dir
        .parent()
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "local".into());
    let cache = crate::resources::cache_dir();
    let template = cache.join(format!("postgres-{version}-template"));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    std::fs::create_dir_all(&cache).map_err(Error::io("the cache directory"))?;
    // initdb runs as the server's user, in a directory that user can reach.
    let work = tempfile::Builder::new()
        .prefix("task-api-initdb-")
        .tempdir()
        .map_err(Error::io("a directory for initdb"))?;
    if let Some(owner) = owner {
        chown(work.path(), owner)?;
    }
    let data = work.path().join("data");
    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .current_dir(work.path());
    if let Some(owner) = owner {
        command.uid(owner.uid).gid(owner.gid);
    }
    let output = command.output().map_err(Error::io("initdb"))?;
    if !output.status.success() {
        return Err(Error::Io {
            what: "initdb".into(),
            source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        });
    }
    // Another process may have made it meanwhile; either copy is fine.
    let staging = cache.join(format!(
        "postgres-{version}-template.{}",
        std::process::id()
    ));
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&staging)
        .status()
        .map_err(Error::io("caching the PostgreSQL template"))?;
    if !copied.success() {
        return Err(Error::Io {
            what: "caching the PostgreSQL template".into(),
            source: std::io::Error::other(format!("cp -a exited with {copied}")),
        });
    }
    if std::fs::rename(&staging, &template).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(template)
}

fn chown(path: &Path, owner: Owner) -> Result<(), Error> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", owner.uid, owner.gid))
        .arg(path)
        .status()
        .map_err(Error::io("chown"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Io {
            what: format!("chown {}", path.display()),
            source: std::io::Error::other(format!("exited with {status}")),
        })
    }
}
