//! The requests a worker sends: task-api's TaskService calls, and the plain baseline: the calls
//! a simple Dapr app would make for each of them (read, ETag-guarded write, publish), sent
//! straight to task-api's daprd.
//!
//! The plain app keeps to keys under `bench-plain-` and publishes to the `bench-plain` topic of
//! the `pubsub` component, which nobody subscribes to, so task-api's data and event handling
//! are untouched. Its documents and events are built with task-api's own types and encoders
//! (the stored task record, the signed event JSON), so both sides move the same bytes.

use std::collections::HashMap;

use dapr::dapr::proto::{
    common::v1::{Etag, StateItem, StateOptions, state_options::StateConcurrency},
    runtime::v1::{
        DeleteStateRequest, GetBulkStateRequest, GetStateRequest, PublishEventRequest,
        SaveStateRequest, dapr_client::DaprClient,
    },
};
use task_api::{
    domain::{
        EventKey, NewTask, Nonce, Planned, Task, TaskChanges, TaskEventType, TaskId, TaskRecord,
        TaskStatus, time,
    },
    proto::task::v1::{self as pb, task_service_client::TaskServiceClient},
    stored::{read_task_document, task_document as encode, task_key},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::error::{CallError, Result, call_failed, failed, setup};

pub const STATE_STORE: &str = "statestore";
pub const PUBSUB: &str = "pubsub";
/// The topics task-api consumes, whose backlog the benchmark waits out between runs: the
/// outbox's two (component `outbox`) and task-events with its retry topic (component `pubsub`).
pub const TOPICS: [&str; 4] = [
    "task-events-outbox",
    "task-events-outbox-retry",
    "task-events",
    "task-events-retry",
];
/// The plain app's topic on `pubsub`: nobody subscribes to it.
const PLAIN_TOPIC: &str = "bench-plain";

pub const TITLE: &str = "Benchmark task";
pub const DESCRIPTION: &str = "Created by task-api-bench to measure the service.";
pub const PRIORITY: i32 = 3;
/// Tasks per list page in the mixed workload.
pub const LIST_PAGE_SIZE: usize = 20;
/// task-api reads with this bulk parallelism.
const BULK_PARALLELISM: i32 = 16;
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The lists an unfiltered ListTasks reads: one per status and priority.
const LISTS: usize = 15;

/// Sends one metadata entry (a credential) on every call.
#[derive(Clone)]
pub struct Credential {
    name: &'static str,
    value: MetadataValue<Ascii>,
}

impl Credential {
    /// `name: value`; the error names the credential.
    pub fn new(name: &'static str, value: &str) -> Result<Self> {
        let value = value
            .parse()
            .map_err(|_| setup(format!("the {name} is not valid gRPC metadata")))?;
        Ok(Self { name, value })
    }
}

impl Interceptor for Credential {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        request.metadata_mut().insert(self.name, self.value.clone());
        Ok(request)
    }
}

pub type TaskClient = TaskServiceClient<InterceptedService<Channel, Credential>>;

/// A TaskService client presenting task-api's API key.
pub fn task_client(channel: Channel, api_key: &str) -> Result<TaskClient> {
    Ok(TaskServiceClient::with_interceptor(
        channel,
        Credential::new("x-api-key", api_key)?,
    ))
}

/// The plain app found a task deleted that it was to change.
fn not_live() -> CallError {
    CallError::NotThere("the task was deleted".into())
}

/// A failed call, in one line of at most about 300 characters.
pub fn describe(status: &Status) -> String {
    let message = status.message();
    match message.char_indices().nth(300) {
        Some((cut, _)) => format!("{:?}: {}...", status.code(), &message[..cut]),
        None => format!("{:?}: {message}", status.code()),
    }
}

pub fn create_request() -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        title: TITLE.into(),
        description: Some(DESCRIPTION.into()),
        priority: Some(PRIORITY),
        request_id: String::new(),
        ..Default::default()
    }
}

/// CreateTask through task-api; the new task's id.
pub async fn create(client: &mut TaskClient) -> std::result::Result<String, CallError> {
    let task = client.create_task(create_request()).await?.into_inner();
    if task.id.is_empty() {
        return Err(CallError::Wrong(
            "CreateTask answered a task without an id".into(),
        ));
    }
    Ok(task.id)
}

pub async fn get(client: &mut TaskClient, id: &str) -> std::result::Result<(), CallError> {
    let task = client
        .get_task(pb::GetTaskRequest { id: id.to_string() })
        .await?
        .into_inner();
    if task.id != id {
        return Err(CallError::Wrong(format!(
            "GetTask({id}) answered task {:?}",
            task.id
        )));
    }
    Ok(())
}

