//! What a task record keeps of its own changes, and the decision the outbox relay makes from it.
//!
//! Every committed change gives a task its next revision and records
//! `(revision, nonce, event type)` among the task's [`Unpublished`] changes: changes whose
//! event is not yet known to be published. The nonce is random per attempt, so of two writers
//! racing from one revision only the winner's is recorded. An entry leaves the list only once
//! its event is recorded as published, so the list answers "did this change commit?"
//! exactly, however many changes followed and however long the question waited:
//!
//! | The record | Verdict on a staged `(revision, nonce)` |
//! |---|---|
//! | not at that revision yet (or no record) | [`Verdict::NotYet`]: the write is in flight, or failed |
//! | lists that revision with that nonce | [`Verdict::Committed`]: publish it |
//! | lists that revision with another nonce | [`Verdict::Superseded`]: a racing writer won |
//! | past that revision, without it in the list | [`Verdict::Settled`]: published already, or never the winner |

use std::fmt;

use super::TaskEventType;

/// A per-attempt random tag of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(u32);

impl Nonce {
    pub fn random() -> Self {
        Self(fastrand::u32(..))
    }

    /// Parses the 8 hex digits [`fmt::Display`] writes.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        (text.len() == 8)
            .then(|| u32::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// One committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) revision: u64,
    pub(crate) nonce: Nonce,
    pub(crate) event_type: TaskEventType,
}

/// The changes of a task whose events are not yet known to be published, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unpublished(Vec<Change>);

/// What the stored task says about a staged change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The task has not reached that revision: the write is in flight, or failed.
    NotYet,
    /// The change committed and its event is not published yet.
    Committed,
    /// Another change took that revision: the staged one lost a race.
    Superseded,
    /// Nothing to do: the change's event was published already, or the change never won.
    Settled,
}

impl Unpublished {
    pub(crate) fn new(mut changes: Vec<Change>) -> Self {
        changes.sort_by_key(|c| c.revision);
        changes.dedup_by_key(|c| c.revision);
        Self(changes)
    }

    pub(crate) fn changes(&self) -> &[Change] {
        &self.0
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn record(&mut self, change: Change) {
        self.0.push(change);
    }

    pub(crate) fn at(&self, revision: u64) -> Option<&Change> {
        self.0.iter().find(|c| c.revision == revision)
    }

    /// Forgets the changes whose events are known to be published.
    pub(crate) fn forget_published(&mut self, published: &[u64]) {
        self.0.retain(|c| !published.contains(&c.revision));
    }

    /// The verdict on `(revision, nonce)` for a task now at `current_revision`.
    pub(crate) fn verdict(&self, current_revision: u64, revision: u64, nonce: Nonce) -> Verdict {
        if revision > current_revision {
            return Verdict::NotYet;
        }
        match self.at(revision) {
            Some(change) if change.nonce == nonce => Verdict::Committed,
            Some(_) => Verdict::Superseded,
            None => Verdict::Settled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskStatus;

    fn change(revision: u64, nonce: u32) -> Change {
        Change {
            revision,
            nonce: Nonce(nonce),
            event_type: TaskEventType::StatusChanged(TaskStatus::Completed),
        }
    }

    #[test]
    fn nonces_round_trip_as_eight_hex_digits() {
        let nonce = Nonce(0x00ab_cdef);
        assert_eq!(nonce.to_string(), "00abcdef");
        assert_eq!(Nonce::parse("00abcdef"), Some(nonce));
        assert_eq!(Nonce::parse("abcdef"), None);
        assert_eq!(Nonce::parse("0000000g"), None);
    }

    #[test]
    fn verdicts_tell_committed_from_superseded_from_settled() {
        let unpublished = Unpublished::new(vec![change(2, 20), change(3, 30)]);
        assert_eq!(unpublished.verdict(3, 2, Nonce(20)), Verdict::Committed);
        assert_eq!(unpublished.verdict(3, 2, Nonce(21)), Verdict::Superseded);
        assert_eq!(unpublished.verdict(3, 4, Nonce(40)), Verdict::NotYet);
        assert_eq!(unpublished.verdict(3, 1, Nonce(10)), Verdict::Settled);
    }

    #[test]
    fn a_verdict_does_not_expire_however_many_changes_follow() {
        let mut unpublished = Unpublished::default();
        unpublished.record(change(5, 55));
        for revision in 6..10_000 {
            unpublished.record(change(revision, 1));
            unpublished.forget_published(&[revision]);
        }
        assert_eq!(unpublished.verdict(9_999, 5, Nonce(55)), Verdict::Committed);
        assert_eq!(unpublished.len(), 1);
    }

    #[test]
    fn published_changes_are_forgotten() {
        let mut unpublished = Unpublished::new(vec![change(1, 1), change(2, 2), change(3, 3)]);
        unpublished.forget_published(&[1, 3]);
        assert_eq!(unpublished.changes(), &[change(2, 2)]);
        assert_eq!(unpublished.verdict(3, 1, Nonce(1)), Verdict::Settled);
    }
}
