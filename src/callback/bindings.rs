//! Input bindings: task-api uses none. The list is empty, so daprd sends no binding events; one
//! that arrives anyway is refused by name.

use dapr::dapr::proto::runtime::v1::{BindingEventRequest, ListInputBindingsResponse};
use tonic::Status;

pub fn list() -> ListInputBindingsResponse {
    ListInputBindingsResponse {
        bindings: Vec::new(),
    }
}

pub fn on_event(request: &BindingEventRequest) -> Status {
    Status::not_found(format!(
        "task-api has no input binding named {}",
        crate::domain::text::echo(&request.name)
    ))
}
