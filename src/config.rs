//! Configuration from environment variables, each overridable by a flag of the same name
//! (`--app-port 50051` sets `APP_PORT`). Every setting has a default; the README lists them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroUsize,
    str::FromStr,
    time::Duration,
};

use crate::secret::Secret;

/// Default port of task-api.
pub(crate) const TASK_API_DEFAULT_PORT: u16 = 50051;
/// Default port of notification-service.
pub(crate) const NOTIFICATION_DEFAULT_PORT: u16 = 50052;

/// Enough to keep two cores busy through every call's waits on the sidecar; the benchmarks'
/// highest level of calls in flight.
pub(crate) const DEFAULT_MAX_CONCURRENT_CALLS: NonZeroUsize =
    NonZeroUsize::new(64).expect("64 is not 0");

/// Names of the Dapr resources task-api uses; the manifests and components must match them.
pub(crate) const DEFAULT_STATE_STORE: &str = "statestore";
pub(crate) const DEFAULT_PUBSUB: &str = "pubsub";
pub(crate) const DEFAULT_TASK_EVENTS_TOPIC: &str = "task-events";
pub(crate) const DEFAULT_OUTBOX_PUBSUB: &str = "outbox";
/// How long notification-service keeps a task's notifications after its last one: 30 days.
pub(crate) const DEFAULT_NOTIFICATION_RETENTION_SECONDS: u64 = 30 * 24 * 3600;
pub(crate) const DEFAULT_OUTBOX_TOPIC: &str = "task-events-outbox";
pub(crate) const DEFAULT_OUTBOX_RETRY_TOPIC: &str = "task-events-outbox-retry";
pub(crate) const DEFAULT_RETRY_TOPIC: &str = "task-events-retry";
pub(crate) const DEFAULT_SECRET_STORE: &str = "secretstore";
pub(crate) const DEFAULT_API_KEY_SECRET: &str = "task-api-auth";
pub(crate) const DEFAULT_API_KEY_SECRET_KEY: &str = "api-key";
pub(crate) const DEFAULT_NOTIFICATION_APP_ID: &str = "notification-service";

/// A setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} is not valid")]
    Invalid {
        name: String,
        value: String,
        #[source]
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("flag {0:?} is not of the form --name value")]
    BadFlag(String),
}

/// Raw settings: environment variables overlaid with command-line flags.
#[derive(Debug, Clone, Default)]
pub struct Settings(HashMap<String, String>);

impl Settings {
    /// The process environment, overlaid with `args` (`--app-port 1` or `--app-port=1`).
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let mut values: HashMap<String, String> = std::env::vars().collect();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::BadFlag(arg));
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| ConfigError::BadFlag(arg.clone()))?;
                    (flag.to_string(), value)
                }
            };
            values.insert(name.replace('-', "_").to_ascii_uppercase(), value);
        }
        Ok(Self(values))
    }

    /// Exactly these settings (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_string(), value.into());
    }

    /// A non-empty value.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    fn parsed<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_string(),
                value: value.to_string(),
                reason: Box::new(e),
            }),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ConfigError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some(other) => Err(ConfigError::Invalid {
                name: name.to_string(),
                value: other.to_string(),
                reason: Box::new(NotABoolean),
            }),
        }
    }

    fn seconds(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        self.parsed(name, default).map(Duration::from_secs)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("expected true or false")]
struct NotABoolean;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("expected text or json")]
pub struct UnknownLogFormat;

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(UnknownLogFormat),
        }
    }
}

/// Where the app listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `APP_HOST` (default 0.0.0.0: reachable by daprd on 127.0.0.1 and by Kubernetes probes).
    pub(crate) host: IpAddr,
    /// `APP_PORT`; 0 picks a free port.
    pub(crate) port: u16,
    /// `LOG_FORMAT`: text (default) or json.
    pub log_format: LogFormat,
    /// `METRICS_PORT`: where `/metrics` is served (Prometheus text); none when unset.
    pub(crate) metrics_port: Option<u16>,
    /// `MAX_CONCURRENT_CALLS` (default 64): callers' calls worked on at once; more wait their
    /// turn (see [`crate::admission`]).
    pub(crate) max_concurrent_calls: usize,
}

impl ServerConfig {
    fn from_settings(settings: &Settings, default_port: u16) -> Result<Self, ConfigError> {
        Ok(Self {
            host: settings.parsed("APP_HOST", IpAddr::V4(Ipv4Addr::UNSPECIFIED))?,
            port: settings.parsed("APP_PORT", default_port)?,
            log_format: settings.parsed("LOG_FORMAT", LogFormat::Text)?,
            metrics_port: settings
                .get("METRICS_PORT")
                .map(|_| settings.parsed("METRICS_PORT", 0u16))
                .transpose()?,
            max_concurrent_calls: settings
                .parsed::<NonZeroUsize>("MAX_CONCURRENT_CALLS", DEFAULT_MAX_CONCURRENT_CALLS)?
                .get(),
        })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where `/metrics` is served, if anywhere.
    pub(crate) fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_port
            .map(|port| SocketAddr::new(self.host, port))
    }
}

