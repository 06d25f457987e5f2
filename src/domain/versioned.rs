/// A stored value with the ETag it was read at: the state store's version of it, which a caller
/// sends back to make a change conditional on nobody having changed it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Versioned<T> {
    pub(crate) value: T,
    pub(crate) etag: String,
}
