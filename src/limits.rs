//! How much one call may send in its metadata (HTTP/2 headers).
//!
//! Three lines, each further out:
//! 1. Up to [`MAX_METADATA_BYTES`] a call is served.
//! 2. Beyond it, up to [`H2_MAX_HEADER_LIST_BYTES`], this layer answers the call alone
//!    RESOURCE_EXHAUSTED, naming the size, the limit and the largest entry.
//! 3. Beyond that the h2 library resets the stream (HTTP 431, which gRPC clients report as
//!    UNKNOWN), and past four times that it closes the connection as abuse.
//!
//! Without the first line, hyper's default (16 KiB, so connection close from 64 KiB) made one
//! oversized header fail every call sharing its connection.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use crate::domain::text::echo;

/// The most metadata one call may carry, counted as HTTP/2 counts it (name + value + 32 per
/// entry).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// What the server tells the h2 library it accepts; see the module docs.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 1024 * 1024;

/// The HTTP/2 size of `headers`, and its largest entry.
fn metadata_size(headers: &HeaderMap) -> (usize, Option<(&str, usize)>) {
    let mut total = 0;
    let mut largest: Option<(&str, usize)> = None;
    for (name, value) in headers {
        let size = name.as_str().len() + value.len() + 32;
        total += size;
        if largest.is_none_or(|(_, biggest)| size > biggest) {
            largest = Some((name.as_str(), size));
        }
    }
    (total, largest)
}

/// RESOURCE_EXHAUSTED when `headers` exceed [`MAX_METADATA_BYTES`].
pub fn check_metadata(headers: &HeaderMap) -> Result<(), Status> {
    let (size, largest) = metadata_size(headers);
    if size <= MAX_METADATA_BYTES {
        return Ok(());
    }
    let largest = largest
        .map(|(name, bytes)| format!("; the largest entry is {} ({bytes} bytes)", echo(name)))
        .unwrap_or_default();
    Err(Status::resource_exhausted(format!(
        "the call's metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}{largest}"
    )))
}

/// Applies [`check_metadata`] to every call.
#[derive(Debug, Clone, Default)]
pub struct MetadataLimitLayer;

impl<S> Layer<S> for MetadataLimitLayer {
    type Service = MetadataLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetadataLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct MetadataLimit<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for MetadataLimit<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match check_metadata(request.headers()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_size_the_limit_and_the_largest_entry() {
        let mut headers = HeaderMap::new();
        headers.insert("x-small", "a".parse().unwrap());
        assert!(check_metadata(&headers).is_ok());
        headers.insert("x-padding", "p".repeat(70_000).parse().unwrap());
        let error = check_metadata(&headers).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert!(
            error.message().contains("\"x-padding\" (70041 bytes)"),
            "{}",
            error.message()
        );
        assert!(error.message().contains("65536"), "{}", error.message());
    }
}
