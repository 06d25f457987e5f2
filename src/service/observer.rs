//! How far behind this process's `task-events` subscription is: what the relay waits on before
//! it publishes an open claim again, so that a copy that landed is seen first.
//!
//! Kept partition by partition where the broker has them: Kafka delivers each partition on its
//! own, in order, so one partition caught up says nothing of another's backlog, and a copy that
//! landed waits in its own partition's. Redis streams have one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};

use crate::domain::time;

/// A partition counts as caught up while the events it delivers were published less than this
/// long ago,
const CAUGHT_UP: Duration = Duration::from_secs(2);
/// or when it has delivered nothing for this long,
const QUIET: Duration = Duration::from_secs(2);
/// but only once it has delivered something since this process started or its sidecar listed
/// the subscriptions again (a restarted sidecar), or this long has passed since then: a Kafka
/// consumer group takes a restarted sidecar's consumer back only once the dead one's session
/// has expired (6 s, `sessionTimeout` in `components/`) and the group has rebalanced, and until
/// then the silence says nothing of what waits on the topic.
pub(crate) const REJOIN: Duration = Duration::from_secs(20);

/// What this process's `task-events` subscription has shown of how far behind it is. Cheap to
/// clone: the clones share what they note.
#[derive(Clone)]
pub(crate) struct Observer(Arc<Mutex<Watch>>);

struct Watch {
    /// When this process started, or its sidecar last listed the subscriptions.
    since: DateTime<Utc>,
    /// Every partition delivered from since this process started, and what it last showed.
    partitions: HashMap<Option<String>, Partition>,
}

#[derive(Clone, Copy)]
enum Partition {
    /// Nothing delivered from it since [`Watch::since`].
    Waiting,
    /// How far behind its last batch was (how long before it the newest event of that batch was
    /// published), and when that was.
    Delivered {
        noted_at: DateTime<Utc>,
        behind: Duration,
    },
}

impl Observer {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Watch {
            since: time::now(),
            partitions: HashMap::new(),
        })))
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a batch delivered: the partition each event came from and when it was published.
    pub(crate) fn note<'a>(
        &self,
        published: impl Iterator<Item = (Option<&'a str>, DateTime<Utc>)>,
    ) {
        let mut newest: HashMap<Option<&str>, DateTime<Utc>> = HashMap::new();
        for (partition, at) in published {
            let seen = newest.entry(partition).or_insert(at);
            *seen = (*seen).max(at);
        }
        let now = time::now();
        let mut watch = self.watch();
        for (partition, newest) in newest {
            let behind = (now - newest).to_std().unwrap_or_default();
            watch.partitions.insert(
                partition.map(str::to_string),
                Partition::Delivered {
                    noted_at: now,
                    behind,
                },
            );
        }
    }

    /// A sidecar (re)started its subscriptions: until a partition delivers again, its consumer
    /// may still be joining its group, and its backlog is unknown.
    pub(crate) fn resubscribed(&self) {
        let mut watch = self.watch();
        watch.since = time::now();
        for partition in watch.partitions.values_mut() {
            *partition = Partition::Waiting;
        }
    }

    /// Caught up when every partition is: it has delivered since the subscriptions (re)started
    /// (or [`REJOIN`] has passed since), and its last batch was fresh or came a while ago. With
    /// nothing delivered for a while, from a partition known to deliver, there is no backlog to
    /// wait for.
    pub(crate) fn caught_up(&self) -> bool {
        let elapsed = |since: DateTime<Utc>| (time::now() - since).to_std().unwrap_or_default();
        let watch = self.watch();
        let rejoined = elapsed(watch.since) > REJOIN;
        if watch.partitions.is_empty() {
            return rejoined;
        }
        watch.partitions.values().all(|partition| match *partition {
            Partition::Waiting => rejoined,
            Partition::Delivered { noted_at, behind } => {
                behind < CAUGHT_UP || elapsed(noted_at) > QUIET
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(seconds: i64) -> DateTime<Utc> {
        time::now() - chrono::Duration::seconds(seconds)
    }

    fn past(duration: Duration) {
        time::test_clock::advance(duration + Duration::from_millis(1));
    }

    #[test]
    fn a_fresh_process_waits_to_rejoin_unless_its_subscription_delivers() {
        let observer = Observer::new();
        assert!(!observer.caught_up(), "nothing delivered yet");
        observer.note([(None, ago(0))].into_iter());
        assert!(observer.caught_up(), "delivered, fresh");
        let silent = Observer::new();
        past(REJOIN);
        assert!(silent.caught_up(), "silent for longer than a rejoin takes");
    }

    #[test]
    fn a_partition_behind_holds_everything_until_it_is_fresh_or_quiet() {
        let observer = Observer::new();
        observer.note([(Some("0"), ago(0)), (Some("1"), ago(10))].into_iter());
        assert!(!observer.caught_up(), "partition 1 is 10 s behind");
        observer.note([(Some("1"), ago(1))].into_iter());
        assert!(observer.caught_up(), "partition 1 has caught up");
        observer.note([(Some("1"), ago(10))].into_iter());
        past(QUIET);
        assert!(observer.caught_up(), "behind, then quiet: no backlog left");
    }

    #[test]
    fn after_a_resubscription_every_partition_known_must_deliver_again() {
        let observer = Observer::new();
        observer.note([(Some("0"), ago(0)), (Some("1"), ago(0))].into_iter());
        observer.resubscribed();
        observer.note([(Some("0"), ago(0))].into_iter());
        assert!(
            !observer.caught_up(),
            "partition 0 is fresh, partition 1 has said nothing since"
        );
        observer.note([(Some("1"), ago(8))].into_iter());
        assert!(!observer.caught_up(), "partition 1 delivers its backlog");
        observer.note([(Some("1"), ago(0))].into_iter());
        assert!(observer.caught_up());
        observer.resubscribed();
        past(REJOIN);
        assert!(
            observer.caught_up(),
            "silent for longer than a rejoin takes"
        );
    }
}
