//! A Dapr state store as the service layer's [`KeyValueStore`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use dapr::dapr::proto::{
    common::v1::{Etag, StateItem, StateOptions, state_options::StateConcurrency},
    runtime::v1::{
        DeleteStateRequest, ExecuteStateTransactionRequest, GetBulkStateRequest, GetStateRequest,
        SaveStateRequest, TransactionalStateOperation,
    },
};
use tokio::sync::OnceCell;
use tonic::{Code, Status};

use super::{Call, Sidecar, client::transient, store_kind::StoreKind, timed, witness};
use crate::{
    domain::Versioned,
    service::ports::{Condition, KeyValueStore, StoreError, Write},
};

/// How long a read may take before it is answered as unavailable: a stopped store otherwise
/// holds a read for the store client's own timeouts (seconds), while callers want to know at
/// once.
const READ_DEADLINE: Duration = Duration::from_millis(800);
/// Keys read at once by one bulk read.
const BULK_PARALLELISM: i32 = 16;

/// One state store, reached through the sidecar.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    sidecar: Sidecar,
    name: String,
    /// What the store is: learned from the sidecar's metadata (and the witness written, if its
    /// bulk reads need it) at the first write or bulk read.
    kind: Arc<OnceCell<StoreKind>>,
}

/// A state call's failure. daprd answers ABORTED for a stale ETag and INVALID_ARGUMENT for a
/// malformed one (the only invalid part a request of ours can have); INTERNAL means the store
/// itself failed (unreachable, timed out).
fn store_error(status: Status, key: &str) -> StoreError {
    match status.code() {
        Code::Aborted => StoreError::Conflict {
            key: key.to_string(),
        },
        Code::InvalidArgument => StoreError::InvalidEtag {
            source: Box::new(status),
        },
        code if transient(code) => StoreError::Unavailable {
            source: Box::new(status),
        },
        _ => StoreError::Failed {
            source: Box::new(status),
        },
    }
}

/// How a write's condition is sent to a store of `kind`.
fn options(condition: &Condition, kind: StoreKind) -> (Option<Etag>, StateConcurrency) {
    let etag = |value: &str| {
        Some(Etag {
            value: value.to_string(),
        })
    };
    match condition {
        Condition::Any => (None, StateConcurrency::ConcurrencyLastWrite),
        Condition::IfMatch(value) => (etag(value), StateConcurrency::ConcurrencyFirstWrite),
        Condition::IfAbsent => (
            kind.absent_etag().and_then(etag),
            StateConcurrency::ConcurrencyFirstWrite,
        ),
    }
}

fn item(write: Write, kind: StoreKind) -> StateItem {
    let (etag, concurrency) = options(&write.condition, kind);
    let mut metadata = HashMap::new();
    if let Some(ttl) = write.ttl {
        metadata.insert("ttlInSeconds".to_string(), ttl.as_secs().max(1).to_string());
    }
    StateItem {
        key: write.key,
        value: write.value,
        etag,
        metadata,
        options: Some(StateOptions {
            concurrency: concurrency as i32,
            consistency: 0,
        }),
    }
}

impl StateStore {
    pub(crate) fn new(sidecar: Sidecar, name: &str) -> Self {
        Self {
            sidecar,
            name: name.to_string(),
            kind: Arc::default(),
        }
    }

