//! The one way a server refuses a call before any service runs: a [`Gate`] looks at the call's
//! path and metadata, and either lets it through or answers it with its own status. Metadata
//! limits ([`crate::limits`]) and authentication ([`crate::auth`]) are gates.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower::{Layer, Service};

/// A decision about a call made from its path and metadata alone.
pub(crate) trait Gate: Clone + Send + Sync + 'static {
    /// `Ok` lets the call through; an error status is the call's answer.
    fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Status>;
}

/// Puts a [`Gate`] in front of every service of a server.
#[derive(Debug, Clone)]
pub(crate) struct GateLayer<G>(pub(crate) G);

impl<S, G: Clone> Layer<S> for GateLayer<G> {
    type Service = Gated<S, G>;
    fn layer(&self, inner: S) -> Self::Service {
        Gated {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// A service behind a [`Gate`].
#[derive(Debug, Clone)]
pub(crate) struct Gated<S, G> {
    inner: S,
    gate: G,
}

impl<S, G, B, R> Service<Request<B>> for Gated<S, G>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    G: Gate,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.gate.check(request.uri().path(), request.headers()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    /// Lets through only the calls that carry `x-pass`.
    #[derive(Clone)]
    struct NeedsPass;

    impl Gate for NeedsPass {
        fn check(&self, _path: &str, headers: &HeaderMap) -> Result<(), Status> {
            match headers.contains_key("x-pass") {
                true => Ok(()),
                false => Err(Status::permission_denied("no pass")),
            }
        }
    }

    fn request(pass: bool) -> Request<()> {
        let mut request = Request::builder().uri("/a.B/C");
        if pass {
            request = request.header("x-pass", "1");
        }
        request.body(()).expect("a valid request")
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_without_the_service() {
        let service = GateLayer(NeedsPass).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::from("served")))
        }));
        let served = service.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(served.body(), "served");
        let refused = service.oneshot(request(false)).await.unwrap();
        assert_eq!(refused.body(), "");
        assert_eq!(
            refused.headers().get("grpc-status").unwrap(),
            &(tonic::Code::PermissionDenied as i32).to_string()
        );
    }
}
