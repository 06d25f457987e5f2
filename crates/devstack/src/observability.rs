//! What the Jaeger and Prometheus launchers share: where their binaries are, and the HTTP JSON
//! queries both clients make.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{Error, binaries::ask_install_script, http};

const INSTALL: &str =
    "tools/observability/install.sh (Go from the module proxy; scripts/test runs it)";

/// The observability binaries this stack runs.
#[derive(Debug, Clone)]
pub struct ObservabilityBinaries {
    pub jaeger: PathBuf,
    pub prometheus: PathBuf,
    pub promtool: PathBuf,
}

impl ObservabilityBinaries {
    /// Finds the binaries: `OBSERVABILITY_BIN_DIR` when set, else the build made by
    /// `tools/observability/install.sh` (asked, not rebuilt: a missing or stale build is an
    /// error that names the install command).
    pub fn locate() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("OBSERVABILITY_BIN_DIR") {
            return Self::locate_in(Path::new(&dir));
        }
        let dir = ask_install_script(
            "tools/observability/install.sh",
            &["--print"],
            WHAT,
            INSTALL,
        )?;
        Self::locate_in(&dir)
    }

    /// Uses the binaries in `dir`, if they are all there.
    pub fn locate_in(dir: &Path) -> Result<Self, Error> {
        let found = Self {
            jaeger: dir.join("jaeger"),
            prometheus: dir.join("prometheus"),
            promtool: dir.join("promtool"),
        };
        for path in [&found.jaeger, &found.prometheus, &found.promtool] {
            if !path.is_file() {
                return Err(missing(format!("{} is not a file", path.display())));
            }
        }
        Ok(found)
    }
}

const WHAT: &str = "Jaeger and Prometheus";

fn missing(detail: String) -> Error {
    Error::Missing {
        what: WHAT,
        detail,
        install: INSTALL.into(),
    }
}

/// Why a query to Jaeger or Prometheus failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("GET {url} failed: {source}")]
    Http { url: String, source: std::io::Error },
    #[error("GET {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url} returned JSON of an unexpected shape: {source}")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
    #[error("GET {url} reported an error: {message}")]
    Api { url: String, message: String },
}

/// GETs `path` from `127.0.0.1:port` and decodes the JSON body into `T`.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    port: u16,
    path: &str,
) -> Result<T, QueryError> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = http::request(port, "GET", path, &[], &[], Duration::from_secs(10))
        .await
        .map_err(|source| QueryError::Http {
            url: url.clone(),
            source,
        })?;
    if response.status != 200 {
        return Err(QueryError::Status {
            url,
            status: response.status,
            body: response.text().chars().take(500).collect(),
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| QueryError::Decode { url, source })
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay as they are).
pub(crate) fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn listens(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql_for_a_query_string() {
        assert_eq!(
            encode_query_value(r#"sum(rate(x{a="b c"}[1m]))"#),
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(encode_query_value("task-api_1.~"), "task-api_1.~");
    }
}
