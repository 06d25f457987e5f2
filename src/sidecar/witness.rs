//! The witness: a key that always exists, read with every bulk read of a store whose bulk read
//! can fail without saying so.
//!
//! daprd's `state.postgresql` answers a bulk read with one query and does not look at the error
//! the query ended with. When the query fails (the server is stopping, or daprd sends it on a
//! pooled connection the server has dropped), every key comes back absent: the answer a key
//! that was never written gets. A delete then answered NOT_FOUND for a task that exists, which
//! a client takes as done, and the task lived on. A failed single read (GetState) is reported
//! as the failure it is.
//!
//! With the witness among the keys, a bulk read that comes back without it failed. Stores that
//! daprd reads key by key report each key's failure as that key's error, and need no witness.
//! What the witness cannot see is a query cut off between two of its rows, after the witness's:
//! a window of the query's own run time (microseconds for the few keys task-api reads at once),
//! where the failures seen are of whole queries.

use crate::service::ports::{Condition, Write};

/// The witness's key, beside task-api's own (`task-`, `published-`, `list-`, ...).
pub(super) const KEY: &str = "bulk-read-witness";

/// Writes the witness, with no expiry.
pub(super) fn write() -> Write {
    Write::new(KEY, b"true".to_vec(), Condition::Any)
}

/// A bulk read came back without the witness, which exists: the read failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the state store's bulk read came back without the key {KEY:?}, which exists: the read failed and its keys' values are unknown"
)]
pub(super) struct ReadFailed;
