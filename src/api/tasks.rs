//! `task.v1.TaskService` over the task use cases.

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    proto::task::v1::{self as pb, task_service_server::TaskService},
    service::{Tasks, ports::Ports},
};

pub(crate) struct TaskApi<P: Ports> {
    tasks: Tasks<P>,
}

impl<P: Ports> Clone for TaskApi<P> {
    fn clone(&self) -> Self {
        Self {
            tasks: self.tasks.clone(),
        }
    }
}

impl<P: Ports> TaskApi<P> {
    pub(crate) fn new(tasks: Tasks<P>) -> Self {
        Self { tasks }
    }
}

fn invalid(violations: crate::domain::Violations) -> Status {
    super::status::invalid(&violations)
}

#[tonic::async_trait]
impl<P: Ports> TaskService for TaskApi<P> {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let (new, request_id) = convert::new_task(request.get_ref()).map_err(invalid)?;
        let task = self.tasks.create(new, request_id.as_ref()).await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let id = convert::task_id(&request.get_ref().id).map_err(invalid)?;
        let task = self.tasks.get(&id).await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let query = convert::list_query(request.get_ref()).map_err(invalid)?;
        let page = self.tasks.list(&query).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.tasks.iter().map(convert::task).collect(),
            next_page_token: page.next_page_token.map(|t| t.encode()).unwrap_or_default(),
        }))
    }

    async fn update_task(
        &self,
        request: Request<pb::UpdateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let (id, changes) = convert::changes(&request).map_err(invalid)?;
        let task = self
            .tasks
            .update(&id, &changes, convert::etag(&request.etag))
            .await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        let id = convert::task_id(&request.id).map_err(invalid)?;
        let status = convert::target_status(request.status).map_err(invalid)?;
        let task = self
            .tasks
            .change_status(&id, status, convert::etag(&request.etag))
            .await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn delete_task(
        &self,
        request: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        let request = request.into_inner();
        let id = convert::task_id(&request.id).map_err(invalid)?;
        self.tasks.delete(&id, convert::etag(&request.etag)).await?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }
}