/// How to reach the sidecar, read the way the `dapr` crate reads it.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// `DAPR_GRPC_ENDPOINT`, else `http://127.0.0.1:$DAPR_GRPC_PORT`, else port 50001.
    pub endpoint: String,
    /// `DAPR_API_TOKEN`: sent as `dapr-api-token` on every call to the sidecar.
    pub api_token: Option<Secret>,
    /// `SIDECAR_WAIT_SECONDS` (default 60): how long start-up waits for the sidecar.
    pub wait: Duration,
    /// `SIDECAR_TIMEOUT_MS` (default 10000): the longest any one call to the sidecar may take.
    pub call_timeout: Duration,
}

impl SidecarConfig {
    fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        use dapr::client::{
            DAPR_API_TOKEN_ENV, DAPR_GRPC_ENDPOINT_ENV, DAPR_GRPC_PORT_ENV, DEFAULT_DAPR_GRPC_PORT,
        };
        let endpoint = match settings.get(DAPR_GRPC_ENDPOINT_ENV) {
            Some(endpoint) if endpoint.contains("://") => endpoint.to_string(),
            Some(host_port) => format!("http://{host_port}"),
            None => {
                let port: u16 = settings.parsed(DAPR_GRPC_PORT_ENV, DEFAULT_DAPR_GRPC_PORT)?;
                format!("http://127.0.0.1:{port}")
            }
        };
        Ok(Self {
            endpoint,
            api_token: settings.get(DAPR_API_TOKEN_ENV).map(Secret::new),
            wait: settings.seconds("SIDECAR_WAIT_SECONDS", 60)?,
            call_timeout: Duration::from_millis(settings.parsed("SIDECAR_TIMEOUT_MS", 10_000)?),
        })
    }
}

/// Where task-api's API key comes from.
#[derive(Debug, Clone)]
pub(crate) enum AuthConfig {
    /// `AUTH_DISABLED=true`: no API key is asked of direct callers.
    Disabled,
    /// The key is field `API_KEY_SECRET_KEY` (default api-key) of secret `API_KEY_SECRET_NAME`
    /// (default task-api-auth) in secret store `SECRET_STORE_NAME` (default secretstore), read
    /// again every `API_KEY_REFRESH_SECONDS` (default 30).
    ApiKey {
        secret_store: String,
        secret_name: String,
        secret_key: String,
        refresh: Duration,
    },
}

/// task-api's settings.
#[derive(Debug, Clone)]
pub struct TaskApiConfig {
    pub server: ServerConfig,
    pub(crate) sidecar: SidecarConfig,
    /// `APP_API_TOKEN`: what daprd sends as `dapr-api-token`. Required: the app refuses to
    /// start without it.
    pub(crate) app_api_token: Option<Secret>,
    /// `STATE_STORE_NAME` (default statestore).
    pub(crate) state_store: String,
    /// `PUBSUB_NAME` (default pubsub): the component of `task-events` and its retry topic.
    pub(crate) pubsub: String,
    /// `TASK_EVENTS_TOPIC` (default task-events).
    pub(crate) topic: String,
    /// `RETRY_TOPIC` (default task-events-retry): where events whose notification failed wait
    /// for another attempt (task-api subscribes to it).
    pub(crate) retry_topic: String,
    /// `OUTBOX_PUBSUB_NAME` (default outbox): the component of task-api's outbox topics.
    pub(crate) outbox_pubsub: String,
    /// `OUTBOX_TOPIC` (default task-events-outbox): where events wait for their change.
    pub(crate) outbox_topic: String,
    /// `OUTBOX_RETRY_TOPIC` (default task-events-outbox-retry): where the relay puts off
    /// events it cannot decide yet.
    pub(crate) outbox_retry_topic: String,
    pub(crate) auth: AuthConfig,
    /// `NOTIFICATION_APP_ID` (default notification-service).
    pub(crate) notification_app_id: String,
    /// `NOTIFY_TIMEOUT_MS` (default 3000).
    pub(crate) notify_timeout: Duration,
    /// `TOMBSTONE_TTL_SECONDS` (default 7 days): how long a deleted task's tombstone is kept.
    pub(crate) tombstone_ttl: Duration,
    /// `REQUEST_ID_TTL_SECONDS` (default 24 hours): how long a create's request_id is
    /// remembered.
    pub(crate) request_id_ttl: Duration,
}

