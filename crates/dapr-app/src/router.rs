//! A handler map: routes to handlers, turned into both the subscriptions daprd asks for and
//! the dispatch of what it delivers.

use std::{collections::BTreeMap, fmt, future::Future};

use dapr::dapr::proto::runtime::v1::{BindingEventResponse, TopicSubscription};
use tonic::Status;

use crate::{
    App, BindingEvent, EventStatus, Invocation, Job, Reply, Subscription, TopicEvent, Verb,
    handler::{HandlerFuture, InvokeHandler, TopicHandler},
    invoke::quoted,
};

type TopicFn = Box<dyn Fn(TopicEvent) -> HandlerFuture<EventStatus> + Send + Sync>;
type InvokeFn = Box<dyn Fn(Invocation) -> HandlerFuture<Result<Reply, Status>> + Send + Sync>;
type JobFn = Box<dyn Fn(Job) -> HandlerFuture<Result<(), Status>> + Send + Sync>;
type BindingFn =
    Box<dyn Fn(BindingEvent) -> HandlerFuture<Result<BindingEventResponse, Status>> + Send + Sync>;
type HealthFn = Box<dyn Fn() -> Result<(), Status> + Send + Sync>;

/// An [`App`] made of handlers, each registered for what it handles.
///
/// Topic registrations become the answer to `ListTopicSubscriptions`, one subscription per
/// pub/sub component and topic, and each delivered event goes to the handler of its
/// component, topic and route. Invocations go by method (and verb), jobs by name, binding
/// events by binding. What finds no handler gets the crate's default answer (see the crate
/// docs). Registering the same key twice keeps the later handler.
///
/// ```
/// use dapr_app::{EventStatus, Json, Reply, Router, TopicEvent, Verb};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u32 }
///
/// let router = Router::new()
///     .topic("pubsub", "orders", "/orders", |Json(order): Json<Order>, event: TopicEvent| async move {
///         println!("order {} (trace {:?})", order.id, event.traceparent());
///         EventStatus::Success
///     })
///     .subscription("pubsub", "orders", |s| s.dead_letter_topic("orders-dead"))
///     .invocation("ping", Verb::Get, |_call: dapr_app::Invocation| async {
///         Ok::<_, tonic::Status>(Reply::json(b"\"pong\"".to_vec()))
///     })
///     .job("cleanup-", |job: dapr_app::Job| async move {
///         println!("job {}", job.name);
///         Ok(())
///     });
/// # let _ = router;
/// ```
#[derive(Default)]
pub struct Router {
    topics: Vec<Topic>,
    methods: Vec<Method>,
    jobs: Vec<(String, JobFn)>,
    bindings: Vec<(String, BindingFn)>,
    health: Option<HealthFn>,
}

/// One subscription and the handlers of its routes.
struct Topic {
    pubsub: String,
    topic: String,
    subscription: Subscription,
    handlers: BTreeMap<String, TopicFn>,
}

impl Topic {
    fn configure(&mut self, change: impl FnOnce(Subscription) -> Subscription) {
        let current = std::mem::replace(
            &mut self.subscription,
            Subscription::new(&self.pubsub, &self.topic),
        );
        self.subscription = change(current);
    }
}

/// One invocation handler: a method, and a verb or none for any.
struct Method {
    name: String,
    verb: Option<Verb>,
    handler: InvokeFn,
}

/// A method as registered and as called compare without leading or trailing `/`.
fn method_key(method: &str) -> &str {
    method.trim_matches('/')
}

impl Router {
    /// A router with no handlers: every call gets the default answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `topic` of the pub/sub component `pubsub` with `path` as the default
    /// route, and hands the events on that route to `handler`. A later `topic` for the same
    /// component and topic moves the default route.
    pub fn topic<H, Args>(mut self, pubsub: &str, topic: &str, path: &str, handler: H) -> Self
    where
        H: TopicHandler<Args>,
        Args: 'static,
    {
        let entry = self.topic_entry(pubsub, topic);
        entry.configure(|subscription| subscription.route(path));
        entry.handlers.insert(path.to_owned(), erase_topic(handler));
        self
    }

