//! The requests a worker sends: task-api's TaskService calls, and the ceiling, which makes the
//! same Dapr calls task-api makes for each of them straight to task-api's daprd.
//!
//! The ceiling keeps to keys under `bench-ceiling-` and publishes to the `bench-ceiling` topic,
//! which nobody subscribes to, so task-api's data and event handling are untouched. Its payloads
//! are built with task-api's own types and encoders (the stored task record, the event JSON), so
//! both sides move the same bytes.

use std::collections::HashMap;

use dapr::dapr::proto::{
    common::v1::{Etag, StateItem, StateOptions, state_options::StateConcurrency},
    runtime::v1::{
        GetBulkStateRequest, GetStateRequest, PublishEventRequest, SaveStateRequest,
        dapr_client::DaprClient,
    },
};
use task_api::{
    domain::{NewTask, Nonce, Task, TaskEventType, TaskId, TaskRecord, TaskStatus, time},
    proto::task::v1::{self as pb, task_service_client::TaskServiceClient},
    sidecar::tasks::{encode, task_key},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::error::{Result, setup};

pub const STATE_STORE: &str = "statestore";
pub const PUBSUB: &str = "pubsub";
/// The topics task-api consumes, whose backlog the benchmark waits out between runs.
pub const TOPICS: [&str; 3] = ["task-events-outbox", "task-events", "task-events-retry"];
const CEILING_TOPIC: &str = "bench-ceiling";

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
pub async fn create(client: &mut TaskClient) -> std::result::Result<String, String> {
    let task = client
        .create_task(create_request())
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    if task.id.is_empty() {
        return Err("CreateTask answered a task without an id".into());
    }
    Ok(task.id)
}

pub async fn get(client: &mut TaskClient, id: &str) -> std::result::Result<(), String> {
    let task = client
        .get_task(pb::GetTaskRequest { id: id.to_string() })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    if task.id != id {
        return Err(format!("GetTask({id}) answered task {:?}", task.id));
    }
    Ok(())
}

/// Completes a pending task. Without an ETag, as a caller that only wants the task done.
pub async fn complete(client: &mut TaskClient, id: &str) -> std::result::Result<(), String> {
    let task = client
        .update_task_status(pb::UpdateTaskStatusRequest {
            id: id.to_string(),
            status: pb::TaskStatus::Completed as i32,
            etag: String::new(),
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    if task.status != pb::TaskStatus::Completed as i32 {
        return Err(format!("task {id} is not completed after UpdateTaskStatus"));
    }
    Ok(())
}

pub async fn delete(client: &mut TaskClient, id: &str) -> std::result::Result<(), String> {
    client
        .delete_task(pb::DeleteTaskRequest {
            id: id.to_string(),
            etag: String::new(),
        })
        .await
        .map_err(|s| describe(&s))?;
    Ok(())
}

pub async fn list(client: &mut TaskClient) -> std::result::Result<(), String> {
    let page = client
        .list_tasks(pb::ListTasksRequest {
            status: pb::TaskStatus::Unspecified as i32,
            page_size: LIST_PAGE_SIZE as i32,
            page_token: String::new(),
            priority: None,
            overdue: false,
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    if page.tasks.is_empty() {
        return Err("ListTasks answered an empty page".into());
    }
    Ok(())
}

/// A ceiling key read like a pooled task by GetTask.
pub fn ceiling_get_key(n: usize) -> String {
    format!("bench-ceiling-get-{n}")
}

/// A ceiling key changed like a task by UpdateTaskStatus.
pub fn ceiling_update_key(n: usize) -> String {
    format!("bench-ceiling-update-{n}")
}

pub fn new_task() -> Result<NewTask> {
    NewTask::parse(TITLE, Some(DESCRIPTION), Some(i64::from(PRIORITY)))
        .map_err(|v| setup(format!("the benchmark's task is invalid: {v}")))
}

/// A pending task as CreateTask would make it.
fn pending_task(template: &NewTask) -> Task {
    Task::create(TaskId::generate(), template.clone(), time::now())
}

/// The stored record of a new task, byte for byte what CreateTask writes.
fn new_record(task: Task) -> TaskRecord {
    TaskRecord::create(task, Nonce::random()).record
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
        options: Some(StateOptions {
            concurrency: concurrency as i32,
            consistency: 0,
        }),
    }
}

/// The ceiling's client of task-api's daprd.
#[derive(Clone)]
pub struct Ceiling {
    dapr: DaprClient<Channel>,
    template: NewTask,
}

type CallResult = std::result::Result<(), String>;

impl Ceiling {
    pub fn new(channel: Channel, template: NewTask) -> Self {
        let dapr = DaprClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { dapr, template }
    }

    async fn get_state(&mut self, key: &str) -> std::result::Result<(Vec<u8>, String), String> {
        let response = self
            .dapr
            .get_state(GetStateRequest {
                store_name: STATE_STORE.into(),
                key: key.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        Ok((response.data, response.etag))
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

    async fn get_bulk(&mut self, keys: Vec<String>) -> std::result::Result<usize, String> {
        let response = self
            .dapr
            .get_bulk_state(GetBulkStateRequest {
                store_name: STATE_STORE.into(),
                keys,
                parallelism: BULK_PARALLELISM,
                metadata: HashMap::new(),
            })
            .await
            .map_err(|s| describe(&s))?
            .into_inner();
        if let Some(failed) = response.items.iter().find(|item| !item.error.is_empty()) {
            return Err(format!("reading {}: {}", failed.key, failed.error));
        }
        Ok(response.items.iter().filter(|i| !i.data.is_empty()).count())
    }

    async fn publish(&mut self, data: Vec<u8>) -> CallResult {
        self.dapr
            .publish_event(PublishEventRequest {
                pubsub_name: PUBSUB.into(),
                topic: CEILING_TOPIC.into(),
                data,
                data_content_type: "application/json".into(),
                metadata: HashMap::new(),
            })
            .await
            .map_err(|s| describe(&s))?;
        Ok(())
    }

    /// CreateTask's calls on its own path: stage the event, write the task. (Its list entry
    /// is written in batches shared by concurrent creates: not counted here.)
    pub async fn create(&mut self) -> CallResult {
        let planned = TaskRecord::create(pending_task(&self.template), Nonce::random());
        self.publish(planned.event.to_json()).await?;
        let key = format!("bench-ceiling-task-{}", planned.record.id());
        self.save(vec![state_item(key, encode(&planned.record), None)])
            .await
            .map_err(|s| describe(&s))
    }

    /// GetTask's one call.
    pub async fn get(&mut self, n: usize) -> CallResult {
        let key = ceiling_get_key(n);
        let (data, _) = self.get_state(&key).await?;
        if data.is_empty() {
            return Err(format!("{key} is missing"));
        }
        Ok(())
    }

    /// UpdateTaskStatus's calls on its own path: read, stage the event, ETag-guarded write.
    pub async fn complete(&mut self, n: usize) -> CallResult {
        let key = ceiling_update_key(n);
        let (data, etag) = self.get_state(&key).await?;
        if data.is_empty() {
            return Err(format!("{key} is missing"));
        }
        let record = new_record(pending_task(&self.template));
        let mut task = record.live().cloned().ok_or("not live")?;
        task.set_status(TaskStatus::Completed, time::now());
        let planned = record
            .update(
                task,
                TaskEventType::StatusChanged(TaskStatus::Completed),
                Nonce::random(),
            )
            .ok_or("not live")?;
        self.publish(planned.event.to_json()).await?;
        self.save(vec![state_item(key, encode(&planned.record), Some(etag))])
            .await
            .map_err(|s| describe(&s))
    }

    /// ListTasks' calls for a first page: the head leaf of each of the 15 lists in one bulk
    /// read, then the page's tasks in another.
    pub async fn list(&mut self, first: usize, pool: usize) -> CallResult {
        self.get_bulk(
            (0..LISTS)
                .map(|n| format!("bench-ceiling-list-{n}-head"))
                .collect(),
        )
        .await?;
        let keys = (0..LIST_PAGE_SIZE)
            .map(|i| ceiling_get_key((first + i) % pool.max(1)))
            .collect();
        let found = self.get_bulk(keys).await?;
        if found == 0 {
            return Err("the ceiling's page is empty".into());
        }
        Ok(())
    }

    /// Writes `count` task documents under the get and update keys the ceiling reads and
    /// changes, in batches.
    pub async fn seed(&mut self, count: usize) -> Result<()> {
        let mut items = Vec::new();
        for n in 0..count {
            let document = encode(&new_record(pending_task(&self.template)));
            items.push(state_item(ceiling_get_key(n), document.clone(), None));
            items.push(state_item(ceiling_update_key(n), document, None));
            if items.len() >= 200 || n + 1 == count {
                self.save(std::mem::take(&mut items))
                    .await
                    .map_err(|s| setup(format!("seeding the ceiling's keys: {}", describe(&s))))?;
            }
        }
        Ok(())
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
                    .map_err(|s| setup(format!("writing pending tasks: {}", describe(&s))))?;
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
