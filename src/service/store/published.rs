//! A task's ledger: which of its events were published (by their writer or by a relay), and
//! which a relay is publishing: `published-<task id>`.
//!
//! ```json
//! {"revisions":[7,8],"claims":[{"revision":9,"at":1733356800123,"by":2864434397}]}
//! ```
//!
//! - `revisions`: events published. A staged event delivered again (after a crash, a timeout
//!   or to another replica) whose revision is listed here is not published twice; and the next
//!   writer of the task drops these revisions from the record's `unpublished` list.
//! - `claims`: events a relay is about to publish. Written before the publish, so a second
//!   relay (another replica, a redelivery) leaves the event alone, and so a publish whose
//!   outcome was never learnt (a crash, a timeout) is known to have been tried: it is tried
//!   again only once nothing was observed on `task-events` for a while (see the relay).
//!
//! An entry is kept only while the record still lists its revision, so the document stays as
//! small as the task's backlog of unpublished changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CorruptDocument, decode, encode};
use crate::{
    domain::{TaskId, Versioned},
    service::ports::{Condition, KeyValueStore, StoreError, Write},
};

/// Rounds of read, merge and conditional write before recording gives up.
const MAX_ROUNDS: usize = 8;

/// The state key of a task's ledger.
pub(crate) fn ledger_key(id: &TaskId) -> String {
    format!("published-{id}")
}

/// The revisions of a task whose events were published or are being published, as far as its
/// record may still list them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    revisions: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    claims: Vec<Claim>,
}

/// A relay's note that it is publishing the event of `revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub(crate) revision: u64,
    /// When it was claimed, in milliseconds since the Unix epoch.
    pub(crate) at: i64,
    /// Which claim this is: a relay that finds its own claim after a lost write race knows
    /// the write landed.
    pub(crate) by: u32,
}

impl Ledger {
    pub(crate) fn contains(&self, revision: u64) -> bool {
        self.revisions.contains(&revision)
    }

    pub(crate) fn revisions(&self) -> &[u64] {
        &self.revisions
    }

    /// The claim on `revision`'s event, if one is open.
    pub(crate) fn claim_on(&self, revision: u64) -> Option<&Claim> {
        self.claims.iter().find(|c| c.revision == revision)
    }

    /// This ledger with `added` published (and their claims closed), `claimed` claimed, and of
    /// the rest only what the record, as read, still needs: the revisions it lists, and any
    /// newer than it (written, claimed or published by others since it was read).
    fn merged(&self, added: &[u64], claimed: &[Claim], record: &Listed) -> Self {
        let needed = |r: &u64| record.unpublished.contains(r) || *r > record.revision;
        let mut revisions: Vec<u64> = self
            .revisions
            .iter()
            .copied()
            .filter(needed)
            .chain(added.iter().copied())
            .collect();
        revisions.sort_unstable();
        revisions.dedup();
        let mut claims: Vec<Claim> = self
            .claims
            .iter()
            .filter(|c| needed(&c.revision))
            .filter(|c| claimed.iter().all(|new| new.revision != c.revision))
            .copied()
            .chain(claimed.iter().copied())
            .filter(|c| !revisions.contains(&c.revision))
            .collect();
        claims.sort_unstable_by_key(|c| c.revision);
        Self { revisions, claims }
    }
}

/// A task's ledger as read together with its record before a change (`None`: none stored), so
/// that recording the change's event needs no read of its own. It may be out of date by then:
/// the write is guarded by its ETag, and read again if it fails.
#[derive(Debug, Clone)]
pub(crate) struct LedgerAsRead(pub(crate) Option<Versioned<Ledger>>);

/// What a task's record said when it was read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listed {
    /// Its revision.
    pub(crate) revision: u64,
    /// The revisions it lists as unpublished.
    pub(crate) unpublished: Vec<u64>,
}

/// Revisions to add to one task's ledger.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) task: TaskId,
    /// Revisions just published.
    pub(crate) published: Vec<u64>,
    /// Revisions about to be published.
    pub(crate) claimed: Vec<Claim>,
    /// The task's record as read: older entries of the ledger that it no longer lists are no
    /// longer needed.
    pub(crate) record: Listed,
    /// The ledger as read before publishing, if it was.
    pub(crate) read: Option<Versioned<Ledger>>,
    /// The store forgets the ledger after this long (a deleted task's).
    pub(crate) ttl: Option<Duration>,
}

#[derive(Debug, Clone)]
pub(crate) struct Ledgers<S> {
    store: S,
}

impl<S: KeyValueStore> Ledgers<S> {
    pub(crate) fn new(store: S) -> Self {
        Self { store }
    }

