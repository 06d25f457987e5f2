//! The documents task-api keeps in its state store, for tools that read or fill the store
//! directly: audits that compare what was stored with what was published, benchmarks that
//! start from many tasks, migrations.
//!
//! A task lives under [`task_key`] as [`task_document`] (the Python original's JSON plus
//! task-api's revision and unpublished changes); [`Loader`] writes tasks and their list entries
//! through a sidecar as task-api would have, so they list at once.

use crate::{
    config::SidecarConfig,
    domain::{TaskId, TaskRecord, Unpublished},
    service::SharedCause,
    service::{
        index::TaskIndex,
        ports::{Condition, KeyValueStore, StoreError, Write},
        store::records,
        tasks::{list_of, position_of},
    },
    sidecar::{Sidecar, SidecarError, StateStore},
};

/// The state key of a task.
pub fn task_key(id: &TaskId) -> String {
    records::task_key(id)
}

/// The stored document of a task.
pub fn task_document(record: &TaskRecord) -> Vec<u8> {
    records::to_json(record)
}

/// A stored task document that does not read.
#[derive(Debug, thiserror::Error)]
#[error("the task document is not valid")]
pub struct InvalidDocument(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Reads a stored task document (`key` names it in the error).
pub fn read_task_document(key: &str, bytes: &[u8]) -> Result<TaskRecord, InvalidDocument> {
    records::from_json(key, bytes).map_err(|error| InvalidDocument(Box::new(error)))
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the sidecar settings cannot be used")]
    Sidecar(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("writing the tasks")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("writing the list entries")]
    Index(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<SidecarError> for LoadError {
    fn from(error: SidecarError) -> Self {
        LoadError::Sidecar(Box::new(error))
    }
}

impl From<StoreError> for LoadError {
    fn from(error: StoreError) -> Self {
        LoadError::Store(Box::new(error))
    }
}

/// Writes tasks and their list entries straight into a state store, through a sidecar.
pub struct Loader {
    store: StateStore,
    index: TaskIndex<StateStore>,
}

impl Loader {
    /// A loader for state store `store_name` behind the sidecar `sidecar`. Must be called within
    /// a tokio runtime.
    pub fn new(sidecar: &SidecarConfig, store_name: &str) -> Result<Self, LoadError> {
        let store = StateStore::new(Sidecar::connect_lazy(sidecar)?, store_name);
        Ok(Self {
            index: TaskIndex::new(store.clone()),
            store,
        })
    }

    /// Writes `records` as tasks whose events were all published long ago, each listed.
    pub async fn load(&self, records: &[TaskRecord]) -> Result<(), LoadError> {
        let mut entries = tokio::task::JoinSet::new();
        for record in records {
            let Some(list) = list_of(record) else {
                continue;
            };
            let index = self.index.clone();
            let (position, revision) = (position_of(record), record.revision);
            entries.spawn(async move { index.insert(list, position, revision).await });
        }
        while let Some(inserted) = entries.join_next().await {
            if let Ok(Err(error)) = inserted {
                return Err(LoadError::Index(Box::new(SharedCause(error))));
            }
        }
        let writes = records
            .iter()
            .map(|record| {
                let settled = TaskRecord {
                    unpublished: Unpublished::default(),
                    ..record.clone()
                };
                Write::new(
                    task_key(record.id()),
                    task_document(&settled),
                    Condition::Any,
                )
            })
            .collect();
        Ok(self.store.put_many(writes).await?)
    }
}