/// A new title for UpdateTask: `n` differs per call, so every update is a real change.
pub fn edited_title(n: u64) -> String {
    format!("{TITLE}, edit {n}")
}

/// Changes a task's title (its lists stay the same). Without an ETag, as a caller that only
/// wants the change made.
pub async fn update(
    client: &mut TaskClient,
    id: &str,
    n: u64,
) -> std::result::Result<(), CallError> {
    let title = edited_title(n);
    let task = client
        .update_task(pb::UpdateTaskRequest {
            id: id.to_string(),
            title: Some(title.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    if task.title != title {
        return Err(CallError::Wrong(format!(
            "task {id} does not have its new title after UpdateTask"
        )));
    }
    Ok(())
}

/// Completes a pending task. Without an ETag, as a caller that only wants the task done.
pub async fn complete(client: &mut TaskClient, id: &str) -> std::result::Result<(), CallError> {
    let task = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: id.to_string(),
            status: pb::TaskStatus::Completed as i32,
            etag: String::new(),
        })
        .await?
        .into_inner();
    if task.status != pb::TaskStatus::Completed as i32 {
        return Err(CallError::Wrong(format!(
            "task {id} is not completed after UpdateTaskStatus"
        )));
    }
    Ok(())
}

pub async fn delete(client: &mut TaskClient, id: &str) -> std::result::Result<(), CallError> {
    client
        .delete_task(pb::DeleteTaskRequest {
            id: id.to_string(),
            etag: String::new(),
        })
        .await?;
    Ok(())
}

pub async fn list(client: &mut TaskClient) -> std::result::Result<(), CallError> {
    let page = client
        .list_tasks(pb::ListTasksRequest {
            status: pb::TaskStatus::Unspecified as i32,
            page_size: LIST_PAGE_SIZE as i32,
            page_token: String::new(),
            priority: None,
            overdue: false,
        })
        .await?
        .into_inner();
    if page.tasks.is_empty() {
        return Err(CallError::Wrong("ListTasks answered an empty page".into()));
    }
    Ok(())
}

/// A plain key read like a pooled task by GetTask.
pub fn plain_get_key(n: usize) -> String {
    format!("bench-plain-get-{n}")
}

/// A plain key changed like a task by UpdateTask and UpdateTaskStatus.
pub fn plain_task_key(n: usize) -> String {
    format!("bench-plain-task-{n}")
}

/// The key of a task the plain app created.
fn plain_new_key(id: &TaskId) -> String {
    format!("bench-plain-new-{id}")
}

pub fn new_task() -> Result<NewTask> {
    NewTask::parse(TITLE, Some(DESCRIPTION), Some(i64::from(PRIORITY)))
        .map_err(failed("the benchmark's task is invalid"))
}

/// A pending task as CreateTask would make it.
fn pending_task(template: &NewTask) -> Task {
    Task::create(TaskId::generate(), template.clone(), time::now())
}

/// The stored record of a new task, byte for byte what CreateTask writes.
fn new_record(task: Task) -> TaskRecord {
    TaskRecord::create(task, Nonce::random()).record
}

/// The record a plain app stores: the task alone, with no changes waiting for their events (it
/// has no outbox), so a key changed again and again keeps its size.
fn settled(record: TaskRecord) -> TaskRecord {
    TaskRecord {
        unpublished: Default::default(),
        ..record
    }
}

fn options(concurrency: StateConcurrency) -> Option<StateOptions> {
    Some(StateOptions {
        concurrency: concurrency as i32,
        consistency: 0,
    })
}

fn state_item(key: String, value: Vec<u8>, etag: Option<String>) -> StateItem {
    let concurrency = if etag.is_some() {
        StateConcurrency::ConcurrencyFirstWrite
    } else {
        StateConcurrency::ConcurrencyLastWrite
    };
    StateItem {
        key,
        value,
        etag: etag.map(|value| Etag { value }),
        metadata: HashMap::new(),
        options: options(concurrency),
    }
}

/// The plain app: a client of task-api's daprd making a simple Dapr app's calls.
#[derive(Clone)]
pub struct Plain {
    dapr: DaprClient<Channel>,
    template: NewTask,
    key: EventKey,
}

type CallResult = std::result::Result<(), CallError>;

impl Plain {
    pub fn new(channel: Channel, template: NewTask) -> Self {
        let dapr = DaprClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Its own key: the signature costs the same, whoever holds the key.
        let key = EventKey::derive(b"task-api-bench plain app");
        Self {
            dapr,
            template,
            key,
        }
    }

    async fn get_state(&mut self, key: &str) -> std::result::Result<(Vec<u8>, String), CallError> {
        let response = self
            .dapr
            .get_state(GetStateRequest {
                store_name: STATE_STORE.into(),
                key: key.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((response.data, response.etag))
    }

    /// The stored task under `key` and its ETag.
    async fn read(&mut self, key: &str) -> std::result::Result<(TaskRecord, String), CallError> {
        let (data, etag) = self.get_state(key).await?;
        if data.is_empty() {
            return Err(CallError::NotThere(format!("{key} is missing")));
        }
        let record = read_task_document(key, &data).map_err(|source| CallError::Unreadable {
            key: key.to_string(),
            source,
        })?;
        Ok((record, etag))
    }

    async fn save(&mut self, items: Vec<StateItem>) -> std::result::Result<(), Status> {
        self.dapr
            .save_state(SaveStateRequest {
                store_name: STATE_STORE.into(),
                states: items,
            })
            .await
            .map(|_| ())
    }

    async fn get_bulk(&mut self, keys: Vec<String>) -> std::result::Result<usize, CallError> {
        let response = self
            .dapr
            .get_bulk_state(GetBulkStateRequest {
                store_name: STATE_STORE.into(),
                keys,
                parallelism: BULK_PARALLELISM,
                metadata: HashMap::new(),
            })
            .await?
            .into_inner();
        if let Some(failed) = response.items.iter().find(|item| !item.error.is_empty()) {
            return Err(CallError::Wrong(format!(
                "reading {}: {}",
                failed.key, failed.error
            )));
        }
        Ok(response.items.iter().filter(|i| !i.data.is_empty()).count())
    }

    /// Publishes a change's event, signed, as task-api publishes it on `task-events`.
    async fn publish(&mut self, planned: &Planned) -> CallResult {
        let mut event = planned.event.clone();
        event.signature = Some(self.key.sign(&event));
        self.dapr
            .publish_event(PublishEventRequest {
                pubsub_name: PUBSUB.into(),
                topic: PLAIN_TOPIC.into(),
                data: event.to_json(),
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await?;
        Ok(())
    }

    /// CreateTask: a first-write save of the new task, then its event. The new key.
    pub async fn create(&mut self) -> std::result::Result<String, CallError> {
        let template = self.template.clone();
        self.create_task(template).await.map(|(key, _)| key)
    }

    /// CreateTask of `new`: the new key and the record written.
    pub async fn create_task(
        &mut self,
        new: NewTask,
    ) -> std::result::Result<(String, TaskRecord), CallError> {
        let planned = TaskRecord::create(
            Task::create(TaskId::generate(), new, time::now()),
            Nonce::random(),
        );
        let key = plain_new_key(planned.record.id());
        let record = settled(planned.record.clone());
        let item = StateItem {
            options: options(StateConcurrency::ConcurrencyFirstWrite),
            ..state_item(key.clone(), encode(&record), None)
        };
        self.save(vec![item]).await?;
        self.publish(&planned).await?;
        Ok((key, record))
    }

    /// GetTask: one get.
    pub async fn get(&mut self, n: usize) -> CallResult {
        let key = plain_get_key(n);
        let (data, _) = self.get_state(&key).await?;
        if data.is_empty() {
            return Err(CallError::Wrong(format!("{key} is missing")));
        }
        Ok(())
    }

    /// GetTask as an app answers it: one get, decoded.
    pub async fn get_task(&mut self, key: &str) -> std::result::Result<TaskRecord, CallError> {
        self.read(key).await.map(|(record, _)| record)
    }

    /// Writes `planned` over the record read with `etag`, then publishes its event; the record
    /// written.
    async fn write_and_publish(
        &mut self,
        key: &str,
        planned: Planned,
        etag: String,
    ) -> std::result::Result<TaskRecord, CallError> {
        let record = settled(planned.record.clone());
        self.save(vec![state_item(
            key.to_string(),
            encode(&record),
            Some(etag),
        )])
        .await?;
        self.publish(&planned).await?;
        Ok(record)
    }

    /// UpdateTask (a new title): get, ETag-guarded save, publish.
    pub async fn update(&mut self, key: &str, n: u64) -> CallResult {
        self.retitle(key, &edited_title(n)).await.map(drop)
    }

    /// UpdateTask to `title`: get, ETag-guarded save, publish; the record written.
    pub async fn retitle(
        &mut self,
        key: &str,
        title: &str,
    ) -> std::result::Result<TaskRecord, CallError> {
        let (record, etag) = self.read(key).await?;
        let mut task = record.live().cloned().ok_or_else(not_live)?;
        let changes =
            TaskChanges::parse(Some(title), None, None).map_err(|source| CallError::Invalid {
                what: "the new title",
                source,
            })?;
        task.apply(&changes, time::now())
            .map_err(|source| CallError::Invalid {
                what: "the change",
                source,
            })?;
        let planned = record
            .update(task, TaskEventType::Updated, Nonce::random())
            .ok_or_else(not_live)?;
        self.write_and_publish(key, planned, etag).await
    }

    /// UpdateTaskStatus to completed: get, ETag-guarded save, publish. (A key changed before
    /// is written as completed again: the plain app does not look.)
    pub async fn complete(&mut self, key: &str) -> CallResult {
        self.set_status(key, TaskStatus::Completed).await.map(drop)
    }

    /// UpdateTaskStatus to `status`: get, ETag-guarded save, publish; the record written.
    pub async fn set_status(
        &mut self,
        key: &str,
        status: TaskStatus,
    ) -> std::result::Result<TaskRecord, CallError> {
        let (record, etag) = self.read(key).await?;
        let mut task = record.live().cloned().ok_or_else(not_live)?;
        task.set_status(status, time::now());
        let planned = record
            .update(task, TaskEventType::StatusChanged(status), Nonce::random())
            .ok_or_else(not_live)?;
        self.write_and_publish(key, planned, etag).await
    }

    /// DeleteTask: get, ETag-guarded delete, publish.
    pub async fn delete(&mut self, key: &str) -> CallResult {
        let (record, etag) = self.read(key).await?;
        let planned = record
            .delete(time::now(), Nonce::random())
            .ok_or_else(not_live)?;
        self.dapr
            .delete_state(DeleteStateRequest {
                store_name: STATE_STORE.into(),
                key: key.to_string(),
                etag: Some(Etag { value: etag }),
                options: options(StateConcurrency::ConcurrencyFirstWrite),
                metadata: HashMap::new(),
            })
            .await?;
        self.publish(&planned).await
    }

    /// ListTasks' first page as a plain app without an index reads it: the 15 lists' first
    /// leaves in one bulk read, then the page's tasks in another.
    pub async fn list(&mut self, first: usize, pool: usize) -> CallResult {
        self.get_bulk(
            (0..LISTS)
                .map(|n| format!("bench-plain-list-{n}-head"))
                .collect(),
        )
        .await?;
        let keys = (0..LIST_PAGE_SIZE)
            .map(|i| plain_get_key((first + i) % pool.max(1)))
            .collect();
        let found = self.get_bulk(keys).await?;
        if found == 0 {
            return Err(CallError::Wrong("the plain app's page is empty".into()));
        }
        Ok(())
    }

    /// Writes `count` task documents under the keys GetTask, UpdateTask and UpdateTaskStatus
    /// read, in batches, and publishes one event so that the topic exists before the first
    /// measurement (a Kafka topic is created by its first message).
    pub async fn seed(&mut self, count: usize) -> Result<()> {
        let mut items = Vec::new();
        for n in 0..count {
            let document = encode(&settled(new_record(pending_task(&self.template))));
            items.push(state_item(plain_get_key(n), document.clone(), None));
            items.push(state_item(plain_task_key(n), document, None));
            if items.len() >= 200 || n + 1 == count {
                self.save(std::mem::take(&mut items))
                    .await
                    .map_err(call_failed("seeding the plain app's keys"))?;
            }
        }
        let planned = TaskRecord::create(pending_task(&self.template), Nonce::random());
        self.publish(&planned)
            .await
            .map_err(call_failed("publishing the plain app's first event"))
    }

    /// Writes `count` new tasks as the plain app's CreateTask stores them, for DeleteTask; their
    /// keys.
    pub async fn seed_new(&mut self, count: usize) -> Result<Vec<String>> {
        let mut keys = Vec::with_capacity(count);
        let mut items = Vec::new();
        for n in 0..count {
            let record = settled(new_record(pending_task(&self.template)));
            let key = plain_new_key(record.id());
            items.push(state_item(key.clone(), encode(&record), None));
            keys.push(key);
            if items.len() >= 500 || n + 1 == count {
                self.save(std::mem::take(&mut items))
                    .await
                    .map_err(call_failed("writing the plain app's tasks"))?;
            }
        }
        Ok(keys)
    }

    /// Writes `count` pending tasks under task-api's keys (`task-<id>`), as CreateTask stores
    /// them, in batches; their ids.
    pub async fn write_pending_tasks(&mut self, count: usize) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(count);
        let mut items = Vec::new();
        for n in 0..count {
            let record = new_record(pending_task(&self.template));
            items.push(state_item(task_key(record.id()), encode(&record), None));
            ids.push(record.id().to_string());
            if items.len() >= 500 || n + 1 == count {
                self.save(std::mem::take(&mut items))
                    .await
                    .map_err(call_failed("writing pending tasks"))?;
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_task_is_valid() {
        assert!(new_task().is_ok());
    }
}
