//! What each request costs the sidecar: the calls task-api's daprd serves, and the state and
//! pub/sub operations it makes, per request, counted by daprd's own metrics over 200 requests
//! made one at a time (so nothing is shared between requests by batching), and what changes
//! in flight together share. A plain Dapr app
//! makes 2 calls for a create (save, publish) and 3 for a change (get, save, publish); the
//! bounds below hold task-api to what its guarantees need, so that a change that adds a call
//! to every write fails here.

use std::{collections::BTreeMap, time::Duration};

use task_api::proto::task::v1 as pb;

use crate::common::{BinaryApp, Client, WithHeader};

const REQUESTS: usize = 200;

/// daprd's counters of calls served and component operations, by their full series name.
async fn counters(sidecar: &devstack::Sidecar) -> BTreeMap<String, f64> {
    let response = devstack::http::get(sidecar.metrics_port(), "/")
        .await
        .unwrap();
    String::from_utf8_lossy(&response.body)
        .lines()
        .filter(|l| {
            l.starts_with("dapr_grpc_io_server_completed_rpcs")
                || l.starts_with("dapr_grpc_io_client_completed_rpcs")
                || l.starts_with("dapr_component_state_count")
                || l.starts_with("dapr_component_pubsub_egress_count")
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Per request, by a short name: `api:<method>` (calls task-api made), `app:<callback>` (calls
/// daprd made to task-api), `state:<operation>`, `publish:<topic>`.
fn per_request(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (series, value) in after {
        let delta = value - before.get(series).copied().unwrap_or(0.0);
        if delta <= 0.0 {
            continue;
        }
        let label = |name: &str| {
            let start = series.find(&format!("{name}=\""))? + name.len() + 2;
            let end = series[start..].find('"')? + start;
            Some(series[start..end].to_string())
        };
        let short = if series.starts_with("dapr_grpc_io_server") {
            label("grpc_server_method")
                .map(|m| format!("api:{}", m.rsplit('/').next().unwrap_or("")))
        } else if series.starts_with("dapr_grpc_io_client") {
            label("grpc_client_method")
                .map(|m| format!("app:{}", m.rsplit('/').next().unwrap_or("")))
        } else if series.starts_with("dapr_component_state") {
            label("operation").map(|o| format!("state:{o}"))
        } else {
            label("topic").map(|t| format!("publish:{t}"))
        };
        if let Some(short) = short {
            *out.entry(short).or_insert(0.0) += delta / REQUESTS as f64;
        }
    }
    out
}

fn total(costs: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    costs
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

async fn create(client: &mut Client, n: usize) -> String {
    client
        .create_task(pb::CreateTaskRequest {
            title: format!("task {n}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Lets the events of the requests made be delivered and handled.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Creates [`REQUESTS`] tasks: their ids, and what a create costs.
async fn creates(
    client: &mut Client,
    sidecar: &devstack::Sidecar,
) -> (Vec<String>, BTreeMap<String, f64>) {
    let mut ids = Vec::new();
    let before = counters(sidecar).await;
    for n in 0..REQUESTS {
        ids.push(create(client, n).await);
    }
    settle().await;
    (ids, per_request(&before, &counters(sidecar).await))
}

/// Completes each of `ids`: what a completion costs.
async fn completions(
    client: &mut Client,
    sidecar: &devstack::Sidecar,
    ids: &[String],
) -> BTreeMap<String, f64> {
    let before = counters(sidecar).await;
    for id in ids {
        let request = pb::UpdateTaskStatusRequest {
            id: id.clone(),
            status: pb::TaskStatus::Completed as i32,
            etag: String::new(),
        };
        client.update_task_status(request).await.unwrap();
    }
    settle().await;
    per_request(&before, &counters(sidecar).await)
}

/// Reads each of `ids`: what a read costs.
async fn gets(
    client: &mut Client,
    sidecar: &devstack::Sidecar,
    ids: &[String],
) -> BTreeMap<String, f64> {
    let before = counters(sidecar).await;
    for id in ids {
        client
            .get_task(pb::GetTaskRequest { id: id.clone() })
            .await
            .unwrap();
    }
    per_request(&before, &counters(sidecar).await)
}

/// One table row per request kind: its totals by kind of call, then every call it made.
fn print_costs(rows: [(&str, &BTreeMap<String, f64>); 3]) {
    for (what, costs) in rows {
        let line: Vec<String> = costs.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        eprintln!(
            "| {what} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            total(costs, "api:"),
            total(costs, "app:"),
            total(costs, "state:"),
            total(costs, "publish:"),
            line.join(", ")
        );
    }
}

/// One at a time, each change stages its event alone (one publish) and publishes it directly,
/// in a call of its own or, on Redis streams, sharing the call of a change made within the
/// spacing of direct publishes (5 ms) before it: a shared call is a bulk publish, counted under
/// `api:BulkPublishEvent`, not under the topic.
fn publishes_at_most_two_per_change(costs: &BTreeMap<String, f64>) {
    let calls = |name: &str| costs.get(name).copied().unwrap_or(0.0);
    let staged = calls("publish:task-events-outbox");
    let direct = calls("publish:task-events") + calls("api:BulkPublishEvent");
    assert!((staged - 1.0).abs() < 0.05, "{costs:?}");
    assert!(direct > 0.0 && direct <= 1.05, "{costs:?}");
}

/// The system with both apps as their binaries, settled, and a client of task-api.
async fn start() -> (devstack::Stack, BinaryApp, BinaryApp, Client) {
    let stack = devstack::Stack::builder().start().await.unwrap();
    let notifications = BinaryApp::start(&stack, "notification-service", &[]).await;
    let app = BinaryApp::start(&stack, "task-api", &[]).await;
    let client: Client = pb::task_service_client::TaskServiceClient::with_interceptor(
        app.channel().await,
        WithHeader("x-api-key", stack.api_key().to_string()),
    );
    settle().await;
    (stack, notifications, app, client)
}

#[tokio::test]
async fn each_write_costs_the_sidecar_what_its_guarantees_need_and_no_more() {
    let (_stack, _notifications, app, mut client) = start().await;
    let (ids, creates) = creates(&mut client, &app.sidecar).await;
    let completions = completions(&mut client, &app.sidecar, &ids).await;
    let gets = gets(&mut client, &app.sidecar, &ids).await;
    print_costs([
        ("CreateTask", &creates),
        ("UpdateTaskStatus", &completions),
        ("GetTask", &gets),
    ]);
    // On Redis (the stack's store) a write's new ETag follows from the write, so a list leaf
    // written is not read back for the next write to it.
    // A create: stage, write, list entry, publish, ledger; the staged copy and the event
    // delivered back.
    assert!(total(&creates, "api:") <= 5.6, "{creates:?}");
    assert!(total(&creates, "state:") <= 3.4, "{creates:?}");
    publishes_at_most_two_per_change(&creates);
    // A completion: read (the record with its ledger), stage, write, enter one list and leave
    // another, publish, ledger, notify. Leaving the list is shared by completions a few
    // milliseconds apart (each wrote 4.0 saves before it was, 8.2 calls in all).
    assert!(total(&completions, "api:") <= 8.0, "{completions:?}");
    assert!(total(&completions, "state:") <= 5.0, "{completions:?}");
    publishes_at_most_two_per_change(&completions);
    // A read is one read.
    assert!((total(&gets, "api:") - 1.0).abs() < 0.1, "{gets:?}");
    assert!((total(&gets, "state:") - 1.0).abs() < 0.1, "{gets:?}");
    // Every staged copy came back to the relay readable (one per change, as each was staged
    // alone), and no delivery was kept as a dead letter.
    let relayed = async |outcome| {
        app.metric(
            "task_api_events_handled_total",
            &[("route", "outbox"), ("outcome", outcome)],
        )
        .await
    };
    assert!(relayed("success").await >= 2.0 * REQUESTS as f64);
    assert_eq!(relayed("dead_letter").await, 0.0);
    assert_eq!(app.metric("task_api_dead_letters_total", &[]).await, 0.0);
}

/// Completes `ids` from `callers` clients at once: what a completion costs then.
async fn completions_at_once(
    client: &Client,
    sidecar: &devstack::Sidecar,
    ids: &[String],
    callers: usize,
) -> BTreeMap<String, f64> {
    let before = counters(sidecar).await;
    let chunks: Vec<Vec<String>> = ids
        .chunks(ids.len().div_ceil(callers))
        .map(<[String]>::to_vec)
        .collect();
    let work = chunks.into_iter().map(|chunk| {
        let mut client = client.clone();
        async move {
            for id in chunk {
                let request = pb::UpdateTaskStatusRequest {
                    id,
                    status: pb::TaskStatus::Completed as i32,
                    etag: String::new(),
                };
                client.update_task_status(request).await.unwrap();
            }
        }
    });
    futures::future::join_all(work).await;
    settle().await;
    per_request(&before, &counters(sidecar).await)
}

/// The state calls a completion made: reads (its record with its ledger) and writes (its
/// record, its ledger, its list leaves: saves, or on Redis several keys at once in one
/// transaction).
fn state_calls(costs: &BTreeMap<String, f64>) -> f64 {
    [
        "api:GetBulkState",
        "api:SaveState",
        "api:ExecuteStateTransaction",
    ]
    .iter()
    .map(|call| costs.get(*call).copied().unwrap_or(0.0))
    .sum()
}

#[tokio::test]
async fn changes_in_flight_together_share_their_state_calls() {
    let (_stack, _notifications, app, mut client) = start().await;
    let (ids, _) = creates(&mut client, &app.sidecar).await;
    let (alone, together) = ids.split_at(REQUESTS / 2);
    let one_at_a_time = completions(&mut client, &app.sidecar, alone).await;
    let at_once = completions_at_once(&client, &app.sidecar, together, 16).await;
    // Counted over half the requests each.
    let (one, shared) = (
        state_calls(&one_at_a_time) * 2.0,
        state_calls(&at_once) * 2.0,
    );
    let mut failed = 0.0;
    for operation in ["bulk_save", "transaction"] {
        failed += app
            .metric(
                "task_api_sidecar_call_duration_seconds_count",
                &[("operation", operation), ("outcome", "error")],
            )
            .await;
    }
    eprintln!(
        "state calls per completion: {one:.2} one at a time, {shared:.2} 16 at once; \
         writes of several keys that failed: {failed}"
    );
    eprintln!("one at a time: {one_at_a_time:?}\n16 at once: {at_once:?}");
    assert!(
        shared < one * 0.8,
        "16 completions in flight share their state calls: {shared:.2} per completion, {one:.2} alone"
    );
    // Each reads its record with its ledger: one read alone, a share of one together.
    let reads =
        |costs: &BTreeMap<String, f64>| costs.get("api:GetBulkState").copied().unwrap_or(0.0) * 2.0;
    assert!(reads(&one_at_a_time) >= 1.0, "{one_at_a_time:?}");
    assert!(reads(&at_once) < 0.9, "{at_once:?}");
    for id in together {
        let task = client
            .get_task(pb::GetTaskRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(task.status, pb::TaskStatus::Completed as i32);
    }
}
