//! The simple app: TaskService as a Dapr user would first write it, each call the plain calls
//! ([`Plain`]) made through the app's own daprd, answered with task-api's messages. It keeps no
//! outbox, no list and no ledger, and receives no events; so what it costs beyond the same calls
//! sent straight to a sidecar is an app in between, and nothing else.
//!
//! Its task ids are its state keys. It takes the calls the benchmark makes (create, get, update
//! a title, change a status, delete) and refuses ListTasks: a key-value store has no listing of
//! its own, and building one is what task-api's lists are for.

use std::{net::SocketAddr, process::ExitCode};

use task_api::{
    domain::{NewTask, TaskRecord, TaskStatus},
    proto::task::v1::{
        self as pb,
        task_service_server::{TaskService, TaskServiceServer},
    },
    record_message,
};
use tonic::{Request, Response, Status, transport::Server};

use crate::{
    error::{CallError, Result, failed, setup},
    ops::{self, Plain},
    system,
};

/// The app id its sidecar runs under.
pub const APP_ID: &str = "simple-app";

/// Serves TaskService and gRPC health on `APP_HOST:APP_PORT` until SIGTERM or Ctrl-C, calling
/// the sidecar on `DAPR_GRPC_PORT`.
pub async fn main() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simple-app: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<()> {
    let host = std::env::var("APP_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = port_from_env("APP_PORT")?;
    let sidecar = port_from_env("DAPR_GRPC_PORT")?;
    let address: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| setup(format!("APP_HOST {host:?} is not an IP address")))?;
    let channel = system::lazy_channel(sidecar, "the simple app's daprd")?;
    let app = SimpleApp {
        plain: Plain::new(channel, ops::new_task()?),
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<TaskServiceServer<SimpleApp>>().await;
    Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(TaskServiceServer::new(app))
        .serve_with_shutdown(address, stopped())
        .await
        .map_err(failed("the simple app's server failed"))
}

fn port_from_env(name: &str) -> Result<u16> {
    let text = std::env::var(name).map_err(|_| setup(format!("{name} is not set")))?;
    text.parse()
        .map_err(|_| setup(format!("{name} must be a port number, got {text:?}")))
}

/// Resolves on SIGTERM (how the benchmark stops its apps) or Ctrl-C.
async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

struct SimpleApp {
    plain: Plain,
}

impl SimpleApp {
    /// A client of its sidecar for one call (clones share the connection).
    fn plain(&self) -> Plain {
        self.plain.clone()
    }
}

/// The answer for a record written or read under `key`: task-api's message, with the key as
/// the task's id.
fn answer(key: String, record: &TaskRecord) -> std::result::Result<Response<pb::Task>, Status> {
    let mut task = record_message(record)
        .ok_or_else(|| Status::not_found(format!("task {key} was deleted")))?;
    task.id = key;
    Ok(Response::new(task))
}

fn status_of(error: CallError) -> Status {
    match error {
        CallError::Status(status) => status,
        CallError::NotThere(what) => Status::not_found(what),
        other => Status::internal(other.to_string()),
    }
}

fn invalid(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl TaskService for SimpleApp {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> std::result::Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let new = NewTask::parse(
            &request.title,
            request.description.as_deref(),
            request.priority.map(i64::from),
        )
        .map_err(invalid)?;
        let (key, record) = self.plain().create_task(new).await.map_err(status_of)?;
        answer(key, &record)
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> std::result::Result<Response<pb::Task>, Status> {
        let key = request.into_inner().id;
        let record = self.plain().get_task(&key).await.map_err(status_of)?;
        answer(key, &record)
    }

    async fn list_tasks(
        &self,
        _request: Request<pb::ListTasksRequest>,
    ) -> std::result::Result<Response<pb::ListTasksResponse>, Status> {
        Err(Status::unimplemented(
            "the simple app keeps no lists: its state store has no listing of its own",
        ))
    }

    async fn update_task(
        &self,
        request: Request<pb::UpdateTaskRequest>,
    ) -> std::result::Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let title = request
            .title
            .ok_or_else(|| Status::invalid_argument("the simple app changes titles only"))?;
        let record = self
            .plain()
            .retitle(&request.id, &title)
            .await
            .map_err(status_of)?;
        answer(request.id, &record)
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> std::result::Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let status = match pb::TaskStatus::try_from(request.status) {
            Ok(pb::TaskStatus::Pending) => TaskStatus::Pending,
            Ok(pb::TaskStatus::InProgress) => TaskStatus::InProgress,
            Ok(pb::TaskStatus::Completed) => TaskStatus::Completed,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "{} is not a status a task can be given",
                    request.status
                )));
            }
        };
        let record = self
            .plain()
            .set_status(&request.id, status)
            .await
            .map_err(status_of)?;
        answer(request.id, &record)
    }

    async fn delete_task(
        &self,
        request: Request<pb::DeleteTaskRequest>,
    ) -> std::result::Result<Response<pb::DeleteTaskResponse>, Status> {
        let key = request.into_inner().id;
        self.plain().delete(&key).await.map_err(status_of)?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use task_api::domain::{Nonce, Task, TaskId, time};

    use super::*;

    #[test]
    fn it_answers_with_its_key_and_refuses_what_is_not_there() {
        let task = Task::create(TaskId::generate(), ops::new_task().unwrap(), time::now());
        let created = TaskRecord::create(task, Nonce::random()).record;
        let answered = answer("bench-plain-task-7".into(), &created).unwrap();
        assert_eq!(answered.get_ref().id, "bench-plain-task-7");
        assert_eq!(answered.get_ref().title, ops::TITLE);
        let deleted = created.delete(time::now(), Nonce::random()).unwrap().record;
        let refused = answer("bench-plain-task-7".into(), &deleted).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        let missing = status_of(CallError::NotThere("bench-plain-task-8 is missing".into()));
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert_eq!(
            status_of(CallError::Wrong("odd".into())).code(),
            tonic::Code::Internal
        );
    }
}
