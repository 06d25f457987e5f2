//! The outcomes of this process's own writes, for its relay.
//!
//! A change is staged before it is written, so its staged event often reaches the relay while
//! the write is still in flight. When that write is this process's own, the relay waits for it
//! here instead of reading the store again and again, and learns at once a write that lost its
//! race. Only a write whose outcome is known here counts; anything else is decided from the
//! stored record, as it must be for changes made by other replicas or before a restart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::domain::{Nonce, TaskId};

/// Outcomes are kept this long after the write ended, for staged events that arrive late.
const KEPT_FOR: Duration = Duration::from_secs(10);

/// What became of a write this process made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// It landed.
    Committed,
    /// It did not land: another writer took the revision first.
    Lost,
}

type Key = (TaskId, u64, Nonce);

struct Slot {
    outcome: watch::Receiver<Option<Local>>,
    began: Instant,
    ended: Option<Instant>,
}

/// This process's writes, by task, revision and nonce.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<Key, Slot>>>);

/// A write in flight; dropping it without [`Write::finish`] leaves its outcome unknown.
pub(crate) struct Write {
    key: Key,
    outcome: watch::Sender<Option<Local>>,
    registry: InFlight,
}

impl Write {
    pub(crate) fn finish(self, outcome: Local) {
        let _ = self.outcome.send(Some(outcome));
        self.registry.ended(&self.key, true);
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        if self.outcome.borrow().is_none() {
            // Outcome unknown (an error, a timeout): the store must tell.
            self.registry.ended(&self.key, false);
        }
    }
}

impl InFlight {
    /// Notes that this process starts writing `revision` of `task` with `nonce`.
    pub(crate) fn begin(&self, task: &TaskId, revision: u64, nonce: Nonce) -> Write {
        let key = (task.clone(), revision, nonce);
        let (outcome, receiver) = watch::channel(None);
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| slot.ended.is_none_or(|at| at.elapsed() < KEPT_FOR));
        slots.insert(
            key.clone(),
            Slot {
                outcome: receiver,
                began: Instant::now(),
                ended: None,
            },
        );
        Write {
            key,
            outcome,
            registry: self.clone(),
        }
    }

    fn ended(&self, key: &Key, known: bool) {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known {
            if let Some(slot) = slots.get_mut(key) {
                slot.ended = Some(Instant::now());
            }
        } else {
            slots.remove(key);
        }
    }

    /// The outcome of this process's write of `(task, revision, nonce)`, waiting up to `wait`
    /// while it is in flight; `None` if this process made no such write, its outcome is
    /// unknown, or it is still in flight after `wait`.
    pub(crate) async fn outcome(
        &self,
        task: &TaskId,
        revision: u64,
        nonce: Nonce,
        wait: Duration,
    ) -> Option<Local> {
        let mut receiver = {
            let slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slots.get(&(task.clone(), revision, nonce))?.outcome.clone()
        };
        let outcome = tokio::time::timeout(wait, receiver.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(outcome)) => *outcome,
            _ => None,
        }
    }

    /// Forgets a write whose staged event has been decided.
    pub(crate) fn forget(&self, task: &TaskId, revision: u64, nonce: Nonce) {
        let mut slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&(task.clone(), revision, nonce));
    }

    /// This process's committed writes whose event it has not seen published, and how long ago
    /// the oldest of them began.
    pub(crate) fn unpublished(&self) -> (usize, Option<Duration>) {
        let slots = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let committed = slots
            .values()
            .filter(|slot| matches!(*slot.outcome.borrow(), Some(Local::Committed)));
        let (count, oldest) = committed.fold((0, None::<Instant>), |(count, oldest), slot| {
            let began = slot.began;
            (count + 1, Some(oldest.map_or(began, |o| o.min(began))))
        });
        (count, oldest.map(|at| at.elapsed()))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskId {
        TaskId::parse("t").unwrap()
    }

    #[tokio::test]
    async fn the_relay_waits_for_a_write_in_flight() {
        let registry = InFlight::default();
        let nonce = Nonce::random();
        let write = registry.begin(&task(), 3, nonce);
        let waiting = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .outcome(&task(), 3, nonce, Duration::from_secs(5))
                    .await
            })
        };
        tokio::task::yield_now().await;
        write.finish(Local::Committed);
        assert_eq!(waiting.await.unwrap(), Some(Local::Committed));
        assert_eq!(
            registry.outcome(&task(), 3, nonce, Duration::ZERO).await,
            Some(Local::Committed),
            "kept for a late staged event"
        );
        registry.forget(&task(), 3, nonce);
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test]
    async fn an_unknown_outcome_and_another_process_write_are_not_known_here() {
        let registry = InFlight::default();
        let nonce = Nonce::random();
        drop(registry.begin(&task(), 1, nonce));
        assert_eq!(
            registry.outcome(&task(), 1, nonce, Duration::ZERO).await,
            None
        );
        assert_eq!(
            registry
                .outcome(&task(), 2, Nonce::random(), Duration::ZERO)
                .await,
            None
        );
        let pending = registry.begin(&task(), 4, nonce);
        assert_eq!(
            registry
                .outcome(&task(), 4, nonce, Duration::from_millis(5))
                .await,
            None,
            "still in flight after the wait"
        );
        pending.finish(Local::Lost);
        assert_eq!(
            registry.outcome(&task(), 4, nonce, Duration::ZERO).await,
            Some(Local::Lost)
        );
    }
}
