//! JSON payloads: decoding what daprd delivers, encoding what the app answers.

use std::any::type_name;

use serde::{Serialize, de::DeserializeOwned};
use tonic::Status;

use crate::Reply;

/// A JSON payload, decoded on the way in and encoded on the way out.
///
/// As a handler's argument in a [`Router`](crate::Router), the event's or invocation's payload
/// decoded into `T`; as the value an invocation handler returns, the reply encoded from `T`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

/// A payload that is not the JSON expected, or a value that cannot be written as JSON.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The payload does not decode into the expected type.
    #[error("{origin}: its payload ({content_type}) does not decode as {expected}")]
    Decode {
        /// Which event or invocation carried it.
        origin: String,
        /// The content type the sender declared (`""` when it declared none).
        content_type: String,
        /// The Rust type it was decoded into.
        expected: &'static str,
        /// What the JSON parser found.
        #[source]
        source: serde_json::Error,
    },
    /// The value does not encode as JSON (a map with keys that are not strings, say).
    #[error("a {what} does not encode as JSON")]
    Encode {
        /// The Rust type of the value.
        what: &'static str,
        /// What the JSON writer found.
        #[source]
        source: serde_json::Error,
    },
}

impl JsonError {
    /// The message with the parser's own words after it, for an answer to the caller.
    pub(crate) fn detail(&self) -> String {
        match self {
            JsonError::Decode { source, .. } | JsonError::Encode { source, .. } => {
                format!("{self}: {source}")
            }
        }
    }
}

/// A payload that does not decode is the caller's mistake (INVALID_ARGUMENT, which daprd hands
/// an HTTP caller as 400); a reply that does not encode is the app's (INTERNAL).
impl From<JsonError> for Status {
    fn from(error: JsonError) -> Self {
        match &error {
            JsonError::Decode { .. } => Status::invalid_argument(error.detail()),
            JsonError::Encode { .. } => Status::internal(error.detail()),
        }
    }
}

/// `data` decoded into `T`; `origin` names the carrier in the error, and runs only on failure.
pub(crate) fn decode<T: DeserializeOwned>(
    data: &[u8],
    content_type: &str,
    origin: impl FnOnce() -> String,
) -> Result<T, JsonError> {
    serde_json::from_slice(data).map_err(|source| JsonError::Decode {
        origin: origin(),
        content_type: content_type.to_owned(),
        expected: type_name::<T>(),
        source,
    })
}

/// `value` as JSON bytes.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, JsonError> {
    serde_json::to_vec(value).map_err(|source| JsonError::Encode {
        what: type_name::<T>(),
        source,
    })
}

/// What an invocation handler in a [`Router`](crate::Router) may answer with.
pub trait IntoReply {
    /// The reply, or the status to answer when there is none.
    fn into_reply(self) -> Result<Reply, Status>;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Result<Reply, Status> {
        Ok(self)
    }
}

/// An `application/json` body encoded from the value.
impl<T: Serialize> IntoReply for Json<T> {
    fn into_reply(self) -> Result<Reply, Status> {
        Ok(Reply::json(encode(&self.0)?))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, error::Error as _};

    use serde::Deserialize;
    use tonic::Code;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Order {
        id: u32,
    }

    #[test]
    fn a_payload_that_is_not_the_expected_json_names_its_origin_and_keeps_the_cause() {
        let error = decode::<Order>(br#"{"id":"x"}"#, "application/json", || {
            "event \"1\"".into()
        })
        .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("event \"1\": its payload (application/json)"));
        assert!(message.ends_with("does not decode as dapr_app::payload::tests::Order"));
        let cause = error.source().expect("the parser's error is kept");
        assert!(cause.to_string().contains("invalid type"), "{cause}");
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("invalid type"), "{status:?}");
        assert_eq!(
            decode::<Order>(br#"{"id":3}"#, "", String::new).unwrap(),
            Order { id: 3 }
        );
    }

    #[test]
    fn a_reply_encodes_or_says_why_not() {
        let reply = Json(serde_json::json!({"ok": true})).into_reply().unwrap();
        let response = reply.into_response();
        assert_eq!(response.content_type, "application/json");
        assert_eq!(response.data.unwrap().value, br#"{"ok":true}"#);
        // JSON object keys must be strings.
        let unwritable = HashMap::from([((1, 2), "pair")]);
        let status = Json(unwritable).into_reply().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("does not encode as JSON"));
    }
}
