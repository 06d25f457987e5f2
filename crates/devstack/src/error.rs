use std::{io, path::PathBuf, time::Duration};

/// Why the local runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is not installed ({detail}). Install it with: {install}")]
    Missing {
        what: &'static str,
        detail: String,
        install: String,
    },
    #[error(
        "{what} is not installed: could not run {}: {source}. Install it with: {install}",
        program.display()
    )]
    NotRunnable {
        what: &'static str,
        program: PathBuf,
        install: String,
        source: io::Error,
    },
    #[error("could not start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{name} exited during start-up ({status}). Its last log lines:\n{log}")]
    DiedDuringStartup {
        name: String,
        status: String,
        log: String,
    },
    #[error("{name} was not ready after {waited:?}: {detail}. Its last log lines:\n{log}")]
    NotReady {
        name: String,
        waited: Duration,
        detail: String,
        log: String,
    },
    #[error("port {port} is already in use ({what})")]
    PortInUse { port: u16, what: String },
    #[error("could not prepare {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("kubectl {args} failed: {detail}")]
    Kubectl { args: String, detail: String },
    #[error("kubectl {args} failed {what}: {source}")]
    KubectlIo {
        args: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("kubectl {args} answered unreadable JSON: {source}")]
    KubectlJson {
        args: String,
        source: serde_json::Error,
    },
    #[error("could not connect a Dapr client to {address}: {source}")]
    Client {
        address: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} did not answer: {source}")]
    Http { what: String, source: io::Error },
    #[error("{what} answered with something other than JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
