//! The documents task-api keeps in the state store, each with its JSON codec, over the
//! [`KeyValueStore`](super::ports::KeyValueStore) port.
//!
//! Every document follows one pattern: a `Wire` struct that serde reads and writes, and a
//! domain value made from it with `TryFrom`, which names the field that is wrong. A document
//! that does not read is reported with its key ([`CorruptDocument`]), never skipped silently.

pub(crate) mod dead_letters;
pub(crate) mod grouped;
pub(crate) mod published;
pub(crate) mod records;
pub(crate) mod requests;

use serde::{Serialize, de::DeserializeOwned};

use super::{
    backoff,
    ports::{Condition, KeyValueStore, StoreError, Write},
};
use crate::domain::Versioned;

/// Attempts of a read-modify-write of one document before giving up on a contended key.
pub(crate) const MAX_ATTEMPTS: u32 = 12;

/// A stored document this service cannot read.
#[derive(Debug, thiserror::Error)]
#[error("the document under {key:?} is not valid")]
pub(crate) struct CorruptDocument {
    pub(crate) key: String,
    #[source]
    pub(crate) source: serde_json::Error,
}

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corrupt(#[from] CorruptDocument),
}

/// Reads the document stored under `key`.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CorruptDocument> {
    serde_json::from_slice(bytes).map_err(|source| CorruptDocument {
        key: key.to_string(),
        source,
    })
}

/// The documents under `keys` in one call, in order, each read by `read`; `None` where there is
/// none. A document that cannot be read is reported per key, not for the whole call.
pub(crate) async fn get_many<S: KeyValueStore, T>(
    store: &S,
    keys: &[String],
    read: impl Fn(&str, &[u8]) -> Result<T, CorruptDocument>,
) -> Result<Vec<Result<Option<Versioned<T>>, CorruptDocument>>, StoreError> {
    let stored = store.get_many(keys).await?;
    Ok(keys
        .iter()
        .zip(stored)
        .map(|(key, stored)| {
            stored
                .map(|s| {
                    Ok(Versioned {
                        value: read(key, &s.value)?,
                        etag: s.etag,
                    })
                })
                .transpose()
        })
        .collect())
}

/// Writes a document. Every document here is plain strings and numbers, which always serialise.
pub(crate) fn encode<T: Serialize>(document: &T) -> Vec<u8> {
    serde_json::to_vec(document).expect("documents of strings and numbers serialise to JSON")
}

/// A JSON document under `key`, or `T::default()` when absent.
pub(crate) async fn read_document<S: KeyValueStore, T: DeserializeOwned + Default>(
    store: &S,
    key: &str,
) -> Result<T, ReadError> {
    match store.get(key).await? {
        None => Ok(T::default()),
        Some(stored) => Ok(decode(key, &stored.value)?),
    }
}

/// Changes the JSON document under `key` with `change`, which returns whether it changed
/// anything. The write is guarded by the ETag read (or by create-if-absent for a new document)
/// and retried on conflict, so concurrent updates are never lost.
pub(crate) async fn update_document<S, T, F, R>(
    store: &S,
    key: &str,
    mut change: F,
) -> Result<R, ReadError>
where
    S: KeyValueStore,
    T: Serialize + DeserializeOwned + Default,
    F: FnMut(&mut T) -> (bool, R),
{
    let mut attempt = 0;
    loop {
        let stored = store.get(key).await?;
        let (mut document, etag) = match &stored {
            Some(stored) => (decode::<T>(key, &stored.value)?, Some(stored.etag.as_str())),
            None => (T::default(), None),
        };
        let (changed, result) = change(&mut document);
        if !changed {
            return Ok(result);
        }
        let write = Write::new(key, encode(&document), Condition::replacing(etag));
        match store.put(write).await {
            Ok(_) => return Ok(result),
            Err(StoreError::Conflict { .. }) if attempt + 1 < MAX_ATTEMPTS => {
                attempt += 1;
                backoff(attempt).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A state-key fragment for an arbitrary string (e.g. a CloudEvent id): letters, digits, `-`,
/// `_` and `.` pass; anything else is percent-encoded, so distinct inputs stay distinct keys.
pub(crate) fn key_fragment(text: &str) -> String {
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
