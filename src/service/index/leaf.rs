//! One leaf of a list: a sorted run of entries covering a key range, linked to the next leaf.
//!
//! Stored as JSON:
//!
//! ```json
//! {"lo":[1736937000000000,"5b0c…"],"hi":null,"next":null,"merged_into":null,
//!  "entries":[[1736937000000000,"5b0c…",1],[1736937000250000,"77aa…",3]]}
//! ```
//!
//! `lo` (inclusive) never changes once a leaf exists; `hi` (exclusive) and `next` change when the
//! leaf splits or absorbs its right neighbour. `null` bounds are -∞ (the head) and +∞ (the tail).
//! A leaf with `merged_into` set is frozen: its entries belong to that (left) leaf, which has
//! taken or will take them over.

use serde::{Deserialize, Serialize};

use crate::{
    domain::{FieldViolation, TaskId},
    service::store::{CorruptDocument, decode, encode},
};

/// Leaves split above this many entries.
pub(super) const CAPACITY: usize = 128;
/// A leaf absorbs its right neighbour when both together hold at most this many.
pub(super) const MERGE_AT: usize = CAPACITY / 2;

/// A place in list order: creation time (microseconds since the Unix epoch), then id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Position {
    pub(crate) micros: i64,
    pub(crate) id: TaskId,
}

/// One indexed task: its position, and the task revision that put it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) position: Position,
    pub(crate) revision: u64,
}

/// The identifier of a leaf within its list; the head is `head`.
pub(crate) type LeafId = String;

pub(super) const HEAD: &str = "head";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Leaf {
    pub(crate) lo: Option<Position>,
    pub(crate) hi: Option<Position>,
    pub(crate) next: Option<LeafId>,
    pub(crate) merged_into: Option<LeafId>,
    /// Sorted by position.
    pub(crate) entries: Vec<Entry>,
}

/// An operation on one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Adds the entry, or raises its revision.
    Insert(Entry),
    /// Removes the entry at this position if its revision is at most `up_to_revision`: a newer
    /// insert (a change that put the task back in this list) is kept.
    Remove {
        position: Position,
        up_to_revision: u64,
    },
}

impl Op {
    pub(crate) fn position(&self) -> &Position {
        match self {
            Op::Insert(entry) => &entry.position,
            Op::Remove { position, .. } => position,
        }
    }
}

impl Leaf {
    /// Whether `position` falls in this leaf's range.
    pub(crate) fn covers(&self, position: &Position) -> bool {
        self.lo.as_ref().is_none_or(|lo| position >= lo)
            && self.hi.as_ref().is_none_or(|hi| position < hi)
    }

    /// Whether `position` lies beyond this leaf (in a leaf to its right).
    pub(crate) fn is_before(&self, position: &Position) -> bool {
        self.hi.as_ref().is_some_and(|hi| position >= hi)
    }

    /// Applies `op`; returns whether the leaf changed.
    pub(crate) fn apply(&mut self, op: &Op) -> bool {
        let found = self
            .entries
            .binary_search_by(|e| e.position.cmp(op.position()));
        match (op, found) {
            (Op::Insert(entry), Ok(at)) => {
                let existing = &mut self.entries[at];
                if existing.revision >= entry.revision {
                    return false;
                }
                existing.revision = entry.revision;
                true
            }
            (Op::Insert(entry), Err(at)) => {
                self.entries.insert(at, entry.clone());
                true
            }
            (Op::Remove { up_to_revision, .. }, Ok(at))
                if self.entries[at].revision <= *up_to_revision =>
            {
                self.entries.remove(at);
                true
            }
            (Op::Remove { .. }, _) => false,
        }
    }

    /// Splits an over-full leaf into runs of half the capacity: keeps the first and returns the
    /// others as new leaves (ids from `new_id`), in order, linked to each other and the last one
    /// to this leaf's old successor. Empty when the leaf is not over-full.
    pub(crate) fn split(&mut self, mut new_id: impl FnMut() -> LeafId) -> Vec<(LeafId, Leaf)> {
        if self.entries.len() <= CAPACITY {
            return Vec::new();
        }
        // Runs of about three quarters of the capacity: room to grow before the next split.
        let pieces = self.entries.len().div_ceil(CAPACITY * 3 / 4);
        let size = self.entries.len().div_ceil(pieces);
        let mut runs: Vec<Vec<Entry>> = Vec::with_capacity(pieces);
        while self.entries.len() > size {
            let at = size.max(self.entries.len() - size);
            runs.push(self.entries.split_off(at));
        }
        runs.reverse();
        let mut right: Vec<(LeafId, Leaf)> = Vec::with_capacity(runs.len());
        let mut hi = self.hi.take();
        let mut next = self.next.take();
        for run in runs.into_iter().rev() {
            let id = new_id();
            let lo = run[0].position.clone();
            right.push((
                id.clone(),
                Leaf {
                    lo: Some(lo.clone()),
                    hi: hi.replace(lo),
                    next: next.replace(id),
                    merged_into: None,
                    entries: run,
                },
            ));
        }
        right.reverse();
        self.hi = hi;
        self.next = next;
        right
    }

