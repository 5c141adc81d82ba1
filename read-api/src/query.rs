//! Paging and the shared query parameters of the read routes.

use poem_openapi::Object;
use serde_json::Value;

use kernel::ports::{DocPage, DocQuery};
use web::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

/// A page of read-model documents.
#[derive(Debug, Object)]
pub struct Page {
    pub items: Vec<Value>,
    /// Matches in all pages.
    pub total: u64,
    /// The offset of the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<u64>,
    pub limit: u32,
    pub offset: u64,
}

impl Page {
    pub fn new(page: DocPage, limit: u32, offset: u64) -> Self {
        let end = offset + page.items.len() as u64;
        Page {
            next: (end < page.total).then_some(end),
            items: page.items.into_iter().map(strip_internal).collect(),
            total: page.total,
            limit,
            offset,
        }
    }
}

/// Checks a paging field of a request body against the bounds its schema documents
/// (`limit` 1..=1000, `offset` at most 10^15): 422 naming the field.
pub fn check_body_bounds(
    field: &str,
    value: Option<u64>,
    min: u64,
    max: u64,
) -> Result<(), ApiError> {
    match value {
        Some(value) if value < min || value > max => Err(ApiError::invalid(
            field,
            format!("must be between {min} and {max}"),
        )),
        _ => Ok(()),
    }
}

/// The largest `offset` a request body may give (what the schemas document).
pub const MAX_OFFSET: u64 = 1_000_000_000_000_000;

/// Clamps `limit` to 1..=1000 (default 50).
pub fn query(limit: Option<u32>, offset: Option<u64>) -> DocQuery {
    DocQuery {
        filter: vec![],
        condition: None,
        sort: vec![],
        limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        offset: offset.unwrap_or(0),
    }
}

/// Documents may carry store-internal fields (`_id` in MongoDB); clients never see them.
pub fn strip_internal(mut doc: Value) -> Value {
    if let Some(map) = doc.as_object_mut() {
        map.retain(|key, _| !key.starts_with('_'));
    }
    doc
}

/// 404 for a missing document, 410 for a forgotten (tombstoned) one.
pub fn found(doc: Option<Value>, what: &str) -> Result<Value, ApiError> {
    match doc {
        None => Err(ApiError::NotFound(format!("{what} not found"))),
        Some(doc) if doc.get("tombstone").and_then(Value::as_bool) == Some(true) => {
            Err(ApiError::Gone(format!("{what} was forgotten")))
        }
        Some(doc) => Ok(strip_internal(doc)),
    }
}
