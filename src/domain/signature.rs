//! task-api's signature on the events it publishes.
//!
//! Anyone who can publish to `task-events` can claim a completion; a notification must follow
//! only the completions task-api itself published. task-api publishes an event only once its
//! change is stored (its writer right after the write, or the relay once the stored task
//! confirms it), and signs it: an HMAC-SHA256 over the fields a consumer acts on, under a key
//! only task-api's replicas hold. The event handler notifies only what carries
//! a valid signature, a rule that holds however many changes the task had since and however
//! long the event waited. A replay of a real event carries its original revision, so its
//! notification key (`<task>.<revision>`) is the one already used.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{TaskEvent, time};

type HmacSha256 = Hmac<Sha256>;

/// The version tag in front of every signature, so the scheme can change later.
const VERSION: &str = "v1.";
/// Separates the key derivation from every other use of the secret it is derived from.
const DERIVATION_LABEL: &[u8] = b"task-api task-events signing key v1";

/// The key events are signed with.
#[derive(Clone)]
pub struct EventKey([u8; 32]);

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventKey([redacted])")
    }
}

impl EventKey {
    /// Derives the key from a secret every replica shares (task-api uses its app token).
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = keyed(secret);
        mac.update(DERIVATION_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    /// The signature of `event` (its `signature` field is not part of what is signed).
    pub fn sign(&self, event: &TaskEvent) -> String {
        let mac = self.mac(event);
        format!(
            "{VERSION}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Whether `event` carries a signature made with this key. Compared in constant time.
    pub(crate) fn verify(&self, event: &TaskEvent) -> bool {
        let Some(signature) = event.signature.as_deref() else {
            return false;
        };
        let Some(encoded) = signature.strip_prefix(VERSION) else {
            return false;
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(encoded) else {
            return false;
        };
        self.mac(event).verify_slice(&bytes).is_ok()
    }

    fn mac(&self, event: &TaskEvent) -> HmacSha256 {
        let mut mac = keyed(&self.0);
        let revision = event.revision.map(|r| r.to_string()).unwrap_or_default();
        // Length-prefixed fields: no two different events share one input.
        for field in [
            event.event_type.as_str(),
            event.task_id.as_str(),
            event.title.as_str(),
            event.status.as_str(),
            time::format(event.timestamp).as_str(),
            revision.as_str(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    HmacSha256::new_from_slice(key).expect("HMAC accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TaskEventType, TaskStatus};

    fn event() -> TaskEvent {
        TaskEvent {
            event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
            task_id: "t1".into(),
            title: "Learn Dapr".into(),
            status: TaskStatus::Completed,
            timestamp: time::parse("2025-01-15T10:30:00").unwrap(),
            revision: Some(7),
            signature: None,
        }
    }

    #[test]
    fn a_signed_event_verifies_and_survives_json() {
        let key = EventKey::derive(b"app token");
        let mut signed = event();
        signed.signature = Some(key.sign(&signed));
        assert!(key.verify(&signed));
        let read = TaskEvent::from_json(&signed.to_json()).unwrap();
        assert!(key.verify(&read));
    }

    #[test]
    fn unsigned_forged_and_altered_events_do_not_verify() {
        let key = EventKey::derive(b"app token");
        let unsigned = event();
        assert!(!key.verify(&unsigned));
        let mut other_key = event();
        other_key.signature = Some(EventKey::derive(b"another token").sign(&other_key));
        assert!(!key.verify(&other_key));
        let mut altered = event();
        altered.signature = Some(key.sign(&altered));
        altered.revision = Some(8);
        assert!(!key.verify(&altered), "a signature is for one revision");
        let mut relabelled = event();
        relabelled.event_type = TaskEventType::Updated;
        relabelled.signature = Some(key.sign(&relabelled));
        relabelled.event_type = TaskEventType::StatusChanged(TaskStatus::Completed);
        assert!(!key.verify(&relabelled), "and for one event type");
        let mut garbage = event();
        garbage.signature = Some("v1.not base64!".into());
        assert!(!key.verify(&garbage));
    }
}