impl TaskApiConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let auth = if settings.flag("AUTH_DISABLED")? {
            AuthConfig::Disabled
        } else {
            AuthConfig::ApiKey {
                secret_store: settings.string("SECRET_STORE_NAME", DEFAULT_SECRET_STORE),
                secret_name: settings.string("API_KEY_SECRET_NAME", DEFAULT_API_KEY_SECRET),
                secret_key: settings.string("API_KEY_SECRET_KEY", DEFAULT_API_KEY_SECRET_KEY),
                refresh: settings.seconds("API_KEY_REFRESH_SECONDS", 30)?,
            }
        };
        Ok(Self {
            server: ServerConfig::from_settings(settings, TASK_API_DEFAULT_PORT)?,
            sidecar: SidecarConfig::from_settings(settings)?,
            app_api_token: app_api_token(settings),
            state_store: settings.string("STATE_STORE_NAME", DEFAULT_STATE_STORE),
            pubsub: settings.string("PUBSUB_NAME", DEFAULT_PUBSUB),
            topic: settings.string("TASK_EVENTS_TOPIC", DEFAULT_TASK_EVENTS_TOPIC),
            retry_topic: settings.string("RETRY_TOPIC", DEFAULT_RETRY_TOPIC),
            outbox_pubsub: settings.string("OUTBOX_PUBSUB_NAME", DEFAULT_OUTBOX_PUBSUB),
            outbox_topic: settings.string("OUTBOX_TOPIC", DEFAULT_OUTBOX_TOPIC),
            outbox_retry_topic: settings.string("OUTBOX_RETRY_TOPIC", DEFAULT_OUTBOX_RETRY_TOPIC),
            auth,
            notification_app_id: settings
                .string("NOTIFICATION_APP_ID", DEFAULT_NOTIFICATION_APP_ID),
            notify_timeout: Duration::from_millis(settings.parsed("NOTIFY_TIMEOUT_MS", 3_000)?),
            tombstone_ttl: settings.seconds("TOMBSTONE_TTL_SECONDS", 7 * 24 * 3600)?,
            request_id_ttl: settings.seconds("REQUEST_ID_TTL_SECONDS", 24 * 3600)?,
        })
    }
}

/// notification-service's settings.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    pub server: ServerConfig,
    pub(crate) sidecar: SidecarConfig,
    /// `APP_API_TOKEN`, required as for task-api.
    pub(crate) app_api_token: Option<Secret>,
    pub(crate) state_store: String,
    /// `NOTIFICATION_RETENTION_SECONDS` (default 30 days): how long a task's notifications
    /// are kept after its last one.
    pub(crate) retention: Duration,
}

impl NotificationConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_settings(settings, NOTIFICATION_DEFAULT_PORT)?,
            sidecar: SidecarConfig::from_settings(settings)?,
            app_api_token: app_api_token(settings),
            state_store: settings.string("STATE_STORE_NAME", DEFAULT_STATE_STORE),
            retention: Duration::from_secs(settings.parsed(
                "NOTIFICATION_RETENTION_SECONDS",
                DEFAULT_NOTIFICATION_RETENTION_SECONDS,
            )?),
        })
    }
}

fn app_api_token(settings: &Settings) -> Option<Secret> {
    settings
        .get(dapr::client::APP_API_TOKEN_ENV)
        .map(Secret::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_original_names() {
        let config = TaskApiConfig::from_settings(&Settings::default()).unwrap();
        assert_eq!(config.server.port, 50051);
        assert_eq!(config.state_store, "statestore");
        assert_eq!(config.pubsub, "pubsub");
        assert_eq!(config.topic, "task-events");
        assert_eq!(config.retry_topic, "task-events-retry");
        assert_eq!(config.outbox_pubsub, "outbox");
        assert_eq!(config.sidecar.endpoint, "http://127.0.0.1:50001");
        assert!(matches!(config.auth, AuthConfig::ApiKey { .. }));
    }

    #[test]
    fn sidecar_endpoint_is_read_like_the_dapr_crate() {
        let port = Settings::from_pairs([("DAPR_GRPC_PORT", "7000")]);
        assert_eq!(
            SidecarConfig::from_settings(&port).unwrap().endpoint,
            "http://127.0.0.1:7000"
        );
        let both = Settings::from_pairs([
            ("DAPR_GRPC_PORT", "7000"),
            ("DAPR_GRPC_ENDPOINT", "http://sidecar:9000"),
        ]);
        assert_eq!(
            SidecarConfig::from_settings(&both).unwrap().endpoint,
            "http://sidecar:9000"
        );
    }

    #[test]
    fn flags_override_the_environment() {
        let mut settings = Settings::from_env_and_args(
            ["--app-port", "9", "--auth-disabled=true"].map(String::from),
        )
        .unwrap();
        settings.set("LOG_FORMAT", "json");
        let config = TaskApiConfig::from_settings(&settings).unwrap();
        assert_eq!(config.server.port, 9);
        assert!(matches!(config.auth, AuthConfig::Disabled));
        assert_eq!(config.server.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let error = TaskApiConfig::from_settings(&Settings::from_pairs([("APP_PORT", "http")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("APP_PORT"), "{error}");
        assert!(Settings::from_env_and_args(["stray".to_string()]).is_err());
    }
}