    /// Sends the events of `topic` for which the CEL expression `matches` holds (over the
    /// CloudEvent: `event.type == "order.big"`, `event.data.kind == "big"`, ...) to `path`,
    /// handled by `handler`. Rules are tried in the order they are registered, before the
    /// default route; an event that matches none and has no default route is acknowledged and
    /// skipped by daprd.
    pub fn topic_rule<H, Args>(
        mut self,
        pubsub: &str,
        topic: &str,
        matches: &str,
        path: &str,
        handler: H,
    ) -> Self
    where
        H: TopicHandler<Args>,
        Args: 'static,
    {
        let entry = self.topic_entry(pubsub, topic);
        entry.configure(|subscription| subscription.rule(matches, path));
        entry.handlers.insert(path.to_owned(), erase_topic(handler));
        self
    }

    /// Changes the rest of a topic's subscription: its dead-letter topic, bulk delivery,
    /// metadata. `configure` receives the subscription with the routes registered so far.
    pub fn subscription(
        mut self,
        pubsub: &str,
        topic: &str,
        configure: impl FnOnce(Subscription) -> Subscription,
    ) -> Self {
        self.topic_entry(pubsub, topic).configure(configure);
        self
    }

    /// Hands invocations of `method` to `handler`: those made with `verb`, or, with `None`,
    /// those made with any verb or none (gRPC-style callers send none). A handler for the
    /// exact verb goes before one for any verb.
    pub fn invocation<H, Args>(
        mut self,
        method: &str,
        verb: impl Into<Option<Verb>>,
        handler: H,
    ) -> Self
    where
        H: InvokeHandler<Args>,
        Args: 'static,
    {
        let name = method_key(method).to_owned();
        let verb = verb.into();
        let handler: InvokeFn = Box::new(move |call| handler.call(call));
        self.methods
            .retain(|known| !(known.name == name && known.verb == verb));
        self.methods.push(Method {
            name,
            verb,
            handler,
        });
        self
    }

    /// Hands the jobs whose name starts with `name_prefix` to `handler`; the longest matching
    /// prefix wins. `Ok` and NOT_FOUND count as delivered; any other error makes daprd deliver
    /// the job again, per its failure policy.
    pub fn job<F, Fut>(mut self, name_prefix: &str, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let handler: JobFn = Box::new(move |job| Box::pin(handler(job)));
        self.jobs.retain(|(prefix, _)| prefix != name_prefix);
        self.jobs.push((name_prefix.to_owned(), handler));
        self
    }

    /// Asks daprd for the events of the input binding `name` and hands them to `handler`.
    pub fn binding<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(BindingEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<BindingEventResponse, Status>> + Send + 'static,
    {
        let handler: BindingFn = Box::new(move |event| Box::pin(handler(event)));
        self.bindings.retain(|(known, _)| known != name);
        self.bindings.push((name.to_owned(), handler));
        self
    }

    /// Answers daprd's app health check with `check` (healthy when there is none). While it
    /// fails, daprd holds back events, binding events and jobs.
    pub fn health_check(
        mut self,
        check: impl Fn() -> Result<(), Status> + Send + Sync + 'static,
    ) -> Self {
        self.health = Some(Box::new(check));
        self
    }

    fn topic_entry(&mut self, pubsub: &str, topic: &str) -> &mut Topic {
        let index = match self
            .topics
            .iter()
            .position(|known| known.pubsub == pubsub && known.topic == topic)
        {
            Some(index) => index,
            None => {
                self.topics.push(Topic {
                    pubsub: pubsub.to_owned(),
                    topic: topic.to_owned(),
                    subscription: Subscription::new(pubsub, topic),
                    handlers: BTreeMap::new(),
                });
                self.topics.len() - 1
            }
        };
        &mut self.topics[index]
    }

    fn topic_handler(&self, event: &TopicEvent) -> Option<&TopicFn> {
        self.topics
            .iter()
            .find(|known| known.pubsub == event.pubsub_name && known.topic == event.topic)?
            .handlers
            .get(&event.path)
    }

    fn method(&self, call: &Invocation) -> Option<&InvokeFn> {
        let name = method_key(&call.method);
        let candidates = || self.methods.iter().filter(move |known| known.name == name);
        candidates()
            .find(|known| known.verb.is_some() && known.verb == call.verb)
            .or_else(|| candidates().find(|known| known.verb.is_none()))
            .map(|known| &known.handler)
    }

    fn job_handler(&self, name: &str) -> Option<&JobFn> {
        self.jobs
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, handler)| handler)
    }
}

