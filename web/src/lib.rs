//! HTTP plumbing shared by `write-api` and `read-api`: RFC 9457 problem+json errors (mapped
//! from every layer's errors in one place), JWT authentication and roles, body and rate
//! limits, CORS, access logs, and the operational routes (`/health`, `/ready`, `/metrics`,
//! `/openapi.json`, `/docs`).

pub mod auth;
pub mod limits;
pub mod ops;
pub mod problem;
pub mod server;
pub mod strict;

pub use auth::{BearerAuth, Claims, JwtKeys, Role};
pub use problem::{ApiError, ApiResult, FieldError, ProblemBody};
pub use strict::{StrictJson, Text};
