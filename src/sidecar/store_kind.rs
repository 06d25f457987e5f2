//! What task-api relies on that differs between daprd's state stores, told by the component's
//! type in the sidecar's metadata.

use crate::service::ports::Condition;

/// Store types whose bulk reads report each key's failure: daprd reads `state.redis` key by key,
/// and `state.in-memory` cannot fail to read.
const REPORT_EACH_KEY: &[&str] = &["state.redis", "state.in-memory"];

/// Store types whose ETag is a version number that every write raises by one. daprd's
/// `state.redis` keeps it in the key's hash (`HINCRBY version 1` in the same script that checks
/// the ETag), so a write that held under ETag `n` leaves `n + 1`, and one that created its key
/// leaves 1.
const NUMBER_VERSIONS: &[&str] = &["state.redis"];

/// Store types whose transactions cost daprd less than a save of the same keys: daprd saves
/// several keys of `state.redis` each on its own (a goroutine, a connection and a round trip to
/// Redis apiece), where a transaction sends them in one pipeline (`MULTI` ... `EXEC`). Redis
/// has no rollback, so a transaction refused for one key writes the others, as a save of several
/// keys does; daprd answers it INTERNAL, not ABORTED.
const PIPELINE_TRANSACTIONS: &[&str] = &["state.redis"];

/// The ETag that makes a write on a store with [numbered versions](NUMBER_VERSIONS) hold only
/// for a key that does not exist. `state.redis`'s set script writes a missing key whatever ETag
/// the write names and refuses an existing one whose version differs, and its versions count
/// from one. Its own "only if absent" (no ETag, first-write concurrency) is no such thing: it
/// refuses only a key marked when it was first written so, a mark a transaction never sets, and
/// writes over any other (ETag `0` is read the same way, so it will not do either).
const NO_VERSION: &str = "-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoreKind {
    /// Bulk reads carry the [witness](super::witness): the store's bulk read can fail without saying so.
    pub(super) needs_witness: bool,
    /// A write's new ETag follows from the write itself, so no read is needed to learn it.
    numbers_versions: bool,
    /// Several writes go cheaper as one transaction than as one save.
    pipelines_transactions: bool,
}

impl StoreKind {
    /// The kind of a store of `component_type`. An unknown type gets the careful answers: a
    /// witness costs one key in a read and an ETag not guessed costs a read, where a wrong
    /// assumption would cost a wrong answer or a lost write race.
    pub(super) fn of(component_type: Option<&str>) -> Self {
        let listed = |types: &[&str]| component_type.is_some_and(|kind| types.contains(&kind));
        Self {
            needs_witness: !listed(REPORT_EACH_KEY),
            numbers_versions: listed(NUMBER_VERSIONS),
            pipelines_transactions: listed(PIPELINE_TRANSACTIONS),
        }
    }

    /// The ETag to send for "only if absent", where the store has one that means it.
    pub(super) fn absent_etag(&self) -> Option<&'static str> {
        self.numbers_versions.then_some(NO_VERSION)
    }

    /// Whether a write under `condition` may go in a transaction: every condition but "only if
    /// absent", which goes only as the store's [absent ETag](Self::absent_etag).
    pub(super) fn transacts(&self, condition: &Condition) -> bool {
        self.pipelines_transactions
            && (*condition != Condition::IfAbsent || self.absent_etag().is_some())
    }

    /// The ETag a document has right after a write under `condition` held, when the store's
    /// versions tell it; `None` when only a read does. An overwrite of any version cannot tell.
    pub(super) fn etag_after(&self, condition: &Condition) -> Option<String> {
        if !self.numbers_versions {
            return None;
        }
        match condition {
            Condition::IfMatch(etag) => etag
                .parse::<u64>()
                .ok()
                .and_then(|version| version.checked_add(1))
                .map(|next| next.to_string()),
            Condition::IfAbsent => Some("1".to_string()),
            Condition::Any => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stores_that_report_each_keys_failure_go_without_the_witness() {
        let witnessed = |kind| StoreKind::of(kind).needs_witness;
        assert!(!witnessed(Some("state.redis")));
        assert!(!witnessed(Some("state.in-memory")));
        assert!(witnessed(Some("state.postgresql")));
        assert!(witnessed(Some("state.sqlite")));
        assert!(witnessed(None), "a store the sidecar does not name");
    }

    #[test]
    fn only_stores_whose_transactions_are_pipelined_take_several_writes_as_one() {
        let pipelined = |kind| StoreKind::of(kind).pipelines_transactions;
        assert!(pipelined(Some("state.redis")));
        assert!(!pipelined(Some("state.postgresql")));
        assert!(!pipelined(Some("state.in-memory")));
        assert!(!pipelined(None), "a store the sidecar does not name");
    }

    #[test]
    fn only_if_absent_is_an_etag_no_version_has_where_versions_are_numbered() {
        assert_eq!(StoreKind::of(Some("state.redis")).absent_etag(), Some("-1"));
        for other in [Some("state.postgresql"), Some("state.in-memory"), None] {
            assert_eq!(StoreKind::of(other).absent_etag(), None);
            assert!(!StoreKind::of(other).transacts(&Condition::Any));
        }
        let redis = StoreKind::of(Some("state.redis"));
        for condition in [
            Condition::Any,
            Condition::IfAbsent,
            Condition::IfMatch("3".into()),
        ] {
            assert!(redis.transacts(&condition), "{condition:?}");
        }
    }

    #[test]
    fn a_new_etag_is_told_only_where_versions_are_numbered_and_the_write_named_one() {
        let redis = StoreKind::of(Some("state.redis"));
        assert_eq!(
            redis.etag_after(&Condition::IfMatch("41".into())),
            Some("42".into())
        );
        assert_eq!(redis.etag_after(&Condition::IfAbsent), Some("1".into()));
        assert_eq!(redis.etag_after(&Condition::Any), None);
        assert_eq!(redis.etag_after(&Condition::IfMatch("a1b2".into())), None);
        for other in [Some("state.postgresql"), Some("state.in-memory"), None] {
            let kind = StoreKind::of(other);
            assert_eq!(kind.etag_after(&Condition::IfMatch("41".into())), None);
            assert_eq!(kind.etag_after(&Condition::IfAbsent), None);
        }
    }
}
