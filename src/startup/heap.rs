//! Hands the allocator's free memory back to the system now and then.
//!
//! glibc's malloc keeps what a burst frees in its arenas, so the resident set stays at the
//! burst's high-water mark long after it: task-api held 35 MiB through a steady load that needs
//! 16 MiB, because an overloaded step before it (a thousand calls waiting, thousands of events
//! behind) had grown its heap. `malloc_trim` returns every arena's free pages.
//!
//! glibc's malloc stays, trimmed. Under 16 requests in flight its `malloc` and `free` took about
//! an eighth of task-api's CPU (perf), but mimalloc in its place held task-api at a 60.5 MiB peak
//! where this held 18.1 MiB, for no throughput `scripts/bench cost` could tell from its noise.

use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

/// A trim walks the free chunks of every arena: 6 to 38 µs in an idle app (its `heap trimmed`
/// debug line times each), not measured under load.
const EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every [`EVERY`] until `stop` completes.
pub(super) async fn give_back_free_memory(stop: impl Future<Output = ()>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {
                let started = Instant::now();
                let returned = trim();
                tracing::debug!(returned, took = ?started.elapsed(), "heap trimmed");
            }
        }
    }
}

/// Whether any memory was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes the allocator's own locks and releases only free pages; it
    // touches no memory in use.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
