//! Problem details (RFC 9457). Every error of every layer becomes one of these here, and
//! nowhere else.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use kernel::domain::DomainError;
use kernel::KernelError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// RFC 9457 problem details.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
#[oai(rename = "Problem")]
pub struct ProblemBody {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Per-field errors, where the input had them.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The one error type of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("rate limit exceeded; retry in {retry_after_secs}s")]
    TooManyRequests { retry_after_secs: u64 },
    /// Projections have not reached the requested position yet, or a backend is down.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Unprocessable {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.to_string(),
                message,
            }],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad-request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::Unprocessable { .. } => "validation",
            ApiError::TooManyRequests { .. } => "rate-limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ProblemBody {
        let status = self.status();
        let errors = match self {
            ApiError::BadRequest { errors, .. } | ApiError::Unprocessable { errors, .. }
                if !errors.is_empty() =>
            {
                Some(errors.clone())
            }
            _ => None,
        };
        let detail = match self {
            // Internal details stay in the logs.
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        ProblemBody {
            kind: format!("https://quintet.dev/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

/// Builds a problem+json response.
pub fn problem_response(body: &ProblemBody, retry_after: Option<u64>) -> Response {
    let json = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::builder()
        .status(StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type(PROBLEM_JSON)
        .body(json);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().expect("digits"));
    }
    response
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let retry_after = match self {
            ApiError::TooManyRequests { retry_after_secs }
            | ApiError::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        problem_response(&self.body(), retry_after)
    }
}

/// Documents every problem status an operation may answer.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        const STATUSES: [(u16, &str); 12] = [
            (400, "Malformed request"),
            (401, "Missing or invalid token"),
            (403, "The token's role does not allow this"),
            (404, "Not found"),
            (409, "Conflict: already exists, or a stale version"),
            (410, "Forgotten (crypto-shredded)"),
            (413, "Payload too large"),
            (415, "The body must be application/json"),
            (422, "Validation failed"),
            (429, "Rate limited"),
            (500, "Internal error"),
            (503, "Not ready: a backend is down or projections lag"),
        ];
        MetaResponses {
            responses: STATUSES
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_JSON,
                        schema: ProblemBody::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        ProblemBody::register(registry);
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::Invalid { field, message } => match field {
                Some(field) => ApiError::invalid(&field, message),
                None => ApiError::Unprocessable {
                    detail: message,
                    errors: vec![],
                },
            },
            DomainError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            DomainError::AlreadyExists(what) => {
                ApiError::Conflict(format!("{what} already exists"))
            }
            DomainError::StateConflict(message) => ApiError::Conflict(message),
            DomainError::TooLarge(message) => ApiError::PayloadTooLarge(message),
        }
    }
}

impl From<KernelError> for ApiError {
    fn from(err: KernelError) -> Self {
        match err {
            KernelError::Rejected(domain) => domain.into(),
            conflict @ KernelError::Conflict { .. } => ApiError::Conflict(conflict.to_string()),
            // 409 rather than 422: the request itself is valid, it collides with an earlier one.
            mismatch @ KernelError::IdempotencyMismatch(_) => {
                ApiError::Conflict(mismatch.to_string())
            }
            forgotten @ KernelError::Forgotten(_) => ApiError::Gone(forgotten.to_string()),
            duplicate @ KernelError::Duplicate { .. } => ApiError::Conflict(duplicate.to_string()),
            KernelError::Storage(detail) => {
                tracing::error!(%detail, "storage error");
                ApiError::Unavailable {
                    detail: "a backend is unavailable".into(),
                    retry_after_secs: 1,
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Turns any error poem or poem-openapi raises (malformed JSON, wrong types, missing
/// fields, unknown routes, wrong methods, oversize bodies) into problem+json.
pub async fn problem_from_poem(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return poem::error::ResponseError::as_response(api);
    }
    let status = err.status();
    let status = if status.is_success() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        status
    };
    let detail = if status.is_server_error() {
        tracing::error!(error = %err, "unhandled server error");
        "internal error".to_string()
    } else {
        err.to_string()
    };
    let api = match status {
        StatusCode::BAD_REQUEST => ApiError::BadRequest {
            errors: field_of(&detail).into_iter().collect(),
            detail,
        },
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized(
            "a valid bearer token is required: Authorization: Bearer <jwt>".into(),
        ),
        StatusCode::FORBIDDEN => ApiError::Forbidden(detail),
        StatusCode::NOT_FOUND => ApiError::NotFound(detail),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(detail),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable {
            errors: field_of(&detail).into_iter().collect(),
            detail,
        },
        _ => {
            let body = ProblemBody {
                kind: "about:blank".into(),
                title: status.canonical_reason().unwrap_or("Error").to_string(),
                status: status.as_u16(),
                detail,
                errors: None,
            };
            return problem_response(&body, None);
        }
    };
    poem::error::ResponseError::as_response(&api)
}

/// Pulls the field name out of poem-openapi and serde messages such as
/// `failed to parse "integer(int64)": ... (occurred while parsing "max_mementos")`
/// or `missing field `name``.
fn field_of(detail: &str) -> Option<FieldError> {
    let field = if let Some(rest) = detail.split("parameter `").nth(1) {
        rest.split('`').next()
    } else if let Some(rest) = detail.split("while parsing \"").nth(1) {
        rest.split('"').next()
    } else if let Some(rest) = detail.split("missing field `").nth(1) {
        rest.split('`').next()
    } else if let Some(rest) = detail.split("field `").nth(1) {
        rest.split('`').next()
    } else {
        None
    }?;
    Some(FieldError {
        field: field.to_string(),
        message: detail.to_string(),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}
