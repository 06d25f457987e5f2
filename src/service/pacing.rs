//! How long the event path's batches wait for company: what pays on one broker costs on another.
//!
//! On Redis streams, changes a few milliseconds apart that share a direct publish (its call, its
//! ledger write and its delivery back) and task events that share a delivery (and completions a
//! notification call) cost the sidecar less, even one request at a time. On Kafka they save
//! nearly as much one at a time, but under a steady load the sustained run kept up with lower
//! rates with them than without (Kafka's component flushes each partition on a fixed tick and
//! waits for the delivery before it reads on; see the README's benchmarks). So the waits are
//! learned at start-up from the brokers the sidecar names; until then, and on Kafka or any other
//! broker, batches take only what is already waiting.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

/// The waits of one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waits {
    /// While changes keep coming, a direct publish starts at most this long after the one
    /// before (an event after a quiet spell goes at once).
    pub(crate) publish_spacing: Duration,
    /// How long the sidecar waits to fill a delivery of task events (the least it takes:
    /// completions wait on it for their notification).
    pub(crate) events_fill: Duration,
}

impl Waits {
    /// Take what is waiting; wait on no timer.
    pub(crate) const SHORT: Self = Self {
        publish_spacing: Duration::ZERO,
        events_fill: Duration::from_millis(1),
    };
    /// Let changes a few milliseconds apart share their calls.
    pub(crate) const GATHERING: Self = Self {
        publish_spacing: Duration::from_millis(5),
        events_fill: Duration::from_millis(5),
    };
}

/// The waits in force, shared by the parts that batch; [`Waits::SHORT`] until learned.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    waits: Arc<watch::Sender<Option<Waits>>>,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            waits: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Pacing {
    /// Pacing fixed at `waits`, as if learned (for tests).
    #[cfg(test)]
    pub(crate) fn fixed(waits: Waits) -> Self {
        let pacing = Self::default();
        pacing.learn(waits);
        pacing
    }

    /// Sets the waits for the broker in use.
    pub(crate) fn learn(&self, waits: Waits) {
        self.waits.send_replace(Some(waits));
    }

    /// The waits in force now.
    pub(crate) fn current(&self) -> Waits {
        self.waits.borrow().unwrap_or(Waits::SHORT)
    }

    /// The waits once learned, or [`Waits::SHORT`] if they are not within `within`.
    pub(crate) async fn learned(&self, within: Duration) -> Waits {
        let mut learned = self.waits.subscribe();
        match tokio::time::timeout(within, learned.wait_for(Option::is_some)).await {
            Ok(Ok(waits)) => waits.unwrap_or(Waits::SHORT),
            _ => Waits::SHORT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_are_short_until_learned_and_a_wait_for_them_is_bounded() {
        let pacing = Pacing::default();
        assert_eq!(pacing.current(), Waits::SHORT);
        let started = tokio::time::Instant::now();
        assert_eq!(pacing.learned(Duration::from_secs(2)).await, Waits::SHORT);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_waits_ends_when_they_are_learned() {
        let pacing = Pacing::default();
        let learner = pacing.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            learner.learn(Waits::GATHERING);
        });
        assert_eq!(
            pacing.learned(Duration::from_secs(2)).await,
            Waits::GATHERING
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(pacing.current(), Waits::GATHERING);
    }
}