fn erase_topic<H, Args>(handler: H) -> TopicFn
where
    H: TopicHandler<Args>,
    Args: 'static,
{
    Box::new(move |event| handler.call(event))
}

impl App for Router {
    async fn subscriptions(&self) -> Vec<TopicSubscription> {
        self.topics
            .iter()
            .map(|known| known.subscription.clone().build())
            .collect()
    }

    async fn on_topic_event(&self, event: TopicEvent) -> EventStatus {
        match self.topic_handler(&event) {
            Some(handler) => handler(event).await,
            None => {
                tracing::warn!(
                    event_id = %event.id,
                    pubsub = %event.pubsub_name,
                    topic = %event.topic,
                    path = %event.path,
                    "topic event for a route with no handler: DROP"
                );
                EventStatus::Drop
            }
        }
    }

    async fn on_invoke(&self, call: Invocation) -> Result<Reply, Status> {
        match self.method(&call) {
            Some(handler) => handler(call).await,
            None => Err(Status::not_found(format!(
                "this app has no method {} for {}",
                quoted(&call.method),
                call.verb.map_or("calls without an HTTP verb", Verb::as_str)
            ))),
        }
    }

    fn input_bindings(&self) -> Vec<String> {
        self.bindings.iter().map(|(name, _)| name.clone()).collect()
    }

    async fn on_binding_event(&self, event: BindingEvent) -> Result<BindingEventResponse, Status> {
        match self.bindings.iter().find(|(name, _)| *name == event.name) {
            Some((_, handler)) => handler(event).await,
            None => Err(Status::not_found(format!(
                "this app has no input binding named {}",
                quoted(&event.name)
            ))),
        }
    }

    async fn on_job_event(&self, job: Job) -> Result<(), Status> {
        match self.job_handler(&job.name) {
            Some(handler) => handler(job).await,
            None => {
                tracing::warn!(job = %job.name, "job event with no handler");
                Err(Status::not_found(format!(
                    "this app has no handler for job {}",
                    quoted(&job.name)
                )))
            }
        }
    }

    fn health(&self) -> Result<(), Status> {
        self.health.as_ref().map_or(Ok(()), |check| check())
    }
}

/// The routes, without the handlers.
impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics: Vec<String> = self
            .topics
            .iter()
            .flat_map(|known| {
                known
                    .handlers
                    .keys()
                    .map(|path| format!("{}/{} {path}", known.pubsub, known.topic))
            })
            .collect();
        let methods: Vec<String> = self
            .methods
            .iter()
            .map(|known| match known.verb {
                Some(verb) => format!("{} {}", verb.as_str(), known.name),
                None => known.name.clone(),
            })
            .collect();
        f.debug_struct("Router")
            .field("topics", &topics)
            .field("methods", &methods)
            .field(
                "jobs",
                &self.jobs.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field(
                "bindings",
                &self.bindings.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("health", &self.health.is_some())
            .finish()
    }
}

