//! CloudEvent ids already handled, so a redelivered event has no second effect.

use std::{collections::HashMap, time::Duration};

use super::{
    SidecarError, StateStore,
    state::{Write, key_fragment},
};

#[derive(Debug, Clone)]
pub struct ProcessedEvents {
    state: StateStore,
    ttl: Duration,
}

impl ProcessedEvents {
    /// Ids are remembered for `ttl` (the state store expires them), comfortably longer than any
    /// redelivery.
    pub fn new(state: StateStore, ttl: Duration) -> Self {
        Self { state, ttl }
    }

    fn key(event_id: &str) -> String {
        format!("processed-event-{}", key_fragment(event_id))
    }

    pub async fn seen(&self, event_id: &str) -> Result<bool, SidecarError> {
        Ok(self.state.get(&Self::key(event_id)).await?.is_some())
    }

    pub async fn remember(&self, event_id: &str) -> Result<(), SidecarError> {
        let metadata =
            HashMap::from([("ttlInSeconds".to_string(), self.ttl.as_secs().to_string())]);
        self.state
            .save(
                &Self::key(event_id),
                b"1".to_vec(),
                Write::Unconditional,
                metadata,
            )
            .await
    }
}
