//! Create request ids already used (AIP-155): which task each created, for how long.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    SidecarError, StateStore,
    state::{Write, key_fragment},
};
use chrono::{DateTime, Utc};

use crate::domain::{TaskId, time};

/// The task a request id created, and a fingerprint of the request, to tell a retry from a
/// different request that reuses the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub task_id: String,
    pub fingerprint: String,
    /// The creation time the first attempt gave the task: a retry that finishes its work
    /// keeps it, so the task keeps the list position the first attempt entered. Absent in
    /// reservations written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CreateRequests {
    state: StateStore,
    ttl: Duration,
}

impl CreateRequests {
    /// Request ids are remembered for `ttl` (the state store expires them).
    pub fn new(state: StateStore, ttl: Duration) -> Self {
        Self { state, ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(request_id: &str) -> String {
        format!("create-request-{}", key_fragment(request_id))
    }

    pub async fn find(&self, request_id: &str) -> Result<Option<Reservation>, SidecarError> {
        match self.state.get(&Self::key(request_id)).await? {
            None => Ok(None),
            Some(stored) => super::state::decode(&Self::key(request_id), &stored.value).map(Some),
        }
    }

    /// Claims `request_id` for `task_id`, created at `created_at`; `false` if another call
    /// claimed it first.
    pub async fn claim(
        &self,
        request_id: &str,
        task_id: &TaskId,
        fingerprint: &str,
        created_at: DateTime<Utc>,
    ) -> Result<bool, SidecarError> {
        let reservation = Reservation {
            task_id: task_id.to_string(),
            fingerprint: fingerprint.to_string(),
            created_at: Some(time::format(created_at)),
        };
        let bytes = serde_json::to_vec(&reservation).expect("a reservation serialises to JSON");
        let metadata = HashMap::from([(
            "ttlInSeconds".to_string(),
            self.ttl.as_secs().max(1).to_string(),
        )]);
        match self
            .state
            .save(&Self::key(request_id), bytes, Write::IfAbsent, metadata)
            .await
        {
            Ok(()) => Ok(true),
            Err(SidecarError::EtagMismatch(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}
