//! What a change adds to its trace, over the fakes with spans recorded in memory: the staged
//! event carries the change's context, the relay's publish continues it, the delivery continues
//! the publish; a batch serving several changes is linked to each.

use opentelemetry::{
    KeyValue,
    trace::{SpanContext, SpanId},
};
use opentelemetry_sdk::trace::SpanData;
use tracing::Instrument;

use super::{fakes::World, outbox::OutboxMessage, ports::Topic, testing::Process};
use crate::{
    domain::TaskStatus,
    telemetry::{recorded, spans},
};

/// The traceparent daprd would hand the request.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

fn linked(span: &SpanData) -> Vec<SpanId> {
    span.links
        .links
        .iter()
        .map(|l| l.span_context.span_id())
        .collect()
}

/// The span a message's traceparent names.
fn named_by(traceparent: Option<&str>) -> SpanContext {
    traceparent
        .and_then(spans::parse)
        .expect("the message carries a traceparent")
}

#[tokio::test(start_paused = true)]
async fn a_completion_is_one_trace_from_the_request_to_the_verified_delivery() {
    let (_default, recorded) = recorded::record();
    let world = World::new();
    let process = Process::start(&world);
    let id_ = process.create("traced").await;
    process.deliver(&world).await;
    let request = spans::server("/task.v1.TaskService/UpdateTaskStatus", Some(CALLER));
    process
        .tasks
        .change_status(&id_, TaskStatus::Completed, None)
        .instrument(request.clone())
        .await
        .unwrap();
    drop(request);
    process.deliver(&world).await;
    assert_eq!(world.notifier.received().len(), 1);

    let request = recorded.one("task.v1.TaskService/UpdateTaskStatus");
    let stage = recorded.one("stage task.completed");
    assert_eq!(stage.parent_span_id, id(&request), "{}", recorded.outline());
    assert_eq!(
        stage.span_context.trace_id(),
        request.span_context.trace_id()
    );
    // The change's index write hangs under its request.
    assert!(
        recorded
            .named("index batch")
            .iter()
            .any(|b| b.parent_span_id == id(&request)),
        "{}",
        recorded.outline()
    );
    let publish = staged_relayed_and_published(&recorded, &world, &stage);
    delivered_and_verified(&recorded, &publish);
}

/// The staged event carries the stage span's context, the relay of a batch of one is that
/// span's child, and so is the publish, whose context the published event carries.
fn staged_relayed_and_published(
    recorded: &recorded::Recorded,
    world: &World,
    stage: &SpanData,
) -> SpanData {
    let outline = recorded.outline();
    let staged = world.broker.published(Topic::Outbox).pop().unwrap();
    assert_eq!(named_by(staged.traceparent.as_deref()).span_id(), id(stage));
    let Ok(OutboxMessage::Staged(event)) = OutboxMessage::from_json(&staged.data) else {
        panic!("not a staged event");
    };
    assert_eq!(event.traceparent, staged.traceparent);
    let relay = recorded
        .named("relay")
        .into_iter()
        .find(|r| linked(r) == [id(stage)])
        .unwrap_or_else(|| panic!("no relay linked to the stage span:\n{outline}"));
    assert_eq!(relay.parent_span_id, id(stage), "{outline}");
    // The link to the parent says it is one (Jaeger would otherwise show only the link).
    let child_of = KeyValue::new("opentracing.ref_type", "child_of");
    assert_eq!(relay.links.links[0].attributes, [child_of]);
    let publish = recorded.one("publish task.completed");
    assert_eq!(publish.parent_span_id, id(stage), "{outline}");
    let published = world.broker.published(Topic::Events).pop().unwrap();
    assert_eq!(
        named_by(published.traceparent.as_deref()).span_id(),
        id(&publish)
    );
    publish
}

