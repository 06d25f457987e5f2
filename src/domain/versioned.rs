/// A stored value with the ETag it was read at: the state store's version of it, which a caller
/// sends back to make a change conditional on nobody having changed it since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: String,
}
