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

use http::HeaderMap;
use tonic::Status;

use crate::{domain::text::echo, gate::Gate};

/// The most metadata one call may carry, counted as HTTP/2 counts it (name + value + 32 per
/// entry).
pub(crate) const MAX_METADATA_BYTES: usize = 64 * 1024;
/// What the server tells the h2 library it accepts; see the module docs.
pub(crate) const H2_MAX_HEADER_LIST_BYTES: u32 = 1024 * 1024;

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
pub(crate) fn check_metadata(headers: &HeaderMap) -> Result<(), Status> {
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

/// [`check_metadata`] as a [`Gate`] for every call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MetadataLimit;

impl Gate for MetadataLimit {
    fn check(&self, _path: &str, headers: &HeaderMap) -> Result<(), Status> {
        check_metadata(headers)
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