/// The delivery continues the publish; the verification is part of handling it.
fn delivered_and_verified(recorded: &recorded::Recorded, publish: &SpanData) {
    let outline = recorded.outline();
    let handle = recorded.one("handle notify");
    assert_eq!(handle.parent_span_id, id(publish), "{outline}");
    let verify = recorded.named("verify");
    assert!(
        verify.iter().any(|v| v.parent_span_id == id(&handle)),
        "{outline}"
    );
    let batches = recorded.named("deliveries");
    assert!(
        batches
            .iter()
            .any(|d| linked(d) == [id(publish)] && d.parent_span_id == id(publish)),
        "{outline}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_relay_batch_of_several_changes_is_linked_to_each_and_a_child_of_none() {
    let (_default, recorded) = recorded::record();
    let world = World::new();
    let process = Process::start(&world);
    let first = spans::server("/task.v1.TaskService/CreateTask", None);
    let second = spans::server("/task.v1.TaskService/CreateTask", None);
    let (a, b) = tokio::join!(
        process.create("one").instrument(first),
        process.create("two").instrument(second),
    );
    assert_ne!(a, b);
    let staged = world.broker.unacknowledged(Topic::Outbox, 10);
    assert_eq!(staged.len(), 1, "staged together");
    let Ok(OutboxMessage::Batch(batch)) = OutboxMessage::from_json(&staged[0].message.data) else {
        panic!("not a batch of staged events");
    };
    assert_eq!(batch.len(), 2);
    process.deliver(&world).await;
    let outline = recorded.outline();

    let stages: Vec<SpanId> = recorded
        .named("stage task.created")
        .iter()
        .map(id)
        .collect();
    assert_eq!(stages.len(), 2, "{outline}");
    let relay = recorded
        .named("relay")
        .into_iter()
        .find(|r| linked(r).len() == 2)
        .unwrap_or_else(|| panic!("no relay of both changes:\n{outline}"));
    assert_eq!(relay.parent_span_id, SpanId::INVALID, "{outline}");
    assert!(relay.links.iter().all(|l| l.attributes.is_empty()));
    assert!(stages.iter().all(|s| linked(&relay).contains(s)));
    // The message continues the publish that staged both, which is linked to each change.
    let publish = recorded.one("outbox batch");
    assert!(stages.iter().all(|s| linked(&publish).contains(s)));
    assert_eq!(
        named_by(staged[0].message.traceparent.as_deref()).span_id(),
        id(&publish)
    );
    // Each event in it carries its own change's context.
    let contexts: Vec<SpanId> = batch
        .iter()
        .map(|event| named_by(event.traceparent.as_deref()).span_id())
        .collect();
    assert!(stages.iter().all(|s| contexts.contains(s)), "{outline}");
    // Each publish still continues its own change.
    let parents: Vec<SpanId> = recorded
        .named("publish task.created")
        .iter()
        .map(|p| p.parent_span_id)
        .collect();
    assert_eq!(parents.len(), 2, "{outline}");
    assert!(stages.iter().all(|s| parents.contains(s)), "{outline}");
}

#[tokio::test(start_paused = true)]
async fn notifications_sent_together_are_linked_to_each_event_and_a_child_of_none() {
    let (_default, recorded) = recorded::record();
    let world = World::new();
    let process = Process::start(&world);
    let (a, b) = (process.create("one").await, process.create("two").await);
    process.deliver(&world).await;
    let complete = |task| {
        let request = spans::server("/task.v1.TaskService/UpdateTaskStatus", None);
        let tasks = process.tasks.clone();
        async move {
            tasks
                .change_status(&task, TaskStatus::Completed, None)
                .await
                .unwrap()
        }
        .instrument(request)
    };
    tokio::join!(complete(a), complete(b));
    let calls = world.notifier.calls();
    process.deliver(&world).await;
    assert_eq!(world.notifier.calls() - calls, 1, "notified in one call");
    assert_eq!(world.notifier.received().len(), 2);
    let outline = recorded.outline();

    let handles: Vec<SpanId> = recorded.named("handle notify").iter().map(id).collect();
    assert_eq!(handles.len(), 2, "{outline}");
    let batch = recorded.one("notify batch");
    assert_eq!(batch.parent_span_id, SpanId::INVALID, "{outline}");
    assert_eq!(linked(&batch).len(), 2, "{outline}");
    assert!(
        handles.iter().all(|h| linked(&batch).contains(h)),
        "{outline}"
    );
}

/// Without spans exported, nothing is added to the staged events or the messages.
#[tokio::test(start_paused = true)]
async fn without_an_exporter_messages_carry_no_trace_context() {
    let world = World::new();
    let process = Process::start(&world);
    let id_ = process.create("untraced").await;
    process
        .tasks
        .change_status(&id_, TaskStatus::Completed, None)
        .await
        .unwrap();
    process.deliver(&world).await;
    assert_eq!(world.notifier.received().len(), 1);
    for topic in [Topic::Outbox, Topic::Events] {
        let messages = world.broker.published(topic);
        assert!(!messages.is_empty());
        assert!(
            messages.iter().all(|m| m.traceparent.is_none()),
            "{topic:?}"
        );
        assert!(
            messages
                .iter()
                .all(|m| !String::from_utf8_lossy(&m.data).contains("traceparent"))
        );
    }
}
