//! The kernel's error type. The HTTP layers map it to statuses in one place.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    /// The command broke a domain rule (maps to 422 or 400).
    #[error("{0}")]
    Rejected(#[from] crate::domain::DomainError),
    /// Another writer appended to the aggregate first (maps to 409).
    #[error(
        "concurrency conflict on {aggregate_type}/{aggregate_id}: expected version {expected}"
    )]
    Conflict {
        aggregate_type: String,
        aggregate_id: String,
        expected: u64,
    },
    /// The idempotency key was used before with a different request body (maps to 422).
    #[error("idempotency key `{0}` was already used with a different request")]
    IdempotencyMismatch(String),
    /// The aggregate's data key was deleted (crypto-shredded; maps to 410).
    #[error("{0} was forgotten")]
    Forgotten(String),
    /// A unique value (such as an email) is already reserved by another aggregate (maps to 409).
    #[error("`{value}` is already taken for {scope}")]
    Duplicate { scope: String, value: String },
    /// A stored payload could not be read back (maps to 500: data corruption or a wrong master key).
    #[error("codec: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// A backend failed (maps to 503).
    #[error("storage: {0}")]
    Storage(String),
    /// Serialization of our own types failed (a bug; maps to 500).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl KernelError {
    pub fn storage(err: impl std::fmt::Display) -> Self {
        KernelError::Storage(err.to_string())
    }
}

pub type KernelResult<T> = Result<T, KernelError>;