    /// What this store is; on the first call, asks the sidecar and, if its bulk reads need the
    /// witness, writes the witness. Every write needs it, to send its condition.
    async fn kind(&self) -> Result<StoreKind, StoreError> {
        let learn = || async {
            let metadata =
                self.sidecar
                    .metadata()
                    .await
                    .map_err(|error| StoreError::Unavailable {
                        source: Box::new(error),
                    })?;
            let component_type = metadata
                .registered_components
                .iter()
                .find(|component| component.name == self.name)
                .map(|component| component.r#type.as_str());
            let kind = StoreKind::of(component_type);
            if kind.needs_witness {
                self.save(vec![item(witness::write(), kind)])
                    .await
                    .map_err(|status| store_error(status, witness::KEY))?;
            }
            Ok(kind)
        };
        self.kind.get_or_try_init(learn).await.copied()
    }

    /// One GetBulkState: the values found, by key.
    async fn bulk_get(
        &self,
        keys: Vec<String>,
    ) -> Result<HashMap<String, Versioned<Vec<u8>>>, StoreError> {
        let mut request = tonic::Request::new(GetBulkStateRequest {
            store_name: self.name.clone(),
            keys,
            parallelism: BULK_PARALLELISM,
            metadata: HashMap::new(),
        });
        request.set_timeout(READ_DEADLINE);
        let mut grpc = self.sidecar.grpc();
        let response = timed(
            Call::new("state", "bulk_get", "GetBulkState"),
            grpc.get_bulk_state(request),
        )
        .await
        .map_err(|status| store_error(status, "(bulk read)"))?
        .into_inner();
        let mut by_key = HashMap::with_capacity(response.items.len());
        for item in response.items {
            if !item.error.is_empty() {
                return Err(StoreError::Unavailable {
                    source: format!("reading {}: {}", item.key, item.error).into(),
                });
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
        Ok(by_key)
    }

    async fn save(&self, items: Vec<StateItem>) -> Result<(), Status> {
        let operation = if items.len() == 1 {
            "save"
        } else {
            "bulk_save"
        };
        let mut grpc = self.sidecar.grpc();
        let request = SaveStateRequest {
            store_name: self.name.clone(),
            states: items,
        };
        timed(
            Call::new("state", operation, "SaveState"),
            grpc.save_state(request),
        )
        .await
        .map(|_| ())
    }

    /// One ExecuteStateTransaction of upserts.
    async fn transact(&self, items: Vec<StateItem>) -> Result<(), Status> {
        let mut grpc = self.sidecar.grpc();
        let request = ExecuteStateTransactionRequest {
            store_name: self.name.clone(),
            operations: items
                .into_iter()
                .map(|item| TransactionalStateOperation {
                    operation_type: "upsert".to_string(),
                    request: Some(item),
                })
                .collect(),
            metadata: HashMap::new(),
        };
        timed(
            Call::new("state", "transaction", "ExecuteStateTransaction"),
            grpc.execute_state_transaction(request),
        )
        .await
        .map(|_| ())
    }

    /// Whether `writes` go as one transaction rather than one save: several of them, on a store
    /// whose transactions are pipelined and can carry each one's condition.
    fn as_transaction(writes: &[Write], kind: StoreKind) -> bool {
        writes.len() > 1 && writes.iter().all(|write| kind.transacts(&write.condition))
    }
}

impl KeyValueStore for StateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        let mut request = tonic::Request::new(GetStateRequest {
            store_name: self.name.clone(),
            key: key.to_string(),
            ..Default::default()
        });
        request.set_timeout(READ_DEADLINE);
        let mut grpc = self.sidecar.grpc();
        let response = timed(
            Call::new("state", "get", "GetState"),
            grpc.get_state(request),
        )
        .await
        .map_err(|status| store_error(status, key))?
        .into_inner();
        Ok((!response.data.is_empty()).then_some(Versioned {
            value: response.data,
            etag: response.etag,
        }))
    }

    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Each key once: a list page can name one task twice (an entry left by a retried
        // create), and every occurrence must get the value.
        let mut unique: Vec<String> = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if !self.kind().await?.needs_witness {
            let found = self.bulk_get(unique).await?;
            return Ok(keys.iter().map(|key| found.get(key).cloned()).collect());
        }
        unique.push(witness::KEY.to_string());
        let mut rewritten = false;
        loop {
            let mut found = self.bulk_get(unique.clone()).await?;
            if found.remove(witness::KEY).is_some() {
                return Ok(keys.iter().map(|key| found.get(key).cloned()).collect());
            }
            // Without the witness the read failed, unless someone removed the witness: then it
            // is written again and the read asked once more.
            if rewritten || self.get(witness::KEY).await?.is_some() {
                return Err(StoreError::Unavailable {
                    source: Box::new(witness::ReadFailed),
                });
            }
            self.put(witness::write()).await?;
            rewritten = true;
        }
    }

    async fn put(&self, write: Write) -> Result<Option<String>, StoreError> {
        let key = write.key.clone();
        let condition = write.condition.clone();
        let kind = self.kind().await?;
        match self.save(vec![item(write, kind)]).await {
            Ok(()) => Ok(kind.etag_after(&condition)),
            // state.postgresql reports a failed create-if-absent as a plain error (not an ETag
            // mismatch); state.in-memory and, under its absent ETag, state.redis report ABORTED.
            // Look at the key to tell a lost race from a real failure.
            Err(status) if condition == Condition::IfAbsent => match self.get(&key).await {
                Ok(Some(_)) => Err(StoreError::Conflict { key }),
                _ => Err(store_error(status, &key)),
            },
            Err(status) => Err(store_error(status, &key)),
        }
    }

    async fn put_many(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let first = writes[0].key.clone();
        let kind = self.kind().await?;
        let transaction = Self::as_transaction(&writes, kind);
        let items = writes.into_iter().map(|write| item(write, kind)).collect();
        let written = if transaction {
            self.transact(items).await
        } else {
            self.save(items).await
        };
        written.map_err(|status| store_error(status, &first))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut grpc = self.sidecar.grpc();
        let request = grpc.delete_state(DeleteStateRequest {
            store_name: self.name.clone(),
            key: key.to_string(),
            etag: None,
            options: Some(StateOptions {
                concurrency: StateConcurrency::ConcurrencyLastWrite as i32,
                consistency: 0,
            }),
            metadata: HashMap::new(),
        });
        timed(Call::new("state", "delete", "DeleteState"), request)
            .await
            .map_err(|status| store_error(status, key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(condition: Condition) -> Write {
        Write::new("task-1", b"{}".to_vec(), condition)
    }

    #[test]
    fn only_if_absent_goes_under_the_stores_absent_etag_where_it_has_one() {
        let redis = StoreKind::of(Some("state.redis"));
        let sent = item(write(Condition::IfAbsent), redis);
        assert_eq!(sent.etag.map(|etag| etag.value), Some("-1".to_string()));
        let postgres = StoreKind::of(Some("state.postgresql"));
        let sent = item(write(Condition::IfAbsent), postgres);
        assert_eq!(sent.etag, None);
        let first_write = StateConcurrency::ConcurrencyFirstWrite as i32;
        assert_eq!(sent.options.map(|o| o.concurrency), Some(first_write));
    }

    #[test]
    fn several_writes_go_as_one_transaction_where_it_pipelines_and_carries_each_condition() {
        let redis = StoreKind::of(Some("state.redis"));
        let postgres = StoreKind::of(Some("state.postgresql"));
        let mixed = [
            write(Condition::IfAbsent),
            write(Condition::IfMatch("4".into())),
            write(Condition::Any),
        ];
        assert!(StateStore::as_transaction(&mixed, redis));
        assert!(!StateStore::as_transaction(&mixed[..1], redis), "one write");
        assert!(!StateStore::as_transaction(&mixed, postgres));
    }
}
