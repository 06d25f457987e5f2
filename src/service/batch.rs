//! Queues drained in batches: one store or broker call serves everything that waited for it.

use tokio::sync::mpsc;

/// Waits for the next item of `queue`, then takes what else is already waiting, up to `max` in
/// all. `None` once the queue is closed and empty.
pub(crate) async fn next<T>(queue: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = Vec::new();
    (queue.recv_many(&mut batch, max).await > 0).then_some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

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
