//! Queues drained in batches: one store or broker call serves everything that waited for it.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

/// Waits for the next item of `queue`, then takes what else is already waiting, up to `max` in
/// all. `None` once the queue is closed and empty.
pub(crate) async fn next<T>(queue: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = Vec::new();
    (queue.recv_many(&mut batch, max).await > 0).then_some(batch)
}

/// Batches that start at most one spacing after the one before: while items keep coming, those
/// that come within that time share a batch; an item after a quiet spell (or the first) is taken
/// at once, so one on its own waits on no timer.
#[derive(Debug, Default)]
pub(crate) struct Spaced {
    last: Option<Instant>,
}

impl Spaced {
    /// As [`next`], but when the batch before started less than `spacing` ago (and this one is
    /// not full), it waits out the rest of it and takes what came meanwhile. A zero spacing
    /// never waits.
    pub(crate) async fn next<T>(
        &mut self,
        queue: &mut mpsc::UnboundedReceiver<T>,
        max: usize,
        spacing: Duration,
    ) -> Option<Vec<T>> {
        let mut batch = next(queue, max).await?;
        let due = self.last.map(|last| last + spacing);
        if let Some(due) = due.filter(|due| *due > Instant::now() && batch.len() < max) {
            tokio::time::sleep_until(due).await;
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        self.last = Some(Instant::now());
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACING: Duration = Duration::from_millis(5);

    #[tokio::test(start_paused = true)]
    async fn a_spaced_batch_after_a_quiet_spell_is_taken_at_once() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        let mut spaced = Spaced::default();
        let start = Instant::now();
        sender.send(1).unwrap();
        assert_eq!(spaced.next(&mut queue, 8, SPACING).await, Some(vec![1]));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first waits on no timer"
        );
        tokio::time::sleep(SPACING * 2).await;
        let quiet = Instant::now();
        sender.send(2).unwrap();
        assert_eq!(spaced.next(&mut queue, 8, SPACING).await, Some(vec![2]));
        assert_eq!(
            quiet.elapsed(),
            Duration::ZERO,
            "nor one after a quiet spell"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn items_that_keep_coming_share_a_batch_per_spacing() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        let mut spaced = Spaced::default();
        let start = Instant::now();
        sender.send(0).unwrap();
        assert_eq!(spaced.next(&mut queue, 8, SPACING).await, Some(vec![0]));
        let feeder = tokio::spawn(async move {
            for n in 1..=4 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                sender.send(n).unwrap();
            }
        });
        assert_eq!(
            spaced.next(&mut queue, 8, SPACING).await,
            Some(vec![1, 2, 3, 4])
        );
        assert_eq!(start.elapsed(), SPACING, "taken when the spacing was up");
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_spacing_items_that_keep_coming_are_taken_as_they_come() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        let mut spaced = Spaced::default();
        let start = Instant::now();
        sender.send(0).unwrap();
        assert_eq!(
            spaced.next(&mut queue, 8, Duration::ZERO).await,
            Some(vec![0])
        );
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sender.send(1).unwrap();
        });
        assert_eq!(
            spaced.next(&mut queue, 8, Duration::ZERO).await,
            Some(vec![1])
        );
        assert_eq!(start.elapsed(), Duration::from_millis(1));
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_does_not_wait_for_the_spacing() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        let mut spaced = Spaced::default();
        for n in 0..5 {
            sender.send(n).unwrap();
        }
        let start = Instant::now();
        assert_eq!(spaced.next(&mut queue, 2, SPACING).await, Some(vec![0, 1]));
        assert_eq!(spaced.next(&mut queue, 2, SPACING).await, Some(vec![2, 3]));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(spaced.next(&mut queue, 2, SPACING).await, Some(vec![4]));
        assert_eq!(start.elapsed(), SPACING, "one not full waits it out");
    }

    #[tokio::test]
    async fn a_batch_is_what_waits_up_to_the_most_then_none_once_closed() {
        let (sender, mut queue) = mpsc::unbounded_channel();
        for n in 0..5 {
            sender.send(n).unwrap();
        }
        drop(sender);
        assert_eq!(next(&mut queue, 3).await, Some(vec![0, 1, 2]));
        assert_eq!(next(&mut queue, 3).await, Some(vec![3, 4]));
        assert_eq!(next(&mut queue, 3).await, None);
    }
}
