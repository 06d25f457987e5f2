//! State-store calls, and the optimistic read-modify-write every shared document uses.

use std::collections::HashMap;

use dapr::dapr::proto::{
    common::v1::{Etag, StateItem, StateOptions, state_options::StateConcurrency},
    runtime::v1::{DeleteStateRequest, GetBulkStateRequest, GetStateRequest, SaveStateRequest},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{Sidecar, SidecarError, client::backoff};

/// Attempts of a read-modify-write before giving up on a contended key.
pub const MAX_ATTEMPTS: u32 = 12;

pub use crate::domain::Versioned;

/// How a write treats the stored version.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Overwrite whatever is there.
    Unconditional,
    /// Only if the stored ETag is still this one.
    IfMatch(&'a str),
    /// Only if the key does not exist yet.
    IfAbsent,
}

/// One state store, reached through the sidecar.
#[derive(Debug, Clone)]
pub struct StateStore {
    sidecar: Sidecar,
    name: String,
}

impl StateStore {
    pub fn new(sidecar: Sidecar, name: &str) -> Self {
        Self {
            sidecar,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw value and ETag under `key`; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, SidecarError> {
        let response = self
            .sidecar
            .grpc()
            .get_state(GetStateRequest {
                store_name: self.name.clone(),
                key: key.to_string(),
                ..Default::default()
            })
            .await
            .map_err(SidecarError::from_state)?
            .into_inner();
        Ok((!response.data.is_empty()).then_some(Versioned {
            value: response.data,
            etag: response.etag,
        }))
    }

    /// Values of many keys in one call, in the order asked; `None` for missing keys.
    pub async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, SidecarError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Each key once: a list page can name one task twice (an entry left by a retried
        // create), and every occurrence must get the value.
        let mut unique: Vec<String> = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let response = self
            .sidecar
            .grpc()
            .get_bulk_state(GetBulkStateRequest {
                store_name: self.name.clone(),
                keys: unique,
                parallelism: 16,
                metadata: HashMap::new(),
            })
            .await
            .map_err(SidecarError::from_state)?
            .into_inner();
        let mut by_key = HashMap::with_capacity(response.items.len());
        for item in response.items {
            if !item.error.is_empty() {
                return Err(SidecarError::Unavailable(format!(
                    "the state store failed to read {}: {}",
                    item.key, item.error
                )));
            }
            if !item.data.is_empty() {
                by_key.insert(
                    item.key,
                    Versioned {
                        value: item.data,
                        etag: item.etag,
                    },
                );
            }
        }
        Ok(keys.iter().map(|key| by_key.get(key).cloned()).collect())
    }

    /// Saves `value` under `key`, with optional per-item metadata (e.g. `ttlInSeconds`).
    pub async fn save(
        &self,
        key: &str,
        value: Vec<u8>,
        write: Write<'_>,
        metadata: HashMap<String, String>,
    ) -> Result<(), SidecarError> {
        let (etag, concurrency) = match write {
            Write::Unconditional => (None, StateConcurrency::ConcurrencyLastWrite),
            Write::IfMatch(etag) => (
                Some(Etag {
                    value: etag.to_string(),
                }),
                StateConcurrency::ConcurrencyFirstWrite,
            ),
            Write::IfAbsent => (None, StateConcurrency::ConcurrencyFirstWrite),
        };
        let result = self
            .sidecar
            .grpc()
            .save_state(SaveStateRequest {
                store_name: self.name.clone(),
                states: vec![StateItem {
                    key: key.to_string(),
                    value,
                    etag,
                    metadata,
                    options: Some(StateOptions {
                        concurrency: concurrency as i32,
                        consistency: 0,
                    }),
                }],
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // state.redis and state.postgresql report a failed create-if-absent as a plain
            // error (not an ETag mismatch); state.in-memory reports ABORTED. Look at the key to
            // tell a lost race from a real failure.
            Err(status) if matches!(write, Write::IfAbsent) => match self.get(key).await {
                Ok(Some(_)) => Err(SidecarError::EtagMismatch(format!("{key} already exists"))),
                _ => Err(SidecarError::from_state(status)),
            },
            Err(status) => Err(SidecarError::from_state(status)),
        }
    }

    /// Saves many values at once, overwriting what is there (bulk loading).
    pub async fn save_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), SidecarError> {
        if items.is_empty() {
            return Ok(());
        }
        let states = items
            .into_iter()
            .map(|(key, value)| StateItem {
                key,
                value,
                etag: None,
                metadata: HashMap::new(),
                options: Some(StateOptions {
                    concurrency: StateConcurrency::ConcurrencyLastWrite as i32,
                    consistency: 0,
                }),
            })
            .collect();
        self.sidecar
            .grpc()
            .save_state(SaveStateRequest {
                store_name: self.name.clone(),
                states,
            })
            .await
            .map_err(SidecarError::from_state)?;
        Ok(())
    }

    /// Deletes `key`, only if its ETag is still `etag` when one is given.
    pub async fn delete(&self, key: &str, etag: Option<&str>) -> Result<(), SidecarError> {
        self.sidecar
            .grpc()
            .delete_state(DeleteStateRequest {
                store_name: self.name.clone(),
                key: key.to_string(),
                etag: etag.map(|value| Etag {
                    value: value.to_string(),
                }),
                options: Some(StateOptions {
                    concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
                    consistency: 0,
                }),
                metadata: HashMap::new(),
            })
            .await
            .map_err(SidecarError::from_state)?;
        Ok(())
    }

    /// A JSON document under `key`, or `T::default()` when absent.
    pub async fn read_document<T: DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<T, SidecarError> {
        match self.get(key).await? {
            None => Ok(T::default()),
            Some(stored) => decode(key, &stored.value),
        }
    }

    /// Changes the JSON document under `key` with `change`, which returns whether it changed
    /// anything. The write is guarded by the ETag read (or by create-if-absent for a new
    /// document) and retried on conflict, so concurrent updates are never lost.
    pub async fn update_document<T, F, R>(
        &self,
        key: &str,
        mut change: F,
    ) -> Result<R, SidecarError>
    where
        T: Serialize + DeserializeOwned + Default,
        F: FnMut(&mut T) -> (bool, R),
    {
        let mut attempt = 0;
        loop {
            let stored = self.get(key).await?;
            let (mut document, etag) = match &stored {
                Some(stored) => (decode::<T>(key, &stored.value)?, Some(stored.etag.as_str())),
                None => (T::default(), None),
            };
            let (changed, result) = change(&mut document);
            if !changed {
                return Ok(result);
            }
            let bytes = serde_json::to_vec(&document).map_err(|e| SidecarError::Failed {
                code: tonic::Code::Internal,
                message: format!("could not serialise the document for {key}: {e}"),
            })?;
            let write = etag.map_or(Write::IfAbsent, Write::IfMatch);
            match self.save(key, bytes, write, HashMap::new()).await {
                Ok(()) => return Ok(result),
                Err(SidecarError::EtagMismatch(_)) if attempt + 1 < MAX_ATTEMPTS => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses a stored JSON document.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, SidecarError> {
    serde_json::from_slice(bytes).map_err(|e| SidecarError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A state-key fragment for an arbitrary string (e.g. a CloudEvent id): letters, digits, `-`,
/// `_` and `.` pass; anything else is percent-encoded, so distinct inputs stay distinct keys.
pub fn key_fragment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fragments_keep_safe_text_and_encode_the_rest() {
        assert_eq!(key_fragment("3f1c-ab_c.d"), "3f1c-ab_c.d");
        assert_eq!(key_fragment("a||b"), "a%7C%7Cb");
        assert_ne!(key_fragment("a/b"), key_fragment("a%2Fb"));
    }
}
