//! What the list index needs from a state store: keyed documents with ETags.
//!
//! The index is written against this small interface rather than the sidecar client directly,
//! so its algorithm (splits, merges, crashes between steps, racing writers) can be exercised in
//! unit tests against an in-process store; the integration tests run it on the real ones.

use std::future::Future;

use super::super::{SidecarError, StateStore, state::Write};
use crate::domain::Versioned;

/// How a write treats the stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if the key does not exist.
    IfAbsent,
    /// Only if the stored ETag is still this one.
    IfMatch(String),
}

impl Condition {
    /// The condition for replacing what was read: its ETag, or absence if nothing was there.
    pub fn replacing(etag: Option<&str>) -> Self {
        match etag {
            Some(etag) => Condition::IfMatch(etag.to_string()),
            None => Condition::IfAbsent,
        }
    }
}

pub trait LeafStore: Clone + Send + Sync + 'static {
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<Vec<u8>>>, SidecarError>> + Send;

    /// Values in the order asked; `None` for missing keys.
    fn get_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<Versioned<Vec<u8>>>>, SidecarError>> + Send;

    /// Fails with [`SidecarError::EtagMismatch`] when the condition does not hold.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Condition,
    ) -> impl Future<Output = Result<(), SidecarError>> + Send;

    fn delete(&self, key: &str) -> impl Future<Output = Result<(), SidecarError>> + Send;
}

impl LeafStore for StateStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, SidecarError> {
        StateStore::get(self, key).await
    }

    async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, SidecarError> {
        StateStore::get_many(self, keys).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        condition: Condition,
    ) -> Result<(), SidecarError> {
        let write = match &condition {
            Condition::IfAbsent => Write::IfAbsent,
            Condition::IfMatch(etag) => Write::IfMatch(etag),
        };
        self.save(key, value, write, Default::default()).await
    }

    async fn delete(&self, key: &str) -> Result<(), SidecarError> {
        StateStore::delete(self, key, None).await
    }
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-process store with the ETag rules of a real one, plus fault injection.

    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicU64, AtomicUsize, Ordering},
        },
    };

    use super::*;

    /// Values with their ETags, by key.
    type Documents = HashMap<String, (Vec<u8>, String)>;

    #[derive(Clone, Default)]
    pub struct MemoryStore {
        data: Arc<Mutex<Documents>>,
        versions: Arc<AtomicU64>,
        /// Writes left before every write fails (a crash at that point); `usize::MAX` = never.
        writes_left: Arc<AtomicUsize>,
    }

    impl MemoryStore {
        pub fn new() -> Self {
            let store = Self::default();
            store.writes_left.store(usize::MAX, Ordering::SeqCst);
            store
        }

        /// From now on, only `n` more writes succeed.
        pub fn fail_after_writes(&self, n: usize) {
            self.writes_left.store(n, Ordering::SeqCst);
        }

        pub fn heal(&self) {
            self.writes_left.store(usize::MAX, Ordering::SeqCst);
        }

        pub fn keys(&self) -> Vec<String> {
            self.data.lock().unwrap().keys().cloned().collect()
        }

        fn spend_write(&self) -> Result<(), SidecarError> {
            let left = self.writes_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(SidecarError::Unavailable("injected failure".into()));
            }
            if left != usize::MAX {
                self.writes_left.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    impl LeafStore for MemoryStore {
        async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, SidecarError> {
            tokio::task::yield_now().await;
            Ok(self
                .data
                .lock()
                .unwrap()
                .get(key)
                .map(|(value, etag)| Versioned {
                    value: value.clone(),
                    etag: etag.clone(),
                }))
        }

        async fn get_many(
            &self,
            keys: &[String],
        ) -> Result<Vec<Option<Versioned<Vec<u8>>>>, SidecarError> {
            let mut out = Vec::new();
            for key in keys {
                out.push(LeafStore::get(self, key).await?);
            }
            Ok(out)
        }

        async fn put(
            &self,
            key: &str,
            value: Vec<u8>,
            condition: Condition,
        ) -> Result<(), SidecarError> {
            tokio::task::yield_now().await;
            self.spend_write()?;
            let mut data = self.data.lock().unwrap();
            let current = data.get(key).map(|(_, etag)| etag.clone());
            let allowed = match (&condition, &current) {
                (Condition::IfAbsent, None) => true,
                (Condition::IfMatch(expected), Some(actual)) => expected == actual,
                _ => false,
            };
            if !allowed {
                return Err(SidecarError::EtagMismatch(format!("{key}: {condition:?}")));
            }
            let etag = self.versions.fetch_add(1, Ordering::SeqCst).to_string();
            data.insert(key.to_string(), (value, etag));
            Ok(())
        }

        async fn delete(&self, key: &str) -> Result<(), SidecarError> {
            self.spend_write()?;
            self.data.lock().unwrap().remove(key);
            Ok(())
        }
    }
}
