//! Service invocation as an app sees it: an HTTP route with its verb, or a gRPC-style method.

use dapr::dapr::proto::common::v1::{InvokeRequest, InvokeResponse, http_extension};
use serde::de::DeserializeOwned;
use tonic::metadata::MetadataMap;

use crate::payload::{self, JsonError};

/// The most characters of a caller's input a default answer repeats.
const QUOTE_MAX_CHARS: usize = 64;

/// `text` quoted for an error message, cut to a length that fits any client's trailers.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}", format!("{}…", &text[..end])),
    }
}

/// The HTTP verb of an invocation made through daprd's HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
}

impl Verb {
    fn from_proto(verb: i32) -> Option<Self> {
        use http_extension::Verb as V;
        Some(match V::try_from(verb).ok()? {
            V::None => return None,
            V::Get => Verb::Get,
            V::Head => Verb::Head,
            V::Post => Verb::Post,
            V::Put => Verb::Put,
            V::Delete => Verb::Delete,
            V::Connect => Verb::Connect,
            V::Options => Verb::Options,
            V::Trace => Verb::Trace,
            V::Patch => Verb::Patch,
        })
    }

    /// The verb as HTTP writes it: `GET`, `POST`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
            Verb::Connect => "CONNECT",
            Verb::Options => "OPTIONS",
            Verb::Trace => "TRACE",
            Verb::Patch => "PATCH",
        }
    }
}

/// One invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// What follows `/method/` in the caller's URL, or the gRPC-style method name.
    pub method: String,
    /// The HTTP verb; `None` for `InvokeService` without an HTTP extension (gRPC-style).
    pub verb: Option<Verb>,
    /// The raw query string, without `?`.
    pub query: String,
    /// The body (the `Any`'s value).
    pub data: Vec<u8>,
    /// The `Any`'s type URL: set by gRPC-style callers that send a protobuf message.
    pub type_url: String,
    /// The content type the caller declared for [`Invocation::data`].
    pub content_type: String,
    /// The call's metadata: the caller's headers, `dapr-caller-app-id`, `traceparent`, ...
    pub metadata: MetadataMap,
}

impl Invocation {
    /// The invocation daprd made: `request` with the call's `metadata`.
    pub fn from_request(metadata: MetadataMap, request: InvokeRequest) -> Self {
        let (verb, query) = match request.http_extension {
            Some(extension) => (Verb::from_proto(extension.verb), extension.querystring),
            None => (None, String::new()),
        };
        let (data, type_url) = match request.data {
            Some(any) => (any.value, any.type_url),
            None => (Vec::new(), String::new()),
        };
        Self {
            method: request.method,
            verb,
            query,
            data,
            type_url,
            content_type: request.content_type,
            metadata,
        }
    }

    /// The method split on `/`, without empty leading or trailing segments:
    /// `tasks/42/status` is `["tasks", "42", "status"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.method.trim_matches('/').split('/').collect()
    }

    /// The body decoded from JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        payload::decode(&self.data, &self.content_type, || {
            format!("invocation of {}", quoted(&self.method))
        })
    }

    /// A metadata value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
    }

    /// A standard HTTP request header of an HTTP caller. daprd hands such headers (If-Match,
    /// Content-Type, ...) to a gRPC app renamed `dapr-<name>`; a gRPC caller may send the plain
    /// name itself. The renamed one wins.
    pub fn http_header(&self, name: &str) -> Option<&str> {
        self.header(&format!("dapr-{}", name.to_ascii_lowercase()))
            .or_else(|| self.header(name))
    }

    /// The app id of the caller, as daprd reports it. daprd names the caller on calls that come
    /// from another sidecar; a call an app makes to itself through its own sidecar has none.
    pub fn caller(&self) -> Option<&str> {
        self.header("dapr-caller-app-id")
    }
}

/// The answer to an invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(InvokeResponse);

impl Reply {
    /// A JSON body. The `Any` carries no type URL, so daprd hands HTTP callers the bytes as
    /// they are, with this content type (a type URL would make them `application/x-protobuf`).
    pub fn json(body: Vec<u8>) -> Self {
        Self::bytes("application/json", body)
    }

    /// A protobuf message for gRPC-style callers, typed `type.googleapis.com/<type_name>`.
    pub fn proto(type_name: &str, message: Vec<u8>) -> Self {
        Self(InvokeResponse {
            data: Some(prost_types::Any {
                type_url: format!("type.googleapis.com/{type_name}"),
                value: message,
            }),
            content_type: "application/x-protobuf".into(),
        })
    }

    /// Any other body.
    pub fn bytes(content_type: &str, body: Vec<u8>) -> Self {
        Self(InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: body,
            }),
            content_type: content_type.into(),
        })
    }

    /// The message daprd receives.
    pub fn into_response(self) -> InvokeResponse {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr::dapr::proto::common::v1::HttpExtension;

    #[test]
    fn reads_the_verb_query_and_renamed_headers() {
        let mut metadata = MetadataMap::new();
        metadata.insert("dapr-if-match", "\"3\"".parse().unwrap());
        metadata.insert("if-match", "\"2\"".parse().unwrap());
        metadata.insert("x-plain", "yes".parse().unwrap());
        let call = Invocation::from_request(
            metadata,
            InvokeRequest {
                method: "/tasks/42/status/".into(),
                data: None,
                content_type: "application/json".into(),
                http_extension: Some(HttpExtension {
                    verb: http_extension::Verb::Put as i32,
                    querystring: "status=completed".into(),
                }),
            },
        );
        assert_eq!(call.verb, Some(Verb::Put));
        assert_eq!(call.segments(), ["tasks", "42", "status"]);
        assert_eq!(call.query, "status=completed");
        assert_eq!(call.http_header("If-Match"), Some("\"3\""));
        assert_eq!(call.http_header("x-plain"), Some("yes"));
        let grpc_style = Invocation::from_request(
            MetadataMap::new(),
            InvokeRequest {
                method: "CreateTask".into(),
                ..Default::default()
            },
        );
        assert_eq!(grpc_style.verb, None);
    }

    #[test]
    fn quotes_input_short() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        assert_eq!(quoted(&"x".repeat(1000)).chars().count(), 67);
    }
}
