//! What task-api relies on in daprd's state ETags, shown against the real daprd 1.18.3.
//!
//! Dapr's SaveState does not answer with the ETag it left. On `state.redis` the ETag is a
//! version number that the write raises by one, in the same script that checks the ETag given:
//! a write that held under ETag `n` leaves `n + 1`, and one that created its key leaves 1. So
//! task-api knows a list leaf's ETag once it has written it, and its next write to that leaf
//! needs no read first (`sidecar::store_kind`). On `state.postgresql` (v2) every write draws a
//! random UUID, which only a read tells.
//!
//! A save of several keys, one under a stale ETag, fails as a whole (ABORTED) and, on both
//! stores, writes the others: daprd writes each key on its own (neither component has a bulk
//! write of its own). A store that wrote them in one transaction would write none; task-api's
//! `grouped` reads such a batch back and tells each write apart, so it is right either way.
//!
//! On `state.redis` a transaction is the cheaper way to write several keys under their ETags
//! (one pipeline to Redis instead of a round trip per key), and it is no more atomic: refused
//! for one key, it writes the others too, and daprd answers INTERNAL. Its "only if absent" (no
//! ETag, first-write concurrency) is no such thing: the script refuses only keys marked when they
//! were first written that way, a mark a transaction never sets. But the script writes a missing
//! key whatever ETag a write names, and versions count from 1, so under ETag `-1` a write holds
//! only where the key is absent, in a save and in a transaction alike: that is how task-api
//! writes "only if absent" on Redis (`sidecar::store_kind`).

use std::collections::HashMap;

use dapr::dapr::proto::{
    common::v1::{Etag, StateItem, StateOptions, state_options::StateConcurrency},
    runtime::v1::{
        ExecuteStateTransactionRequest, GetStateRequest, GetStateResponse, SaveStateRequest,
        TransactionalStateOperation, dapr_client::DaprClient,
    },
};
use devstack::{ComponentSet, Stack};
use tonic::{Code, transport::Channel};

/// task-api's conditional write of `key`: under an ETag, or with none "only if absent".
fn item(key: &str, value: &str, etag: Option<&str>) -> StateItem {
    StateItem {
        key: key.into(),
        value: format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}").into_bytes(),
        etag: etag.map(|value| Etag {
            value: value.to_string(),
        }),
        metadata: HashMap::new(),
        options: Some(StateOptions {
            concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
            consistency: 0,
        }),
    }
}

async fn save_all(
    dapr: &mut DaprClient<Channel>,
    states: Vec<StateItem>,
) -> Result<(), tonic::Status> {
    dapr.save_state(SaveStateRequest {
        store_name: "statestore".into(),
        states,
    })
    .await
    .map(drop)
}

/// The same writes as one transaction of upserts.
async fn transact(
    dapr: &mut DaprClient<Channel>,
    states: Vec<StateItem>,
) -> Result<(), tonic::Status> {
    dapr.execute_state_transaction(ExecuteStateTransactionRequest {
        store_name: "statestore".into(),
        operations: states
            .into_iter()
            .map(|item| TransactionalStateOperation {
                operation_type: "upsert".into(),
                request: Some(item),
            })
            .collect(),
        metadata: HashMap::new(),
    })
    .await
    .map(drop)
}

async fn save(
    dapr: &mut DaprClient<Channel>,
    key: &str,
    etag: Option<&str>,
) -> Result<(), tonic::Status> {
    save_all(dapr, vec![item(key, "first", etag)]).await
}

