use std::{io, path::PathBuf};

/// Why the benchmark could not run (request errors are results, not these).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Stack(#[from] devstack::Error),
    #[error("{0}")]
    Setup(String),
    #[error("could not connect to {what}: {detail}")]
    Connect { what: String, detail: String },
    #[error("could not write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

pub type Result<T> = std::result::Result<T, BenchError>;

pub fn setup(message: impl Into<String>) -> BenchError {
    BenchError::Setup(message.into())
}