    /// The ledgers of `ids`, in order; an empty one where none is stored.
    pub(crate) async fn get_many(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<Result<Option<Versioned<Ledger>>, CorruptDocument>>, StoreError> {
        let keys: Vec<String> = ids.iter().map(ledger_key).collect();
        super::get_many(&self.store, &keys, decode).await
    }

    /// Adds each entry's revisions to its task's ledger: one conditional write per ledger, all
    /// in one call, repeated for those whose ledger changed meanwhile.
    pub(crate) async fn record(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        self.write_all(entries, |entry, ledger| {
            entry.published.iter().all(|r| ledger.contains(*r))
        })
        .await
        .map(drop)
    }

    /// Claims each entry's revisions (replacing a claim seen in the ledger as read), unless the
    /// ledger shows them published or claimed by someone else since it was read. Returns the revisions claimed, per task.
    pub(crate) async fn claim(
        &self,
        entries: Vec<Entry>,
    ) -> Result<Vec<(TaskId, Vec<u64>)>, StoreError> {
        let claimed = self
            .write_all(entries, |entry, ledger| {
                entry.claimed.iter().all(|c| ledger.claims.contains(c))
            })
            .await?;
        Ok(claimed
            .into_iter()
            .map(|entry| {
                (
                    entry.task,
                    entry.claimed.iter().map(|c| c.revision).collect(),
                )
            })
            .collect())
    }

    /// Writes every entry (one call per round), re-reading after a failed round; an entry is
    /// done once `landed` says its ledger holds it. Returns the entries as finally written.
    async fn write_all(
        &self,
        mut entries: Vec<Entry>,
        landed: impl Fn(&Entry, &Ledger) -> bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut done = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let writes = entries.iter().map(Self::write).collect();
            if self.store.put_many(writes).await.is_ok() {
                done.extend(entries);
                return Ok(done);
            }
            // Some writes may have landed: read every ledger again and keep the entries whose
            // revisions are not all there yet.
            let ids: Vec<TaskId> = entries.iter().map(|e| e.task.clone()).collect();
            let now = self.get_many(&ids).await?;
            for (mut entry, ledger) in entries.drain(..).zip(now).collect::<Vec<_>>() {
                let ledger = ledger.ok().flatten();
                let nothing_to_do = entry.claimed.is_empty() && entry.published.is_empty();
                if nothing_to_do || ledger.as_ref().is_some_and(|l| landed(&entry, &l.value)) {
                    done.push(entry);
                    continue;
                }
                // Claimed or published by someone else since it was read: not ours to claim.
                let before = entry.read.as_ref().map(|l| &l.value);
                let now = ledger.as_ref().map(|l| &l.value);
                entry.claimed.retain(|c| {
                    let claim =
                        |l: Option<&Ledger>| l.and_then(|l| l.claim_on(c.revision)).copied();
                    !now.is_some_and(|l| l.contains(c.revision)) && claim(now) == claim(before)
                });
                entry.read = ledger;
                entries.push(entry);
            }
            if entries.is_empty() {
                return Ok(done);
            }
        }
        Err(StoreError::Conflict {
            key: entries
                .first()
                .map(|e| ledger_key(&e.task))
                .unwrap_or_default(),
        })
    }

    fn write(entry: &Entry) -> Write {
        let before = entry.read.as_ref().map(|l| &l.value);
        let merged = before.cloned().unwrap_or_default().merged(
            &entry.published,
            &entry.claimed,
            &entry.record,
        );
        Write::new(
            ledger_key(&entry.task),
            encode(&merged),
            Condition::replacing(entry.read.as_ref().map(|l| l.etag.as_str())),
        )
        .expiring(entry.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(revision: u64) -> Claim {
        Claim {
            revision,
            at: 1,
            by: 7,
        }
    }

    #[test]
    fn a_merge_keeps_only_what_the_record_still_lists() {
        let ledger = Ledger {
            revisions: vec![3, 4, 5],
            claims: vec![claim(4), claim(6)],
        };
        let merged = ledger.merged(&[7], &[], &listed(7, &[5, 6, 7]));
        assert_eq!(merged.revisions, vec![5, 7]);
        assert_eq!(merged.claims, vec![claim(6)]);
        assert_eq!(
            Ledger::default()
                .merged(&[2, 1, 2], &[], &listed(2, &[]))
                .revisions,
            vec![1, 2]
        );
    }

    #[test]
    fn a_merge_keeps_what_is_newer_than_the_record_it_read() {
        let ledger = Ledger {
            revisions: vec![3, 9],
            claims: vec![claim(8)],
        };
        let merged = ledger.merged(&[5], &[], &listed(5, &[5]));
        assert_eq!(merged.revisions, vec![5, 9]);
        assert_eq!(merged.claims, vec![claim(8)]);
    }

    fn listed(revision: u64, unpublished: &[u64]) -> Listed {
        Listed {
            revision,
            unpublished: unpublished.to_vec(),
        }
    }

    #[test]
    fn publishing_closes_the_claim_and_claims_serialise_only_when_open() {
        let claimed = Ledger::default().merged(&[], &[claim(9)], &listed(9, &[9]));
        assert_eq!(claimed.claim_on(9), Some(&claim(9)));
        let published = claimed.merged(&[9], &[], &listed(9, &[9]));
        assert!(published.contains(9) && published.claim_on(9).is_none());
        assert_eq!(
            serde_json::to_string(&published).unwrap(),
            r#"{"revisions":[9]}"#
        );
        let old: Ledger = serde_json::from_str(r#"{"revisions":[1]}"#).unwrap();
        assert!(old.claims.is_empty());
    }
}