/// The router's callbacks as routes of their own, so that [`serve`](crate::serve) takes a
/// router as it is.
impl From<Router> for tonic::service::Routes {
    fn from(router: Router) -> Self {
        crate::Callbacks::new(router).into_routes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde::{Deserialize, Serialize};
    use tonic::{Code, metadata::MetadataMap};

    use super::*;
    use crate::Json;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Order {
        id: u32,
    }

    fn event(topic: &str, path: &str, data: &str) -> TopicEvent {
        TopicEvent {
            id: "e1".into(),
            pubsub_name: "pubsub".into(),
            topic: topic.into(),
            path: path.into(),
            data: data.as_bytes().to_vec(),
            ..TopicEvent::default()
        }
    }

    fn call(method: &str, verb: Option<Verb>, body: &str) -> Invocation {
        Invocation {
            method: method.into(),
            verb,
            data: body.as_bytes().to_vec(),
            content_type: "application/json".into(),
            metadata: MetadataMap::new(),
            ..Invocation::default()
        }
    }

    #[tokio::test]
    async fn registrations_become_the_subscriptions() {
        let ok = |_: TopicEvent| async { EventStatus::Success };
        let router = Router::new()
            .topic_rule("pubsub", "orders", "event.type == \"big\"", "/big", ok)
            .topic("pubsub", "orders", "/orders", ok)
            .topic_rule("pubsub", "orders", "event.type == \"small\"", "/small", ok)
            .subscription("pubsub", "orders", |s| s.dead_letter_topic("orders-dead"))
            .topic("other", "audit", "/audit", ok);
        let subscriptions = router.subscriptions().await;
        assert_eq!(subscriptions.len(), 2);
        let orders = &subscriptions[0];
        assert_eq!(
            (orders.pubsub_name.as_str(), orders.topic.as_str()),
            ("pubsub", "orders")
        );
        assert_eq!(orders.dead_letter_topic, "orders-dead");
        let routes = orders.routes.as_ref().expect("routes");
        assert_eq!(routes.default, "/orders");
        let rules: Vec<&str> = routes.rules.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(rules, ["/big", "/small"], "in the order registered");
        assert_eq!(subscriptions[1].routes.as_ref().unwrap().default, "/audit");
        assert!(Router::new().subscriptions().await.is_empty());
    }

    /// `orders` with a typed default route and a rule whose handler also reads the event; each
    /// handler notes what it saw in `seen`.
    fn orders_router(seen: &Arc<Mutex<Vec<String>>>) -> Router {
        let (typed, whole) = (seen.clone(), seen.clone());
        Router::new()
            .topic(
                "pubsub",
                "orders",
                "/orders",
                move |Json(order): Json<Order>| {
                    typed.lock().unwrap().push(format!("order {}", order.id));
                    async { EventStatus::Success }
                },
            )
            .topic_rule(
                "pubsub",
                "orders",
                "true",
                "/traced",
                move |Json(order): Json<Order>, event: TopicEvent| {
                    let trace = event.traceparent().unwrap_or("none").to_owned();
                    let seen = format!("traced {} {trace}", order.id);
                    whole.lock().unwrap().push(seen);
                    async { EventStatus::Retry }
                },
            )
    }

    #[tokio::test]
    async fn events_go_to_the_handler_of_their_route_decoded() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = orders_router(&seen);
        let mut traced = event("orders", "/traced", r#"{"id":2}"#);
        let trace = prost_types::value::Kind::StringValue("00-abc-def-01".into());
        traced.extensions.fields.insert(
            "traceparent".into(),
            prost_types::Value { kind: Some(trace) },
        );
        let plain = event("orders", "/orders", r#"{"id":1}"#);
        assert_eq!(router.on_topic_event(plain).await, EventStatus::Success);
        assert_eq!(router.on_topic_event(traced).await, EventStatus::Retry);
        assert_eq!(*seen.lock().unwrap(), ["order 1", "traced 2 00-abc-def-01"]);
    }

    #[tokio::test]
    async fn events_that_do_not_decode_or_have_no_handler_are_dropped_unseen() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = orders_router(&seen);
        for unhandled in [
            event("orders", "/orders", "not json"),
            event("orders", "/elsewhere", r#"{"id":3}"#),
            event("audit", "/orders", r#"{"id":4}"#),
        ] {
            assert_eq!(router.on_topic_event(unhandled).await, EventStatus::Drop);
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    /// `orders` for any verb and for POST (typed both ways), `echo` for PUT.
    fn methods_router() -> Router {
        Router::new()
            .invocation("/orders/", None, |call: Invocation| async move {
                Ok::<_, Status>(Reply::json(format!("\"any {:?}\"", call.verb).into_bytes()))
            })
            .invocation(
                "orders",
                Verb::Post,
                |Json(order): Json<Order>| async move {
                    Ok::<_, Status>(Json(Order { id: order.id + 1 }))
                },
            )
            .invocation(
                "echo",
                Verb::Put,
                |Json(order): Json<Order>, call: Invocation| async move {
                    assert_eq!(call.method, "echo");
                    Ok::<_, Status>(Json(order))
                },
            )
    }

    #[tokio::test]
    async fn invocations_go_by_method_then_exact_verb_then_any_verb() {
        let router = methods_router();
        let body = |reply: Reply| reply.into_response().data.unwrap_or_default().value;
        for (method, verb, sent, answer) in [
            ("orders", Some(Verb::Post), r#"{"id":1}"#, r#"{"id":2}"#),
            ("orders", Some(Verb::Get), "", r#""any Some(Get)""#),
            ("/orders", None, "", r#""any None""#),
            ("echo", Some(Verb::Put), r#"{"id":5}"#, r#"{"id":5}"#),
        ] {
            let reply = router.on_invoke(call(method, verb, sent)).await.unwrap();
            assert_eq!(body(reply), answer.as_bytes(), "{method} {verb:?}");
        }
    }

    #[tokio::test]
    async fn invocations_that_do_not_decode_or_find_no_handler_are_refused() {
        let router = methods_router();
        for (method, verb, sent, code, says) in [
            (
                "orders",
                Some(Verb::Post),
                r#"{"id":"x"}"#,
                Code::InvalidArgument,
                "invocation of \"orders\"",
            ),
            (
                "echo",
                Some(Verb::Get),
                "",
                Code::NotFound,
                "\"echo\" for GET",
            ),
            (
                "nothing",
                None,
                "",
                Code::NotFound,
                "\"nothing\" for calls without an HTTP verb",
            ),
        ] {
            let refused = router
                .on_invoke(call(method, verb, sent))
                .await
                .unwrap_err();
            assert_eq!(refused.code(), code, "{refused:?}");
            assert!(refused.message().contains(says), "{refused:?}");
        }
    }

    #[tokio::test]
    async fn jobs_go_to_the_longest_prefix_bindings_and_health_to_theirs() {
        let router = Router::new()
            .job("", |_: Job| async { Err(Status::internal("catch-all")) })
            .job("cleanup-", |_: Job| async { Ok(()) })
            .binding("cron", |event: BindingEvent| async move {
                Ok(BindingEventResponse {
                    to: vec![event.name],
                    ..Default::default()
                })
            })
            .health_check(|| Err(Status::unavailable("warming up")));
        let job = |name: &str| Job {
            name: name.into(),
            ..Job::default()
        };
        assert!(router.on_job_event(job("cleanup-7")).await.is_ok());
        assert_eq!(
            router.on_job_event(job("other")).await.unwrap_err().code(),
            Code::Internal
        );
        let unrouted = Router::new().on_job_event(job("other")).await.unwrap_err();
        assert_eq!(unrouted.code(), Code::NotFound, "counted as delivered");

        assert_eq!(router.input_bindings(), ["cron"]);
        let binding = |name: &str| BindingEvent {
            name: name.into(),
            ..BindingEvent::default()
        };
        assert_eq!(
            router.on_binding_event(binding("cron")).await.unwrap().to,
            ["cron"]
        );
        assert_eq!(
            router
                .on_binding_event(binding("queue"))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        assert_eq!(router.health().unwrap_err().code(), Code::Unavailable);
        assert!(Router::new().health().is_ok());
        let shown = format!("{router:?}");
        assert!(
            shown.contains("\"cleanup-\"") && shown.contains("\"cron\""),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_later_registration_of_the_same_key_replaces_the_earlier() {
        let router = Router::new()
            .invocation("m", Verb::Get, |_: Invocation| async {
                Err::<Reply, _>(Status::internal("old"))
            })
            .invocation("m", Verb::Get, |_: Invocation| async {
                Ok::<_, Status>(Reply::json(b"1".to_vec()))
            })
            .topic("pubsub", "t", "/t", |_: TopicEvent| async {
                EventStatus::Retry
            })
            .topic("pubsub", "t", "/t", |_: TopicEvent| async {
                EventStatus::Success
            });
        assert!(
            router
                .on_invoke(call("m", Some(Verb::Get), ""))
                .await
                .is_ok()
        );
        assert_eq!(
            router.on_topic_event(event("t", "/t", "")).await,
            EventStatus::Success
        );
        assert_eq!(router.subscriptions().await.len(), 1);
    }
}
