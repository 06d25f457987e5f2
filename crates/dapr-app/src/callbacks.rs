//! The three tonic services over one [`App`].

use std::sync::Arc;

use dapr::dapr::proto::{
    common::v1::{InvokeRequest, InvokeResponse},
    runtime::v1::{
        self as rt, app_callback_alpha_server::AppCallbackAlpha,
        app_callback_alpha_server::AppCallbackAlphaServer,
        app_callback_health_check_server::AppCallbackHealthCheck,
        app_callback_health_check_server::AppCallbackHealthCheckServer,
        app_callback_server::AppCallback, app_callback_server::AppCallbackServer,
        topic_event_response::TopicEventResponseStatus,
    },
};
use tonic::{Request, Response, Status, service::Routes};

use crate::{App, Invocation, event::bulk_entries};

/// `AppCallback`, `AppCallbackAlpha` and `AppCallbackHealthCheck` for an [`App`].
pub struct Callbacks<A>(Arc<A>);

impl<A> Clone for Callbacks<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<A: App> Callbacks<A> {
    /// The callbacks of `app`.
    pub fn new(app: A) -> Self {
        Self(Arc::new(app))
    }

    /// The app the callbacks call.
    pub fn app(&self) -> &A {
        &self.0
    }

    /// The three services, as routes of their own.
    pub fn into_routes(self) -> Routes {
        self.add_to(Routes::default())
    }

    /// `routes` with the three services added.
    pub fn add_to(self, routes: Routes) -> Routes {
        routes
            .add_service(AppCallbackServer::new(self.clone()))
            .add_service(AppCallbackAlphaServer::new(self.clone()))
            .add_service(AppCallbackHealthCheckServer::new(self))
    }

    /// The entries handed to the app together, answered by entry id (daprd redelivers an entry
    /// left without an answer, so a missing status is answered RETRY).
    async fn bulk(&self, request: rt::TopicEventBulkRequest) -> rt::TopicEventBulkResponse {
        let (entry_ids, events): (Vec<String>, Vec<_>) = bulk_entries(request).unzip();
        let mut statuses = self.0.on_topic_events(events).await.into_iter();
        let statuses = entry_ids
            .into_iter()
            .map(|entry_id| rt::TopicEventBulkResponseEntry {
                entry_id,
                status: TopicEventResponseStatus::from(
                    statuses.next().unwrap_or(crate::EventStatus::Retry),
                ) as i32,
            })
            .collect();
        rt::TopicEventBulkResponse { statuses }
    }
}

/// The three services, as routes of their own, so that [`serve`](crate::serve) takes the
/// callbacks as they are.
impl<A: App> From<Callbacks<A>> for Routes {
    fn from(callbacks: Callbacks<A>) -> Self {
        callbacks.into_routes()
    }
}

