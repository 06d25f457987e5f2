//! Reading the API key through the Dapr secrets API.

use dapr::dapr::proto::runtime::v1::GetSecretRequest;

use super::{Sidecar, SidecarError};
use crate::secret::Secret;

/// Where the key is: `store` / secret `name` / field `key`.
#[derive(Debug, Clone)]
pub struct ApiKeySecret {
    sidecar: Sidecar,
    pub store: String,
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} in store {store:?} has no field {key:?}")]
    MissingField {
        store: String,
        name: String,
        key: String,
    },
    #[error("could not read secret {name:?} from store {store:?}: {source}")]
    Sidecar {
        store: String,
        name: String,
        source: SidecarError,
    },
}

impl ApiKeySecret {
    pub fn new(sidecar: Sidecar, store: &str, name: &str, key: &str) -> Self {
        Self {
            sidecar,
            store: store.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        }
    }

    /// The current key. Never logged.
    pub async fn fetch(&self) -> Result<Secret, SecretError> {
        let response = self
            .sidecar
            .grpc()
            .get_secret(GetSecretRequest {
                store_name: self.store.clone(),
                key: self.name.clone(),
                metadata: Default::default(),
            })
            .await
            .map_err(|status| SecretError::Sidecar {
                store: self.store.clone(),
                name: self.name.clone(),
                source: status.into(),
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
