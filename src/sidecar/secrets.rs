//! Reading the API key through the Dapr secrets API.

use dapr::dapr::proto::runtime::v1::GetSecretRequest;

use super::{Call, Sidecar, timed};
use crate::secret::Secret;

/// Where the key is: `store` / secret `name` / field `key`.
#[derive(Debug, Clone)]
pub(crate) struct ApiKeySecret {
    sidecar: Sidecar,
    pub(crate) store: String,
    pub(crate) name: String,
    pub(crate) key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} in store {store:?} has no field {key:?}")]
    MissingField {
        store: String,
        name: String,
        key: String,
    },
    #[error("could not read secret {name:?} from store {store:?}")]
    Sidecar {
        store: String,
        name: String,
        #[source]
        source: tonic::Status,
    },
}

impl ApiKeySecret {
    pub(crate) fn new(sidecar: Sidecar, store: &str, name: &str, key: &str) -> Self {
        Self {
            sidecar,
            store: store.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        }
    }

    /// The current key. Never logged.
    pub(crate) async fn fetch(&self) -> Result<Secret, SecretError> {
        let mut grpc = self.sidecar.grpc();
        let request = GetSecretRequest {
            store_name: self.store.clone(),
            key: self.name.clone(),
            metadata: Default::default(),
        };
        let response = timed(
            Call::new("secrets", "get", "GetSecret"),
            grpc.get_secret(request),
        )
        .await
        .map_err(|status| SecretError::Sidecar {
            store: self.store.clone(),
            name: self.name.clone(),
            source: status,
        })?
        .into_inner();
        response
            .data
            .get(&self.key)
            .filter(|value| !value.is_empty())
            .map(|value| Secret::new(value.as_str()))
            .ok_or_else(|| SecretError::MissingField {
                store: self.store.clone(),
                name: self.name.clone(),
                key: self.key.clone(),
            })
    }
}

impl crate::auth::KeySource for ApiKeySecret {
    type Error = SecretError;

    async fn fetch(&self) -> Result<Secret, SecretError> {
        ApiKeySecret::fetch(self).await
    }
}