#[tonic::async_trait]
impl<A: App> AppCallback for Callbacks<A> {
    async fn on_invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let reply = self
            .0
            .on_invoke(Invocation::from_request(metadata, request))
            .await?;
        Ok(Response::new(reply.into_response()))
    }

    async fn list_topic_subscriptions(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListTopicSubscriptionsResponse>, Status> {
        Ok(Response::new(rt::ListTopicSubscriptionsResponse {
            subscriptions: self.0.subscriptions().await,
        }))
    }

    async fn on_topic_event(
        &self,
        request: Request<rt::TopicEventRequest>,
    ) -> Result<Response<rt::TopicEventResponse>, Status> {
        let status = self.0.on_topic_event(request.into_inner().into()).await;
        Ok(Response::new(rt::TopicEventResponse {
            status: TopicEventResponseStatus::from(status) as i32,
        }))
    }

    async fn list_input_bindings(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::ListInputBindingsResponse>, Status> {
        Ok(Response::new(rt::ListInputBindingsResponse {
            bindings: self.0.input_bindings(),
        }))
    }

    async fn on_binding_event(
        &self,
        request: Request<rt::BindingEventRequest>,
    ) -> Result<Response<rt::BindingEventResponse>, Status> {
        self.0
            .on_binding_event(request.into_inner().into())
            .await
            .map(Response::new)
    }

    async fn on_bulk_topic_event(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        Ok(Response::new(self.bulk(request.into_inner()).await))
    }

    async fn on_job_event(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        self.0.on_job_event(request.into_inner().into()).await?;
        Ok(Response::new(rt::JobEventResponse {}))
    }
}

/// The Alpha1 twins, which older runtimes call: the same answers.
#[tonic::async_trait]
impl<A: App> AppCallbackAlpha for Callbacks<A> {
    async fn on_bulk_topic_event_alpha1(
        &self,
        request: Request<rt::TopicEventBulkRequest>,
    ) -> Result<Response<rt::TopicEventBulkResponse>, Status> {
        self.on_bulk_topic_event(request).await
    }

    async fn on_job_event_alpha1(
        &self,
        request: Request<rt::JobEventRequest>,
    ) -> Result<Response<rt::JobEventResponse>, Status> {
        self.on_job_event(request).await
    }
}

#[tonic::async_trait]
impl<A: App> AppCallbackHealthCheck for Callbacks<A> {
    async fn health_check(
        &self,
        _: Request<()>,
    ) -> Result<Response<rt::HealthCheckResponse>, Status> {
        self.0
            .health()
            .map(|()| Response::new(rt::HealthCheckResponse {}))
    }
}

#[cfg(test)]
mod tests {
    //! The callbacks called directly, as daprd would call them, without a sidecar.

    use std::sync::Mutex;

    use dapr::dapr::proto::runtime::v1::{
        TopicEventBulkRequestEntry, TopicEventCeRequest, topic_event_bulk_request_entry::Event,
    };
    use tonic::Code;

    use super::*;
    use crate::{EventStatus, Job, Reply, Subscription, TopicEvent, Verb};

    /// Answers by payload: "ok" SUCCESS, "later" RETRY, anything else DROP.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<TopicEvent>>,
    }

    impl App for Recorder {
        async fn subscriptions(&self) -> Vec<rt::TopicSubscription> {
            vec![Subscription::new("pubsub", "t").route("/t").build()]
        }
        async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
            let status = match event.data.as_slice() {
                b"ok" => EventStatus::Success,
                b"later" => EventStatus::Retry,
                _ => EventStatus::Drop,
            };
            self.seen.lock().unwrap().push(event);
            status
        }
        async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
            match (call.verb, call.segments().as_slice()) {
                (Some(Verb::Get), ["echo", what]) => Ok(Reply::json(what.as_bytes().to_vec())),
                _ => Err(Status::not_found("no route")),
            }
        }
        async fn on_job_event(&self, job: Job) -> Result<(), Status> {
            (job.name == "known")
                .then_some(())
                .ok_or_else(|| Status::internal("retry me"))
        }
    }

    /// An app that implements nothing.
    struct Silent;
    impl App for Silent {}

    fn entry(id: &str, data: &[u8]) -> TopicEventBulkRequestEntry {
        TopicEventBulkRequestEntry {
            entry_id: id.into(),
            event: Some(Event::CloudEvent(TopicEventCeRequest {
                id: format!("ce-{id}"),
                data: data.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn each_bulk_entry_gets_its_own_status_by_entry_id() {
        let callbacks = Callbacks::new(Recorder::default());
        let mut raw = entry("raw", b"ok");
        raw.event = Some(Event::Bytes(b"ok".to_vec()));
        let request = rt::TopicEventBulkRequest {
            topic: "t".into(),
            path: "/t".into(),
            entries: vec![
                entry("a", b"ok"),
                entry("b", b"later"),
                entry("c", b"poison"),
                raw,
                TopicEventBulkRequestEntry {
                    entry_id: "empty".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let answer = callbacks
            .on_bulk_topic_event(Request::new(request.clone()))
            .await
            .unwrap()
            .into_inner();
        let statuses: Vec<(String, i32)> = answer
            .statuses
            .into_iter()
            .map(|s| (s.entry_id, s.status))
            .collect();
        use TopicEventResponseStatus as S;
        assert_eq!(
            statuses,
            [
                ("a".into(), S::Success as i32),
                ("b".into(), S::Retry as i32),
                ("c".into(), S::Drop as i32),
                ("raw".into(), S::Success as i32),
                ("empty".into(), S::Drop as i32),
            ]
        );
        let seen = callbacks.app().seen.lock().unwrap().clone();
        assert_eq!(seen[0].id, "ce-a");
        assert_eq!(seen[0].path, "/t");
        assert_eq!(seen[3].id, "raw", "a raw entry is known by its entry id");
        // The Alpha1 twin answers the same.
        let alpha = callbacks
            .on_bulk_topic_event_alpha1(Request::new(request))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(alpha.statuses.len(), 5);
    }

    #[tokio::test]
    async fn single_events_and_subscriptions_reach_the_app() {
        let callbacks = Callbacks::new(Recorder::default());
        let event = rt::TopicEventRequest {
            id: "1".into(),
            data: b"later".to_vec(),
            ..Default::default()
        };
        let status = callbacks
            .on_topic_event(Request::new(event))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, TopicEventResponseStatus::Retry as i32);
        let subscriptions = callbacks
            .list_topic_subscriptions(Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(subscriptions.subscriptions[0].topic, "t");
    }

    #[tokio::test]
    async fn invocations_and_jobs_reach_the_app() {
        let callbacks = Callbacks::new(Recorder::default());
        let invoke = |method: &str, verb| InvokeRequest {
            method: method.into(),
            http_extension: Some(dapr::dapr::proto::common::v1::HttpExtension {
                verb: verb as i32,
                querystring: String::new(),
            }),
            ..Default::default()
        };
        use dapr::dapr::proto::common::v1::http_extension::Verb as V;
        let echoed = callbacks
            .on_invoke(Request::new(invoke("echo/hi", V::Get)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(echoed.data.unwrap().value, b"hi");
        assert_eq!(echoed.content_type, "application/json");
        let missing = callbacks
            .on_invoke(Request::new(invoke("echo/hi", V::Post)))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);

        let job = |name: &str| rt::JobEventRequest {
            name: name.into(),
            ..Default::default()
        };
        assert!(
            callbacks
                .on_job_event(Request::new(job("known")))
                .await
                .is_ok()
        );
        let failed = callbacks
            .on_job_event_alpha1(Request::new(job("other")))
            .await
            .unwrap_err();
        assert_eq!(
            failed.code(),
            Code::Internal,
            "an error the app chose: retried"
        );
    }

    #[tokio::test]
    async fn an_app_that_implements_nothing_answers_deliberately() {
        let callbacks = Callbacks::new(Silent);
        let subscriptions = callbacks
            .list_topic_subscriptions(Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert!(subscriptions.subscriptions.is_empty());
        let status = callbacks
            .on_topic_event(Request::new(rt::TopicEventRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            TopicEventResponseStatus::Drop as i32,
            "to the dead letters"
        );
        let invoke = callbacks
            .on_invoke(Request::new(InvokeRequest {
                method: "anything".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(invoke.code(), Code::NotFound);
        assert!(invoke.message().contains("\"anything\""));
        let bindings = callbacks
            .list_input_bindings(Request::new(()))
            .await
            .unwrap()
            .into_inner();
        assert!(bindings.bindings.is_empty());
        let binding = callbacks
            .on_binding_event(Request::new(rt::BindingEventRequest {
                name: "cron".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(binding.code(), Code::NotFound);
        let job = callbacks
            .on_job_event(Request::new(rt::JobEventRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(
            job.code(),
            Code::NotFound,
            "counted as delivered: not retried"
        );
        assert!(callbacks.health_check(Request::new(())).await.is_ok());
    }
}