async fn read(dapr: &mut DaprClient<Channel>, key: &str) -> GetStateResponse {
    dapr.get_state(GetStateRequest {
        store_name: "statestore".into(),
        key: key.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// A sidecar of its own on a store of `components`, and a client of it (the stack and sidecar
/// are kept alive with it).
async fn probe(components: ComponentSet) -> (Stack, devstack::Sidecar, DaprClient<Channel>) {
    let stack = Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap();
    let sidecar = stack.sidecar("etag-probe").unwrap().start().await.unwrap();
    let dapr = DaprClient::new(sidecar.channel().await.unwrap());
    (stack, sidecar, dapr)
}

/// How several keys are written in one call.
#[derive(Clone, Copy)]
enum Call {
    Save,
    Transaction,
}

/// On a store of `components`, writes three keys in one call, the middle one under a stale
/// ETag: the call's status, and which of the three hold the value that call wrote.
async fn write_with_one_stale(components: ComponentSet, call: Call) -> (Code, Vec<bool>) {
    let (_stack, _sidecar, mut dapr) = probe(components).await;
    let keys = ["bulk-a", "bulk-b", "bulk-c"];
    let mut etags = Vec::new();
    for key in keys {
        save(&mut dapr, key, None).await.unwrap();
        etags.push(etag_of(&mut dapr, key).await);
    }
    let stale = etags[1].clone();
    save(&mut dapr, keys[1], Some(&stale)).await.unwrap();
    let states = keys
        .iter()
        .zip(&etags)
        .map(|(key, etag)| item(key, "second", Some(etag)))
        .collect();
    let status = match call {
        Call::Save => save_all(&mut dapr, states).await,
        Call::Transaction => transact(&mut dapr, states).await,
    }
    .unwrap_err();
    let mut written = Vec::new();
    for key in keys {
        let data = read(&mut dapr, key).await.data;
        written.push(String::from_utf8_lossy(&data).contains("second"));
    }
    (status.code(), written)
}

#[tokio::test]
async fn on_redis_a_save_of_several_keys_refused_for_one_writes_the_others() {
    let (code, written) = write_with_one_stale(ComponentSet::Redis, Call::Save).await;
    assert_eq!(code, Code::Aborted);
    assert_eq!(written, [true, false, true]);
}

#[tokio::test]
async fn on_postgresql_a_save_of_several_keys_refused_for_one_writes_the_others() {
    let (code, written) = write_with_one_stale(ComponentSet::Postgres, Call::Save).await;
    assert_eq!(code, Code::Aborted);
    assert_eq!(written, [true, false, true]);
}

#[tokio::test]
async fn on_redis_a_transaction_refused_for_one_key_writes_the_others() {
    let (code, written) = write_with_one_stale(ComponentSet::Redis, Call::Transaction).await;
    assert_eq!(code, Code::Internal);
    assert_eq!(written, [true, false, true]);
}

#[tokio::test]
async fn on_redis_a_transaction_writes_keys_under_their_etags_but_not_only_if_absent() {
    let (_stack, _sidecar, mut dapr) = probe(ComponentSet::Redis).await;
    for key in ["txn-a", "txn-b"] {
        save(&mut dapr, key, None).await.unwrap();
    }
    let etags = [
        etag_of(&mut dapr, "txn-a").await,
        etag_of(&mut dapr, "txn-b").await,
    ];
    let under_etags = vec![
        item("txn-a", "second", Some(&etags[0])),
        item("txn-b", "second", Some(&etags[1])),
    ];
    transact(&mut dapr, under_etags).await.unwrap();
    for (key, etag) in ["txn-a", "txn-b"].into_iter().zip(&etags) {
        let stored = read(&mut dapr, key).await;
        assert!(String::from_utf8_lossy(&stored.data).contains("second"));
        let next = etag.parse::<u64>().unwrap() + 1;
        assert_eq!(stored.etag, next.to_string(), "the ETag after the one held");
    }
    // A save "only if absent" of an existing key is refused ...
    assert!(
        save_all(&mut dapr, vec![item("txn-a", "third", None)])
            .await
            .is_err()
    );
    // ... and a key a transaction created without an ETag is no longer protected by it: the
    // transaction leaves out the mark the script checks, so the next such write overwrites it.
    transact(
        &mut dapr,
        vec![
            item("txn-new", "first", None),
            item("txn-new2", "first", None),
        ],
    )
    .await
    .unwrap();
    save_all(&mut dapr, vec![item("txn-new", "overwritten", None)])
        .await
        .unwrap();
    let overwritten = read(&mut dapr, "txn-new").await.data;
    assert!(String::from_utf8_lossy(&overwritten).contains("overwritten"));
}

#[tokio::test]
async fn on_redis_a_write_under_etag_minus_one_holds_only_where_the_key_is_absent() {
    let (_stack, _sidecar, mut dapr) = probe(ComponentSet::Redis).await;
    let absent = |key: &str, value: &str| item(key, value, Some("-1"));
    // Created by a save and by a transaction, each at version 1.
    save_all(&mut dapr, vec![absent("abs-a", "first")])
        .await
        .unwrap();
    transact(
        &mut dapr,
        vec![absent("abs-b", "first"), absent("abs-c", "first")],
    )
    .await
    .unwrap();
    for key in ["abs-a", "abs-b", "abs-c"] {
        assert_eq!(etag_of(&mut dapr, key).await, "1", "{key}");
    }
    // Refused on every existing key, however it was written: a save answers ABORTED, a
    // transaction INTERNAL, and it writes the missing key beside it.
    let refused = save_all(&mut dapr, vec![absent("abs-b", "second")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let refused = transact(
        &mut dapr,
        vec![absent("abs-a", "second"), absent("abs-d", "second")],
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    for (key, value) in [
        ("abs-a", "first"),
        ("abs-b", "first"),
        ("abs-c", "first"),
        ("abs-d", "second"),
    ] {
        let data = read(&mut dapr, key).await.data;
        assert!(String::from_utf8_lossy(&data).contains(value), "{key}");
    }
}

async fn etag_of(dapr: &mut DaprClient<Channel>, key: &str) -> String {
    read(dapr, key).await.etag
}

/// On a store of `components`, writes three keys, each created and then rewritten five times
/// under the ETag it had; the ETag each write left, as read back.
async fn etags_left(components: ComponentSet) -> Vec<Vec<String>> {
    let (_stack, _sidecar, mut dapr) = probe(components).await;
    let mut all = Vec::new();
    for key in ["etag-a", "etag-b", "etag-c"] {
        save(&mut dapr, key, None).await.unwrap();
        let mut left = vec![etag_of(&mut dapr, key).await];
        for _ in 0..5 {
            let current = left.last().unwrap().clone();
            save(&mut dapr, key, Some(&current)).await.unwrap();
            left.push(etag_of(&mut dapr, key).await);
        }
        // A write under an ETag gone stale is refused and leaves the ETag as it was.
        let refused = save(&mut dapr, key, Some(&left[0])).await.unwrap_err();
        assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
        assert_eq!(&etag_of(&mut dapr, key).await, left.last().unwrap());
        all.push(left);
    }
    all
}

#[tokio::test]
async fn on_redis_a_write_leaves_the_etag_after_the_one_it_held_under() {
    for left in etags_left(ComponentSet::Redis).await {
        let expected: Vec<String> = (1..=6).map(|version: u32| version.to_string()).collect();
        assert_eq!(left, expected);
    }
}

#[tokio::test]
async fn on_postgresql_a_writes_etag_is_known_only_by_reading_it() {
    for left in etags_left(ComponentSet::Postgres).await {
        assert!(
            left.iter()
                .all(|etag| etag.parse::<u64>().is_err() && etag.len() == 36),
            "v2's ETags are UUIDs: {left:?}"
        );
        let distinct: std::collections::HashSet<&String> = left.iter().collect();
        assert_eq!(distinct.len(), left.len(), "{left:?}");
    }
}
