//! ListTasks while the list changes: paging through every task while others are created,
//! completed, reopened and deleted, on each store.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::common::{Options, TestApp, create, page_through, per_store};
use devstack::{ComponentSet, Stack};
use task_api::proto::task::v1::{self as pb, TaskStatus};

/// Tasks that exist, unchanged, for the whole paging are each listed exactly once (and in order),
/// while other tasks are created, change status and are deleted all along.
async fn paging_under_concurrent_changes(components: ComponentSet) {
    let stack = Stack::builder()
        .components(components)
        .start()
        .await
        .unwrap();
    let (app, _notifications) =
        TestApp::task_api_with_notifications(&stack, Options::default()).await;
    let mut client = app.client().await;

    // Stable tasks, spread over every priority and two statuses.
    let mut stable = BTreeMap::new();
    for n in 0..150 {
        let task = create(&mut client, &format!("stable {n}"), Some(n % 5 + 1)).await;
        let task = if n % 4 == 0 {
            client
                .update_task_status(pb::UpdateTaskStatusRequest {
                    id: task.id.clone(),
                    status: TaskStatus::InProgress as i32,
                    etag: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
        } else {
            task
        };
        stable.insert(task.id.clone(), task.status);
    }
    // Churn, interleaved with them in creation order.
    let mut churning = Vec::new();
    for n in 0..60 {
        churning.push(
            create(&mut client, &format!("churn {n}"), Some(n % 5 + 1))
                .await
                .id,
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut churn = tokio::task::JoinSet::new();
    for worker in 0..3 {
        let mut client = client.clone();
        let stop = stop.clone();
        let ids = churning.clone();
        churn.spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let id = ids[(round * 7 + worker * 13) % ids.len()].clone();
                let status = [
                    TaskStatus::Completed,
                    TaskStatus::Pending,
                    TaskStatus::InProgress,
                ][round % 3];
                let _ = client
                    .update_task_status(pb::UpdateTaskStatusRequest {
                        id,
                        status: status as i32,
                        etag: String::new(),
                    })
                    .await;
                if round.is_multiple_of(5) {
                    let fresh = create(&mut client, "newcomer", Some(3)).await;
                    if round.is_multiple_of(10) {
                        let _ = client
                            .delete_task(pb::DeleteTaskRequest {
                                id: fresh.id,
                                etag: String::new(),
                            })
                            .await;
                    }
                }
                if round.is_multiple_of(11) {
                    // Deleting a churning task: gone from then on.
                    let _ = client
                        .delete_task(pb::DeleteTaskRequest {
                            id: ids[round % ids.len()].clone(),
                            etag: String::new(),
                        })
                        .await;
                }
            }
        });
    }

    // Page through everything, and through each status, several times, in small pages.
    for _ in 0..3 {
        for (status, page_size) in [
            (TaskStatus::Unspecified, 7),
            (TaskStatus::Pending, 9),
            (TaskStatus::InProgress, 4),
        ] {
            let request = pb::ListTasksRequest {
                status: status as i32,
                page_size,
                ..Default::default()
            };
            let (listed, _) = page_through(&mut client, request).await;
            let mut seen = BTreeSet::new();
            for task in &listed {
                assert!(seen.insert(task.id.clone()), "{} listed twice", task.id);
                if status != TaskStatus::Unspecified {
                    assert_eq!(task.status, status as i32, "{} in the wrong list", task.id);
                }
            }
            let order: Vec<_> = listed
                .iter()
                .map(|t| {
                    let at = t.created_at.unwrap();
                    (at.seconds, at.nanos, t.id.clone())
                })
                .collect();
            assert!(order.is_sorted(), "oldest first");
            for (id, stable_status) in &stable {
                let expected = status == TaskStatus::Unspecified || *stable_status == status as i32;
                assert_eq!(
                    seen.contains(id),
                    expected,
                    "stable task {id} ({stable_status}) listed with filter {status:?}: {}",
                    seen.contains(id)
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = churn.join_next().await {
        done.unwrap();
    }
}

per_store! {
    paging_under_concurrent_changes:
    paging_under_concurrent_changes_on_redis => Redis,
    paging_under_concurrent_changes_on_postgres => Postgres,
}
