//! What a task remembers of its own changes, and the decisions made from it.
//!
//! Every committed change gives a task a new revision (1, 2, 3, ...) and records
//! `(revision, nonce, event type)` in the task's bounded [`History`]. The nonce is random per
//! attempt: two writers that raced from the same revision wrote different nonces, and only the
//! winner's is in the history. That lets anyone holding a claim about a change ("revision 7 of
//! task X, nonce N, was a completion") check it against the stored task alone:
//!
//! - task-api's outbox publishes an event only for a change the history confirms
//!   ([`History::verdict`]), so a write that failed never produces an event;
//! - its event handler notifies a completion only if the history confirms it, so a forged or
//!   replayed `task.completed` produces nothing.

use std::fmt;

use super::TaskEventType;

/// How many changes a task remembers. A claim about an older change cannot be confirmed (see
/// [`Verdict::Forgotten`]); events are relayed within seconds of their change, long before 32
/// more changes of the same task could push it out.
pub const HISTORY_KEPT: usize = 32;

/// A per-attempt random tag of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(u32);

impl Nonce {
    pub fn random() -> Self {
        Self(fastrand::u32(..))
    }

    /// Parses the 8 hex digits [`fmt::Display`] writes.
    pub fn parse(text: &str) -> Option<Self> {
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
pub struct Change {
    pub revision: u64,
    pub nonce: Nonce,
    pub event_type: TaskEventType,
}

/// The most recent changes of a task, oldest first, at most [`HISTORY_KEPT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History(Vec<Change>);

/// What the stored task says about a claimed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The task is at that revision or later, and the change at that revision is this one.
    Committed,
    /// Another change took that revision: the claimed one lost a race (or never existed).
    Superseded,
    /// The task has not reached that revision (yet): the write is in flight or failed.
    NotYet,
    /// The revision is older than what the task remembers.
    Forgotten,
}

impl History {
    pub fn new(changes: Vec<Change>) -> Self {
        let mut history = Self(changes);
        history.0.sort_by_key(|c| c.revision);
        history.trim();
        history
    }

    pub fn changes(&self) -> &[Change] {
        &self.0
    }

    /// Records a change, forgetting the oldest beyond [`HISTORY_KEPT`].
    pub fn record(&mut self, change: Change) {
        self.0.push(change);
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.0.len().saturating_sub(HISTORY_KEPT);
        self.0.drain(..excess);
    }

    pub fn at(&self, revision: u64) -> Option<&Change> {
        self.0.iter().find(|c| c.revision == revision)
    }

    /// Checks a claimed change against a task now at `current_revision` with this history.
    pub fn verdict(&self, current_revision: u64, revision: u64, nonce: Nonce) -> Verdict {
        if revision > current_revision {
            return Verdict::NotYet;
        }
        match self.at(revision) {
            Some(change) if change.nonce == nonce => Verdict::Committed,
            Some(_) => Verdict::Superseded,
            None if self
                .0
                .first()
                .is_some_and(|oldest| revision < oldest.revision) =>
            {
                Verdict::Forgotten
            }
            // Within the remembered range but absent: the revision never happened with any
            // nonce we know (e.g. a document written by another implementation).
            None => Verdict::Superseded,
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
    fn the_history_keeps_the_most_recent_changes() {
        let mut history = History::default();
        for revision in 1..=40 {
            history.record(change(revision, revision as u32));
        }
        assert_eq!(history.changes().len(), HISTORY_KEPT);
        assert_eq!(history.changes()[0].revision, 9);
        assert!(history.at(8).is_none());
        assert!(history.at(40).is_some());
    }

    #[test]
    fn verdicts_tell_a_committed_change_from_a_lost_race() {
        let history = History::new(vec![change(1, 10), change(2, 20), change(3, 30)]);
        assert_eq!(history.verdict(3, 2, Nonce(20)), Verdict::Committed);
        assert_eq!(history.verdict(3, 2, Nonce(21)), Verdict::Superseded);
        assert_eq!(history.verdict(3, 4, Nonce(40)), Verdict::NotYet);
        assert_eq!(history.verdict(3, 3, Nonce(30)), Verdict::Committed);
    }

    #[test]
    fn a_change_older_than_the_history_is_forgotten() {
        let history = History::new(
            (10..10 + HISTORY_KEPT as u64)
                .map(|r| change(r, 1))
                .collect(),
        );
        assert_eq!(history.verdict(50, 9, Nonce(1)), Verdict::Forgotten);
        assert_eq!(history.verdict(50, 10, Nonce(1)), Verdict::Committed);
    }

    #[test]
    fn an_unknown_revision_inside_the_window_is_superseded() {
        // A document rewritten without revision 2 in its history (e.g. by another writer).
        let history = History::new(vec![change(1, 1), change(3, 3)]);
        assert_eq!(history.verdict(3, 2, Nonce(2)), Verdict::Superseded);
        assert_eq!(History::default().verdict(0, 1, Nonce(1)), Verdict::NotYet);
    }
}
