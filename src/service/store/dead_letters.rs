//! Events task-api could never handle, kept for operators to read and replay.
//!
//! Each letter is its own document (`dead-letter-<event id>`, payload cut to [`MAX_DATA_BYTES`]),
//! and a catalog document lists the ids of the newest [`KEPT`]. Every document, every bulk read
//! ([`READ_CHUNK`] letters) and the summary listing stay below daprd's 4 MiB message limit
//! however large or many the letters that arrive.

use serde::{Deserialize, Serialize};

use super::{ReadError, encode, key_fragment, read_document, update_document};
use crate::service::ports::{Condition, KeyValueStore, StoreError, Write};

const CATALOG: &str = "dead-letters";
/// Letters kept; the oldest go first.
pub(crate) const KEPT: usize = 1000;
/// Bytes of payload kept per letter.
pub(crate) const MAX_DATA_BYTES: usize = 64 * 1024;
/// Longest event id kept (ids are chosen by publishers).
const MAX_ID_BYTES: usize = 200;
/// Longest reason kept.
const MAX_REASON_BYTES: usize = 1000;
/// Letters read per bulk read: 16 × 64 KiB stays far below 4 MiB.
const READ_CHUNK: usize = 16;
/// Bytes of payload a summary shows.
pub(crate) const EXCERPT_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeadLetter {
    /// The CloudEvent id.
    pub(crate) id: String,
    /// The topic it arrived on.
    pub(crate) topic: String,
    /// How it is handled on replay (`task-events` or `outbox`).
    #[serde(default)]
    pub(crate) route: String,
    /// Why it could not be handled.
    #[serde(default)]
    pub(crate) reason: String,
    pub(crate) data_content_type: String,
    /// The payload as text (lossy for binary payloads), cut to [`MAX_DATA_BYTES`].
    pub(crate) data: String,
    #[serde(default)]
    pub(crate) truncated: bool,
    /// The payload's size as it arrived.
    #[serde(default)]
    pub(crate) data_bytes: usize,
    pub(crate) received_at: String,
}

/// A letter as `GET dead-letters` lists it: the start of its payload only, so a thousand of
/// them (about 2 KiB each at most) fit one answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetterSummary {
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) route: String,
    pub(crate) reason: String,
    pub(crate) data_content_type: String,
    pub(crate) data_bytes: usize,
    /// The first [`EXCERPT_BYTES`] of the payload; `GET dead-letters/<id>` has the rest kept.
    pub(crate) data_excerpt: String,
    pub(crate) received_at: String,
}

impl From<DeadLetter> for DeadLetterSummary {
    fn from(letter: DeadLetter) -> Self {
        let mut data_excerpt = letter.data;
        cut(&mut data_excerpt, EXCERPT_BYTES);
        Self {
            id: letter.id,
            topic: letter.topic,
            route: letter.route,
            reason: letter.reason,
            data_content_type: letter.data_content_type,
            data_bytes: letter.data_bytes,
            data_excerpt,
            received_at: letter.received_at,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Catalog {
    ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct DeadLetters<S> {
    store: S,
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

impl<S: KeyValueStore> DeadLetters<S> {
    pub(crate) fn new(store: S) -> Self {
        Self { store }
    }

    fn key(id: &str) -> String {
        format!("dead-letter-{}", key_fragment(id))
    }

    /// Records `letter`; returns how many letters are kept now.
    pub(crate) async fn record(&self, mut letter: DeadLetter) -> Result<usize, ReadError> {
        cut(&mut letter.id, MAX_ID_BYTES);
        letter.data_bytes = letter.data_bytes.max(letter.data.len());
        letter.truncated = cut(&mut letter.data, MAX_DATA_BYTES);
        cut(&mut letter.reason, MAX_REASON_BYTES);
        // The letter first: a catalog entry never names a letter that is not there.
        self.store
            .put(Write::new(
                Self::key(&letter.id),
                encode(&letter),
                Condition::Any,
            ))
            .await?;
        let id = letter.id.clone();
        let (kept, evicted) = update_document(&self.store, CATALOG, |catalog: &mut Catalog| {
            if catalog.ids.contains(&id) {
                return (false, (catalog.ids.len(), Vec::new()));
            }
            catalog.ids.push(id.clone());
            let excess = catalog.ids.len().saturating_sub(KEPT);
            let evicted: Vec<String> = catalog.ids.drain(..excess).collect();
            (true, (catalog.ids.len(), evicted))
        })
        .await?;
        for old in evicted {
            if let Err(error) = self.store.delete(&Self::key(&old)).await {
                tracing::debug!(%error, "evicted dead letter not deleted");
            }
        }
        Ok(kept)
    }

    /// The ids of the kept letters, oldest first, in groups small enough to read at once
    /// with [`DeadLetters::read`].
    pub(crate) async fn id_chunks(&self) -> Result<Vec<Vec<String>>, ReadError> {
        let catalog: Catalog = read_document(&self.store, CATALOG).await?;
        Ok(catalog
            .ids
            .chunks(READ_CHUNK)
            .map(<[String]>::to_vec)
            .collect())
    }

    /// The letters with these ids (at most [`READ_CHUNK`] of them), in their order.
    pub(crate) async fn read(&self, ids: &[String]) -> Result<Vec<DeadLetter>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| Self::key(id)).collect();
        let mut letters = Vec::with_capacity(keys.len());
        for stored in self.store.get_many(&keys).await?.into_iter().flatten() {
            match serde_json::from_slice::<DeadLetter>(&stored.value) {
                Ok(letter) => letters.push(letter),
                Err(error) => tracing::warn!(%error, "an unreadable dead letter was skipped"),
            }
        }
        Ok(letters)
    }

    /// Summaries of the kept letters, oldest first.
    pub(crate) async fn summaries(&self) -> Result<Vec<DeadLetterSummary>, ReadError> {
        let mut summaries = Vec::new();
        for ids in self.id_chunks().await? {
            summaries.extend(self.read(&ids).await?.into_iter().map(Into::into));
        }
        Ok(summaries)
    }

    /// One letter, with as much of its payload as was kept.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let mut id = id.to_string();
        cut(&mut id, MAX_ID_BYTES);
        Ok(self.read(&[id]).await?.pop())
    }

    /// Forgets a letter (after a successful replay).
    pub(crate) async fn remove(&self, id: &str) -> Result<(), ReadError> {
        update_document(&self.store, CATALOG, |catalog: &mut Catalog| {
            let before = catalog.ids.len();
            catalog.ids.retain(|kept| kept != id);
            (catalog.ids.len() != before, ())
        })
        .await?;
        Ok(self.store.delete(&Self::key(id)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        let mut text = "ééé".to_string();
        assert!(cut(&mut text, 3));
        assert_eq!(text, "é");
        let mut short = "ok".to_string();
        assert!(!cut(&mut short, 3));
    }
}
