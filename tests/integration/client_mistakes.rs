//! What a client that gets the protocol wrong sees: one test per row of the README's table of
//! client mistakes. Each mistake fails only its own call, with a code that says whose fault it
//! is, and a message short enough to reach the client.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use devstack::Stack;
use task_api::proto::task::v1 as pb;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use tonic_types::StatusExt;

use crate::common::{Options, TestApp, create};

async fn raw_call(app: &TestApp, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    crate::common::raw_call(
        app.channel().await,
        &format!("/task.v1.TaskService/{method}"),
        body,
        &[("x-api-key", &app.api_key)],
    )
    .await
}

async fn app() -> (Stack, TestApp) {
    let stack = Stack::builder().start().await.unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    (stack, app)
}

/// Bytes that are not a protobuf message: INVALID_ARGUMENT, not INTERNAL.
#[tokio::test]
async fn an_undecodable_message_is_invalid_argument() {
    let (_stack, app) = app().await;
    // Field 1, length-delimited, claiming 100 bytes that are not there.
    let error = raw_call(&app, "CreateTask", vec![0x0a, 100, b'x'])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("not valid protobuf"), "{error:?}");
}

/// A string field that is not UTF-8: INVALID_ARGUMENT, naming the field.
#[tokio::test]
async fn invalid_utf8_in_a_string_is_invalid_argument() {
    let (_stack, app) = app().await;
    // CreateTaskRequest.title (field 1) = the bytes FF FE.
    let error = raw_call(&app, "CreateTask", vec![0x0a, 2, 0xff, 0xfe])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("title"), "{error:?}");
    // The well-formed twin works: the codec is not simply refusing everything.
    let ok = raw_call(&app, "CreateTask", vec![0x0a, 2, b'o', b'k']).await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// A message over the 4 MiB limit: OUT_OF_RANGE, and the next call on the same connection works.
#[tokio::test]
async fn an_oversize_message_is_out_of_range() {
    let (_stack, app) = app().await;
    let mut title = vec![0x0a];
    let size: usize = 5 * 1024 * 1024;
    prost::encoding::encode_varint(size as u64, &mut title);
    title.extend(std::iter::repeat_n(b'a', size));
    let error = raw_call(&app, "CreateTask", title).await.unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    let mut client = app.client().await;
    create(&mut client, "after the oversize one", None).await;
}

/// A 100 KB header fails its own call with RESOURCE_EXHAUSTED, naming the limit, and only that
/// call: 32 clients busy on the same connection all succeed.
#[tokio::test]
async fn an_oversize_header_fails_only_its_own_call() {
    const ROUNDS: usize = 20;
    let (_stack, app) = app().await;
    let channel: Channel = app.channel().await;
    let done = Arc::new(AtomicUsize::new(0));
    let healthy: Vec<_> = (0..32)
        .map(|n| {
            let mut client = pb::task_service_client::TaskServiceClient::with_interceptor(
                channel.clone(),
                crate::common::WithHeader("x-api-key", app.api_key.clone()),
            );
            let done = done.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for round in 0..ROUNDS {
                    let created = client
                        .create_task(pb::CreateTaskRequest {
                            title: format!("healthy {n}.{round}"),
                            ..Default::default()
                        })
                        .await;
                    if let Err(error) = created {
                        failed.push(error);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                failed
            })
        })
        .collect();
    // Once the healthy calls are under way.
    while done.load(Ordering::SeqCst) < 32 {
        // Poll interval: waits for the fact that the healthy calls are under way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut oversize = pb::task_service_client::TaskServiceClient::new(channel.clone());
    let mut request = Request::new(pb::ListTasksRequest::default());
    request.metadata_mut().insert(
        "x-padding",
        MetadataValue::try_from("p".repeat(100 * 1024)).unwrap(),
    );
    let refused = tokio::time::timeout(Duration::from_secs(10), oversize.list_tasks(request))
        .await
        .expect("answered")
        .unwrap_err();
    let finished_by_then = done.load(Ordering::SeqCst);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("65536"), "{refused:?}");
    assert!(refused.message().contains("x-padding"), "{refused:?}");
    assert!(
        finished_by_then < 32 * ROUNDS,
        "the healthy calls were still running when the oversize one was refused"
    );
    let mut failed = Vec::new();
    for task in healthy {
        failed.extend(task.await.unwrap());
    }
    assert!(failed.is_empty(), "healthy calls failed: {failed:?}");
    assert_eq!(done.load(Ordering::SeqCst), 32 * ROUNDS);
}

/// An 8 KB id is refused INVALID_ARGUMENT with a message and details that repeat only the
/// start of it, so the answer fits any client's trailer limit.
#[tokio::test]
async fn echoed_input_is_cut_short() {
    let (_stack, app) = app().await;
    let mut client = app.client().await;
    let long_id = "x/".repeat(4 * 1024);
    let error = client
        .get_task(pb::GetTaskRequest {
            id: long_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().len() < 400, "{}", error.message());
    assert!(
        error.message().contains("(8192 characters)"),
        "{}",
        error.message()
    );
    let details = error.get_error_details();
    let violation = &details.bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "id");
    assert!(violation.description.len() < 400, "{violation:?}");
}

/// Titles with control characters, or nothing visible, are refused naming the field.
#[tokio::test]
async fn control_characters_in_titles_are_refused() {
    let (_stack, app) = app().await;
    let mut client = app.client().await;
    for title in ["a\u{0}b", "\u{1b}[31mred", "\u{200b}\u{200b}", "tab\there"] {
        let error = client
            .create_task(pb::CreateTaskRequest {
                title: title.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{title:?}: {error:?}");
        let details = error.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "title"
        );
    }
    // Line breaks and tabs are fine in a description.
    client
        .create_task(pb::CreateTaskRequest {
            title: "Visible".into(),
            description: Some("line one\n\tline two".into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// INTERNAL is for bugs and broken data: a stored document that is not a task gives a generic
/// message with the trace id (the caller's own, from traceparent); the cause, which would show
/// state keys and stored bytes, is only logged.
#[tokio::test]
async fn internal_errors_say_nothing_but_the_trace_id() {
    let stack = Stack::builder()
        .components(devstack::ComponentSet::Redis)
        .start()
        .await
        .unwrap();
    let app = TestApp::task_api(&stack, Options::default()).await;
    stack
        .redis()
        .unwrap()
        .cli(&[
            "HSET",
            "task-api||task-broken",
            "data",
            "{\"secret-looking\": true",
            "version",
            "1",
        ])
        .unwrap();
    let mut client = app.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(pb::GetTaskRequest {
        id: "broken".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b7-01")).unwrap(),
    );
    let error = client.get_task(request).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    assert_eq!(
        error.message(),
        format!("internal error; its cause is logged under trace id {trace_id}")
    );
}
