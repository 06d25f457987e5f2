//! The shapes of function a [`Router`](crate::Router) takes as a handler.
//!
//! A handler is an `async` closure or function. Topic and invocation handlers come in three
//! shapes each, told apart by their argument types, so that a handler asks for the payload
//! decoded, the whole event, or both:
//!
//! | Topic handler | Invocation handler |
//! |---|---|
//! | `Fn(TopicEvent) -> impl Future<Output = EventStatus>` | `Fn(Invocation) -> impl Future<Output = Result<R, Status>>` |
//! | `Fn(Json<T>) -> …` | `Fn(Json<T>) -> …` |
//! | `Fn(Json<T>, TopicEvent) -> …` | `Fn(Json<T>, Invocation) -> …` |
//!
//! `R` is a [`Reply`] or a [`Json`] value ([`IntoReply`]). A payload that does not decode never
//! reaches the handler: an event is answered DROP (it would fail the same way on every
//! redelivery), an invocation INVALID_ARGUMENT.

use std::{future::Future, pin::Pin};

use serde::de::DeserializeOwned;
use tonic::Status;

use crate::{EventStatus, IntoReply, Invocation, Json, JsonError, Reply, TopicEvent};

/// The future a handler returns, boxed so that handlers of any type sit in one table.
pub type HandlerFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A function that handles topic events; see the [module docs](self) for its shapes. `Args` is
/// the tuple of its argument types, inferred from the closure.
pub trait TopicHandler<Args>: Send + Sync + 'static {
    /// Handles one event.
    fn call(&self, event: TopicEvent) -> HandlerFuture<EventStatus>;
}

/// A function that handles invocations; see the [module docs](self) for its shapes. `Args` is
/// the tuple of its argument types, inferred from the closure.
pub trait InvokeHandler<Args>: Send + Sync + 'static {
    /// Handles one invocation.
    fn call(&self, call: Invocation) -> HandlerFuture<Result<Reply, Status>>;
}

impl<F, Fut> TopicHandler<(TopicEvent,)> for F
where
    F: Fn(TopicEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = EventStatus> + Send + 'static,
{
    fn call(&self, event: TopicEvent) -> HandlerFuture<EventStatus> {
        Box::pin(self(event))
    }
}

impl<F, Fut, T> TopicHandler<(Json<T>,)> for F
where
    F: Fn(Json<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = EventStatus> + Send + 'static,
    T: DeserializeOwned,
{
    fn call(&self, event: TopicEvent) -> HandlerFuture<EventStatus> {
        match event.json() {
            Ok(value) => Box::pin(self(Json(value))),
            Err(error) => undecodable_event(&event, &error),
        }
    }
}

impl<F, Fut, T> TopicHandler<(Json<T>, TopicEvent)> for F
where
    F: Fn(Json<T>, TopicEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = EventStatus> + Send + 'static,
    T: DeserializeOwned,
{
    fn call(&self, event: TopicEvent) -> HandlerFuture<EventStatus> {
        match event.json() {
            Ok(value) => Box::pin(self(Json(value), event)),
            Err(error) => undecodable_event(&event, &error),
        }
    }
}

/// DROP: a payload that does not decode now never will, so redelivering it only delays the
/// dead-letter topic.
fn undecodable_event(event: &TopicEvent, error: &JsonError) -> HandlerFuture<EventStatus> {
    tracing::warn!(
        event_id = %event.id,
        topic = %event.topic,
        error = %error.detail(),
        "undecodable topic event: DROP"
    );
    Box::pin(std::future::ready(EventStatus::Drop))
}

impl<F, Fut, R> InvokeHandler<(Invocation,)> for F
where
    F: Fn(Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    R: IntoReply,
{
    fn call(&self, call: Invocation) -> HandlerFuture<Result<Reply, Status>> {
        let answer = self(call);
        Box::pin(async move { answer.await?.into_reply() })
    }
}

impl<F, Fut, R, T> InvokeHandler<(Json<T>,)> for F
where
    F: Fn(Json<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    R: IntoReply,
    T: DeserializeOwned,
{
    fn call(&self, call: Invocation) -> HandlerFuture<Result<Reply, Status>> {
        match call.json() {
            Ok(value) => {
                let answer = self(Json(value));
                Box::pin(async move { answer.await?.into_reply() })
            }
            Err(error) => Box::pin(std::future::ready(Err(error.into()))),
        }
    }
}

impl<F, Fut, R, T> InvokeHandler<(Json<T>, Invocation)> for F
where
    F: Fn(Json<T>, Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    R: IntoReply,
    T: DeserializeOwned,
{
    fn call(&self, call: Invocation) -> HandlerFuture<Result<Reply, Status>> {
        match call.json() {
            Ok(value) => {
                let answer = self(Json(value), call);
                Box::pin(async move { answer.await?.into_reply() })
            }
            Err(error) => Box::pin(std::future::ready(Err(error.into()))),
        }
    }
}
