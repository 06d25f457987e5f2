//! What landed on the dead-letter topic: kept in one bounded document, newest last.
//!
//! Dead letters are rare and read by operators, so one document (one hot key) is fine; it keeps
//! the last [`KEPT`] and ignores a redelivery of one it already has.

use serde::{Deserialize, Serialize};

use super::{SidecarError, StateStore};

const KEY: &str = "dead-letters";
const KEPT: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The CloudEvent id.
    pub id: String,
    /// The topic it was first published to, when daprd says.
    pub topic: String,
    pub data_content_type: String,
    /// The payload as text (lossy for binary payloads).
    pub data: String,
    pub received_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    letters: Vec<DeadLetter>,
}

#[derive(Debug, Clone)]
pub struct DeadLetters {
    state: StateStore,
}

impl DeadLetters {
    pub fn new(state: StateStore) -> Self {
        Self { state }
    }

    /// Records `letter`; returns false if it was already recorded.
    pub async fn record(&self, letter: DeadLetter) -> Result<bool, SidecarError> {
        self.state
            .update_document(KEY, |doc: &mut Document| {
                if doc.letters.iter().any(|l| l.id == letter.id) {
                    return (false, false);
                }
                doc.letters.push(letter.clone());
                let excess = doc.letters.len().saturating_sub(KEPT);
                doc.letters.drain(..excess);
                (true, true)
            })
            .await
    }

    pub async fn list(&self) -> Result<Vec<DeadLetter>, SidecarError> {
        Ok(self.state.read_document::<Document>(KEY).await?.letters)
    }
}
