//! How many callers' calls an app works on at once.
//!
//! Every call in flight holds its own state (the handler's future, its buffers, its sidecar
//! calls) and competes with the event path for the same cores. Without a bound, an overloaded
//! task-api (a thousand calls open at once) grew to 41 MiB, and its calls crowded out the event
//! path: ten thousand events behind, notifications at p99 5 s (with 64 at once: 20 MiB, a few
//! hundred events, p99 0.2 s; README, "Sustained load"). So a
//! caller's call waits, first come first served and holding only its request, until one of
//! [`Admission`]'s permits is free; then its handler runs.
//!
//! The sidecar's own calls are never held back: event deliveries, jobs, subscriptions and
//! health probes keep the event path moving and the app marked healthy while callers wait.
//! Invocations through `OnInvoke` are callers' calls and wait like the app's own service.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::telemetry::metrics::METRICS;

/// The calls daprd makes on its own account: AppCallback's deliveries, jobs and health, the
/// alpha interface's bulk deliveries and jobs, and `grpc.health.v1` (probes).
const SIDECAR_PREFIXES: [&str; 4] = [
    "/dapr.proto.runtime.v1.AppCallback/",
    "/dapr.proto.runtime.v1.AppCallbackAlpha/",
    "/dapr.proto.runtime.v1.AppCallbackHealthCheck/",
    "/grpc.health.v1.Health/",
];
/// Within AppCallback, the one method that carries a caller's call.
const INVOCATION: &str = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
/// Server reflection: a client's tooling, cheap and never the load.
const REFLECTION_PREFIX: &str = "/grpc.reflection.";

/// Whether the call at `path` is a caller's, which waits for a permit.
fn waits_for_a_permit(path: &str) -> bool {
    if path == INVOCATION {
        return true;
    }
    !path.starts_with(REFLECTION_PREFIX)
        && !SIDECAR_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
}

/// At most `permits` callers' calls at once, for every connection of a server.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// A service whose callers' calls wait for one of a shared number of permits.
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, R> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !waits_for_a_permit(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The instance made ready is the one that serves the call, once it may start.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permits = self.permits.clone();
        Box::pin(async move {
            let _permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let _waiting = Waiting::count();
                    // The semaphore is never closed, so this fails only if it were; serve then.
                    permits.acquire_owned().await.ok()
                }
            };
            inner.call(request).await
        })
    }
}

/// A call counted in `rpc_server_calls_waiting` until this is dropped: when its turn comes,
/// or when its caller gives up first.
struct Waiting;

impl Waiting {
    fn count() -> Self {
        METRICS.calls_waiting.inc();
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        METRICS.calls_waiting.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tower::ServiceExt;

    use super::*;

    #[test]
    fn callers_calls_wait_and_the_sidecars_own_do_not() {
        for path in [
            "/task.v1.TaskService/CreateTask",
            "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
            "/notification.v1.NotificationService/ListNotifications",
        ] {
            assert!(waits_for_a_permit(path), "{path}");
        }
        for path in [
            "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent",
            "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
            "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
            "/dapr.proto.runtime.v1.AppCallbackAlpha/OnJobEventAlpha1",
            "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(!waits_for_a_permit(path), "{path}");
        }
    }

    async fn most_at_once(path: &'static str, permits: usize, calls: usize) -> usize {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let seen = most.clone();
        // Counts the calls it works on at once, and the most it saw.
        let counting = tower::service_fn(move |_: Request<()>| {
            let (now, most) = (now.clone(), seen.clone());
            async move {
                let working = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(working, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(()))
            }
        });
        let service = AdmissionLayer::new(permits).layer(counting);
        let calls = (0..calls).map(|_| {
            let request = Request::builder().uri(path).body(()).unwrap();
            tokio::spawn(service.clone().oneshot(request))
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap().unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn no_more_callers_calls_run_at_once_than_there_are_permits_and_every_one_is_served() {
        assert_eq!(most_at_once("/task.v1.TaskService/GetTask", 3, 40).await, 3);
    }

    #[tokio::test]
    async fn deliveries_are_not_counted_against_the_permits() {
        let path = "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1";
        assert!(most_at_once(path, 3, 40).await > 3);
    }
}
