//! JWT authentication: HS256 with the algorithm pinned by the server (never read from the
//! token), `exp`, `aud` and `iss` required, `nbf` honoured; and the roles reader < writer <
//! admin.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;
use serde::{Deserialize, Serialize};

use kernel::config::SecuritySettings;

use crate::problem::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use reader, writer or admin"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub aud: String,
    pub iss: String,
}

impl Claims {
    /// Fails with 403 unless the token's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this operation needs the {role:?} role; the token has {:?}",
                self.role
            )))
        }
    }
}

/// The signing and verifying keys, and the validation rules.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    enabled: bool,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(**redacted**)")
    }
}

impl JwtKeys {
    pub fn new(settings: &SecuritySettings) -> Self {
        let secret = settings.jwt_secret.as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_audience(&[settings.jwt_audience.as_str()]);
        validation.set_issuer(&[settings.jwt_issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = settings.leeway.as_secs();
        Self {
            inner: Arc::new(KeysInner {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
                issuer: settings.jwt_issuer.clone(),
                audience: settings.jwt_audience.clone(),
                enabled: settings.enabled,
            }),
        }
    }

    /// Mints a token for `subject` with `role`, valid for `ttl`.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: subject.to_string(),
            role,
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
            aud: self.inner.audience.clone(),
            iss: self.inner.issuer.clone(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .map_err(|err| ApiError::Internal(format!("token encode: {err}")))
    }

    /// Verifies a token. Every failure is a 401 whose detail names the reason but never
    /// echoes the token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match err.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidAudience => "the token's audience is wrong",
                    ErrorKind::InvalidIssuer => "the token's issuer is wrong",
                    ErrorKind::InvalidSignature => "the token's signature is invalid",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "the token's algorithm is not accepted"
                    }
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                ApiError::Unauthorized(reason.to_string())
            })
    }

    /// When security is disabled (development only), every request acts as an admin.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }
}

/// `Authorization: Bearer <JWT>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Claims);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Claims> {
    let keys = req
        .data::<JwtKeys>()
        .ok_or_else(|| ApiError::Internal("JwtKeys missing from the app".into()))?;
    Ok(keys.verify(&bearer.token)?)
}