    /// Takes over the frozen right neighbour `right` (whose id is this leaf's `next`).
    pub(crate) fn absorb(&mut self, right: &Leaf) {
        self.entries.extend(right.entries.iter().cloned());
        self.hi = right.hi.clone();
        self.next = right.next.clone();
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(&WriteWire::from(self))
    }

    /// Reads the leaf stored under `key`.
    pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Self, CorruptDocument> {
        decode::<LeafDocument>(key, bytes).map(|LeafDocument(leaf)| leaf)
    }
}

/// A leaf as read back: parsed from [`Wire`], every id checked.
#[derive(Deserialize)]
#[serde(try_from = "Wire")]
struct LeafDocument(Leaf);

#[derive(Deserialize)]
struct WirePosition(i64, String);

impl TryFrom<WirePosition> for Position {
    type Error = FieldViolation;

    fn try_from(WirePosition(micros, id): WirePosition) -> Result<Self, Self::Error> {
        Ok(Position {
            micros,
            id: TaskId::parse_owned(id)?,
        })
    }
}

#[derive(Deserialize)]
struct Wire {
    lo: Option<WirePosition>,
    hi: Option<WirePosition>,
    next: Option<LeafId>,
    #[serde(default)]
    merged_into: Option<LeafId>,
    entries: Vec<(i64, String, u64)>,
}

impl TryFrom<Wire> for LeafDocument {
    type Error = FieldViolation;

    fn try_from(wire: Wire) -> Result<Self, Self::Error> {
        let mut entries = Vec::with_capacity(wire.entries.len());
        for (micros, id, revision) in wire.entries {
            entries.push(Entry {
                position: WirePosition(micros, id).try_into()?,
                revision,
            });
        }
        if !entries.is_sorted_by(|a, b| a.position < b.position) {
            return Err(FieldViolation::new("entries", "are not in order"));
        }
        Ok(LeafDocument(Leaf {
            lo: wire.lo.map(Position::try_from).transpose()?,
            hi: wire.hi.map(Position::try_from).transpose()?,
            next: wire.next,
            merged_into: wire.merged_into,
            entries,
        }))
    }
}

/// A leaf as written: [`Wire`]'s fields, borrowed from the leaf, so a write copies no entry (a
/// change writes a whole leaf of up to [`CAPACITY`] entries).
#[derive(Serialize)]
struct WriteWire<'a> {
    lo: Option<(i64, &'a str)>,
    hi: Option<(i64, &'a str)>,
    next: &'a Option<LeafId>,
    merged_into: &'a Option<LeafId>,
    entries: WriteEntries<'a>,
}

impl<'a> From<&'a Leaf> for WriteWire<'a> {
    fn from(leaf: &'a Leaf) -> Self {
        let bound = |p: &'a Position| (p.micros, p.id.as_str());
        WriteWire {
            lo: leaf.lo.as_ref().map(bound),
            hi: leaf.hi.as_ref().map(bound),
            next: &leaf.next,
            merged_into: &leaf.merged_into,
            entries: WriteEntries(&leaf.entries),
        }
    }
}

struct WriteEntries<'a>(&'a [Entry]);

