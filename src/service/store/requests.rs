//! Create request ids already used (AIP-155): which task each created, for how long.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ReadError, decode, encode, key_fragment};
use crate::{
    domain::{TaskId, time},
    service::ports::{Condition, KeyValueStore, StoreError, Write},
};

/// The task a request id created, and a fingerprint of the request, to tell a retry from a
/// different request that reuses the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub(crate) task_id: String,
    pub(crate) fingerprint: String,
    /// The creation time the first attempt gave the task: a retry that finishes its work
    /// keeps it, so the task keeps the list position the first attempt entered. Absent in
    /// reservations written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_at: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct CreateRequests<S> {
    store: S,
    ttl: Duration,
}

impl<S: KeyValueStore> CreateRequests<S> {
    /// Request ids are remembered for `ttl` (the state store expires them).
    pub(crate) fn new(store: S, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    fn key(request_id: &str) -> String {
        format!("create-request-{}", key_fragment(request_id))
    }

    pub(crate) async fn find(&self, request_id: &str) -> Result<Option<Reservation>, ReadError> {
        let key = Self::key(request_id);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(decode(&key, &stored.value)?)),
        }
    }

    /// Claims `request_id` for `task_id`, created at `created_at`; `false` if another call
    /// claimed it first.
    pub(crate) async fn claim(
        &self,
        request_id: &str,
        task_id: &TaskId,
        fingerprint: &str,
        created_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reservation = Reservation {
            task_id: task_id.to_string(),
            fingerprint: fingerprint.to_string(),
            created_at: Some(time::format(created_at)),
        };
        let write = Write::new(
            Self::key(request_id),
            encode(&reservation),
            Condition::IfAbsent,
        )
        .expiring(Some(self.ttl));
        match self.store.put(write).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }
}