impl Serialize for WriteEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|e| (e.position.micros, e.position.id.as_str(), e.revision)),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pos(micros: i64, id: &str) -> Position {
        Position {
            micros,
            id: TaskId::parse(id).unwrap(),
        }
    }

    fn insert(micros: i64, id: &str, revision: u64) -> Op {
        Op::Insert(Entry {
            position: pos(micros, id),
            revision,
        })
    }

    #[test]
    fn inserts_keep_order_and_the_newest_revision() {
        let mut leaf = Leaf::default();
        assert!(leaf.apply(&insert(2, "b", 1)));
        assert!(leaf.apply(&insert(1, "z", 1)));
        assert!(leaf.apply(&insert(2, "a", 1)));
        let order: Vec<_> = leaf
            .entries
            .iter()
            .map(|e| e.position.id.as_str())
            .collect();
        assert_eq!(order, ["z", "a", "b"]);
        assert!(leaf.apply(&insert(2, "a", 5)));
        assert!(
            !leaf.apply(&insert(2, "a", 4)),
            "an older insert changes nothing"
        );
        assert_eq!(leaf.entries[1].revision, 5);
    }

    #[test]
    fn a_remove_spares_a_newer_insert() {
        let mut leaf = Leaf::default();
        leaf.apply(&insert(1, "a", 7));
        let stale = Op::Remove {
            position: pos(1, "a"),
            up_to_revision: 6,
        };
        assert!(!leaf.apply(&stale));
        let current = Op::Remove {
            position: pos(1, "a"),
            up_to_revision: 7,
        };
        assert!(leaf.apply(&current));
        assert!(leaf.entries.is_empty());
        assert!(
            !leaf.apply(&current),
            "removing what is gone changes nothing"
        );
    }

    #[test]
    fn a_split_hands_the_upper_half_and_the_link_to_the_new_leaf() {
        let mut leaf = Leaf {
            next: Some("old-next".into()),
            hi: Some(pos(10_000, "x")),
            ..Leaf::default()
        };
        for i in 0..=CAPACITY as i64 {
            leaf.apply(&insert(i, "t", 1));
        }
        let split = leaf.split(|| "new".to_string());
        assert_eq!(split.len(), 1);
        let right = &split[0].1;
        assert_eq!(leaf.entries.len() + right.entries.len(), CAPACITY + 1);
        assert_eq!(leaf.next.as_deref(), Some("new"));
        assert_eq!(right.next.as_deref(), Some("old-next"));
        assert_eq!(right.hi, Some(pos(10_000, "x")));
        assert_eq!(leaf.hi, right.lo);
        assert!(leaf.entries.iter().all(|e| leaf.covers(&e.position)));
        assert!(right.entries.iter().all(|e| right.covers(&e.position)));
        assert!(
            leaf.split(|| "again".to_string()).is_empty(),
            "half full: no split"
        );
    }

    #[test]
    fn a_much_over_full_leaf_splits_into_linked_runs() {
        let mut leaf = Leaf::default();
        for i in 0..1000 {
            leaf.apply(&insert(i, "t", 1));
        }
        let mut n = 0;
        let split = leaf.split(|| {
            n += 1;
            format!("r{n}")
        });
        let mut chain = vec![leaf.clone()];
        chain.extend(split.iter().map(|(_, l)| l.clone()));
        assert!(chain.iter().all(|l| l.entries.len() <= CAPACITY));
        assert_eq!(chain.iter().map(|l| l.entries.len()).sum::<usize>(), 1000);
        for (pair, (id, right)) in chain.windows(2).zip(&split) {
            assert_eq!(pair[0].next.as_ref(), Some(id));
            assert_eq!(pair[0].hi, right.lo);
            assert!(pair[1].entries.iter().all(|e| pair[1].covers(&e.position)));
        }
        assert_eq!(chain.last().unwrap().next, None);
        assert_eq!(chain.last().unwrap().hi, None);
    }

    #[test]
    fn absorbing_the_right_neighbour_extends_the_range() {
        let mut left = Leaf {
            hi: Some(pos(5, "m")),
            next: Some("r".into()),
            ..Leaf::default()
        };
        left.apply(&insert(1, "a", 1));
        let mut right = Leaf {
            lo: Some(pos(5, "m")),
            hi: None,
            next: None,
            merged_into: Some(HEAD.into()),
            entries: Vec::new(),
        };
        right.apply(&insert(6, "b", 1));
        left.absorb(&right);
        assert_eq!(left.entries.len(), 2);
        assert_eq!(left.hi, None);
        assert_eq!(left.next, None);
        assert!(left.covers(&pos(100, "z")));
    }

    #[test]
    fn leaves_round_trip_and_reject_disorder() {
        let mut leaf = Leaf {
            lo: Some(pos(1, "a")),
            next: Some("n".into()),
            ..Leaf::default()
        };
        leaf.apply(&insert(3, "c", 2));
        leaf.apply(&insert(2, "b", 1));
        assert_eq!(Leaf::decode("k", &leaf.encode()).unwrap(), leaf);
        // The stored shape, as leaves already written hold it.
        assert_eq!(
            String::from_utf8(leaf.encode()).unwrap(),
            r#"{"lo":[1,"a"],"hi":null,"next":"n","merged_into":null,"entries":[[2,"b",1],[3,"c",2]]}"#
        );
        assert!(
            Leaf::decode(
                "k",
                br#"{"lo":null,"hi":null,"next":null,"entries":[[2,"b",1],[1,"a",1]]}"#
            )
            .is_err()
        );
        assert!(
            Leaf::decode(
                "k",
                br#"{"lo":null,"hi":null,"next":null,"entries":[[1,"a/b",1]]}"#
            )
            .is_err()
        );
    }
}
