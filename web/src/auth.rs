//! JWT authentication and authorization.
//!
//! - Keys: an HS256 secret (tokens without `kid`) and, optionally, a JWKS of asymmetric keys
//!   (RS256, ES256, ...) selected by `kid`. The algorithm is pinned per key by the server and
//!   never taken from the token header, so `alg=none` and HS/RS confusion fail.
//! - `exp`, `aud`, `iss` and `sub` are required, `nbf` is honoured, with a configured leeway.
//! - Roles reader < writer < admin; an optional `scope` claim (space-separated contexts)
//!   restricts a token to those contexts.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use lru::LruCache;
use parking_lot::Mutex;
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
    /// Space-separated contexts (`memento repository ...`); absent means every context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The repository user this token acts for: it then reads and writes only that user's
    /// own aggregates (unless it is an admin). Absent means role and scope alone decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Claims {
    /// The user whose own aggregates alone this token may touch; `None` when it is not
    /// restricted to one user (no `user_id`, or an admin, whom ownership never restricts).
    pub fn acting_user(&self) -> Option<&str> {
        match self.role {
            Role::Admin => None,
            _ => self.user_id.as_deref(),
        }
    }

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

    /// Fails with 403 unless the token's role is at least `role` and its scope covers
    /// `context`.
    pub fn allow(&self, role: Role, context: &str) -> Result<(), ApiError> {
        self.require(role)?;
        match &self.scope {
            Some(scope) if !scope.split_whitespace().any(|granted| granted == context) => {
                Err(ApiError::Forbidden(format!(
                    "the token's scope does not include the {context} context"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A verifying key with its pinned algorithm.
struct PinnedKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The signing and verifying keys, and the validation rules.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    encoding: EncodingKey,
    secret: PinnedKey,
    by_kid: HashMap<String, PinnedKey>,
    issuer: String,
    audience: String,
    leeway: u64,
    enabled: bool,
    /// Tokens that passed every check, with their claims, until their `exp` (plus leeway):
    /// a client reuses its token for many requests, and the signature check and the claims'
    /// JSON are most of what a cached read costs. The keys never change while the process
    /// runs, so a kept answer stays right; only expiry needs checking again.
    recent: Mutex<LruCache<String, Claims>>,
}

/// Verified tokens kept by [`JwtKeys::verify`], and the longest kept (so the cache stays
/// under ~8 MiB whatever the tokens).
const RECENT_TOKENS: usize = 4096;
const MAX_REMEMBERED_TOKEN: usize = 2048;

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(**redacted**)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("security.jwks: {0}")]
    Jwks(String),
}

impl JwtKeys {
    /// Builds the keys; panics never, but a bad JWKS is reported by [`JwtKeys::try_new`].
    pub fn new(settings: &SecuritySettings) -> Self {
        Self::try_new(settings).unwrap_or_else(|err| {
            tracing::error!(error = %err, "ignoring the JWKS; only HS256 tokens are accepted");
            Self::build(settings, HashMap::new())
        })
    }

    pub fn try_new(settings: &SecuritySettings) -> Result<Self, KeyError> {
        let by_kid = match &settings.jwks {
            None => HashMap::new(),
            Some(source) => load_jwks(source)?,
        };
        Ok(Self::build(settings, by_kid))
    }

    fn build(settings: &SecuritySettings, by_kid: HashMap<String, PinnedKey>) -> Self {
        let secret = settings.jwt_secret.as_bytes();
        Self {
            inner: Arc::new(KeysInner {
                encoding: EncodingKey::from_secret(secret),
                secret: PinnedKey {
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret),
                },
                by_kid,
                issuer: settings.jwt_issuer.clone(),
                audience: settings.jwt_audience.clone(),
                leeway: settings.leeway.as_secs(),
                enabled: settings.enabled,
                recent: Mutex::new(LruCache::new(
                    NonZeroUsize::new(RECENT_TOKENS).expect("non-zero"),
                )),
            }),
        }
    }

    /// The claims of a new token for `subject` with `role`, valid for `ttl`.
    pub fn claims(&self, subject: &str, role: Role, ttl: Duration) -> Claims {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        Claims {
            sub: subject.to_string(),
            role,
            iat: now,
            exp: now + ttl.as_secs(),
            nbf: None,
            aud: self.inner.audience.clone(),
            iss: self.inner.issuer.clone(),
            scope: None,
            user_id: None,
        }
    }

    /// Mints an HS256 token for `subject` with `role`, valid for `ttl`.
    pub fn mint(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, ApiError> {
        self.mint_claims(&self.claims(subject, role, ttl))
    }

    /// Signs claims with the HS256 secret.
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, ApiError> {
        encode(&Header::new(Algorithm::HS256), claims, &self.inner.encoding)
            .map_err(|err| ApiError::Internal(format!("token encode: {err}")))
    }

    /// Verifies a token. Every failure is a 401 whose detail names the reason but never
    /// echoes the token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if let Some(claims) = self.inner.recent.lock().get(token) {
            if now <= claims.exp.saturating_add(self.inner.leeway) {
                return Ok(claims.clone());
            }
        }
        let claims = self.verify_signed(token)?;
        if token.len() <= MAX_REMEMBERED_TOKEN {
            self.inner
                .recent
                .lock()
                .put(token.to_string(), claims.clone());
        }
        Ok(claims)
    }

    /// The full check: header, pinned algorithm, signature and claims.
    fn verify_signed(&self, token: &str) -> Result<Claims, ApiError> {
        let header = decode_header(token).map_err(|_| unauthorized("the token is malformed"))?;
        let pinned = match &header.kid {
            None => &self.inner.secret,
            Some(kid) => self
                .inner
                .by_kid
                .get(kid)
                .ok_or_else(|| unauthorized("the token's key id (kid) is unknown"))?,
        };
        if header.alg != pinned.algorithm {
            return Err(unauthorized("the token's algorithm is not accepted"));
        }
        let mut validation = Validation::new(pinned.algorithm);
        validation.algorithms = vec![pinned.algorithm];
        validation.set_audience(&[self.inner.audience.as_str()]);
        validation.set_issuer(&[self.inner.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.inner.leeway;
        decode::<Claims>(token, &pinned.key, &validation)
            .map(|data| data.claims)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                unauthorized(match err.kind() {
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
                })
            })
    }

    /// When security is disabled (development only), every request acts as an admin.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }
}

fn unauthorized(reason: &str) -> ApiError {
    ApiError::Unauthorized(reason.to_string())
}

/// Reads a JWKS (inline JSON or `@path`) into keys pinned to their declared algorithm.
fn load_jwks(source: &str) -> Result<HashMap<String, PinnedKey>, KeyError> {
    let json = match source.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| KeyError::Jwks(format!("cannot read {path}: {err}")))?,
        None => source.to_string(),
    };
    let set: JwkSet =
        serde_json::from_str(&json).map_err(|err| KeyError::Jwks(format!("not a JWKS: {err}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| KeyError::Jwks("every key needs a kid".into()))?;
        let declared = jwk
            .common
            .key_algorithm
            .ok_or_else(|| KeyError::Jwks(format!("key {kid} needs an alg")))?;
        let algorithm = Algorithm::from_str(&format!("{declared:?}"))
            .map_err(|_| KeyError::Jwks(format!("key {kid}: unsupported alg {declared:?}")))?;
        if matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(KeyError::Jwks(format!(
                "key {kid}: symmetric keys belong in security.jwt_secret"
            )));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| KeyError::Jwks(format!("key {kid}: {err}")))?;
        keys.insert(kid, PinnedKey { algorithm, key });
    }
    Ok(keys)
}

/// `Authorization: Bearer <JWT>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Claims);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Claims> {
    if let Some(claims) = verified_earlier(req, &bearer.token) {
        return Ok(claims);
    }
    let keys = req
        .data::<JwtKeys>()
        .ok_or_else(|| ApiError::Internal("JwtKeys missing from the app".into()))?;
    Ok(keys.verify(&bearer.token)?)
}

/// A token already verified while this request passed the middlewares: a signature check is
/// most of the CPU a cached read costs, so the rate limiter, the gate and the route share one.
#[derive(Clone)]
struct Verified {
    token: String,
    claims: Claims,
}

/// The claims of `token` if it was verified earlier in this request.
fn verified_earlier(req: &Request, token: &str) -> Option<Claims> {
    req.extensions()
        .get::<Verified>()
        .filter(|verified| verified.token == token)
        .map(|verified| verified.claims.clone())
}

/// Verifies `token` once per request: later calls for the same token reuse the claims.
pub fn verify_once(req: &mut Request, keys: &JwtKeys, token: &str) -> Result<Claims, ApiError> {
    if let Some(claims) = verified_earlier(req, token) {
        return Ok(claims);
    }
    let claims = keys.verify(token)?;
    req.extensions_mut().insert(Verified {
        token: token.to_string(),
        claims: claims.clone(),
    });
    Ok(claims)
}

/// What a route needs before anything else about the request is looked at: the least role,
/// and the context the token's scope must cover (`None`: not a context's route).
pub type RoutePolicy = fn(&poem::http::Method, &str) -> (Role, Option<&'static str>);

/// The context a route belongs to, by its first path segment (relative to `/api/v1`).
pub fn context_of_route(path: &str) -> Option<&'static str> {
    use kernel::domain::Context;
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let context = match first {
        "mementos" | "originators" => Context::Memento,
        "users" | "payments" | "orders" | "products" | "repositories" => Context::Repository,
        "mediators" => Context::Mediator,
        "aggregates" | "events" | "snapshots" | "stats" | "info" => Context::EventSourcing,
        "commands" => Context::Command,
        _ => return None,
    };
    Some(context.as_str())
}

/// Checks the token, the role and the scope of every API request before the route runs, so
/// a caller without the rights learns nothing from validation errors and costs no parsing.
/// The routes check again (with their exact needs); this is the outer wall.
pub struct Gate {
    pub policy: RoutePolicy,
}

impl<E: poem::Endpoint> poem::Middleware<E> for Gate {
    type Output = GateEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        GateEndpoint {
            inner,
            policy: self.policy,
        }
    }
}

pub struct GateEndpoint<E> {
    inner: E,
    policy: RoutePolicy,
}

impl<E: poem::Endpoint> poem::Endpoint for GateEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let keys = req
            .data::<JwtKeys>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("JwtKeys missing from the app".into()))?;
        let token = req
            .headers()
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            })
            .ok_or_else(|| unauthorized("a bearer token is required"))?;
        let claims = verify_once(&mut req, &keys, &token)?;
        let path = req.uri().path();
        let path = path.strip_prefix(crate::server::API_PREFIX).unwrap_or(path);
        let (role, context) = (self.policy)(req.method(), path);
        match context {
            Some(context) => claims.allow(role, context)?,
            None => claims.require(role)?,
        }
        self.inner.call(req).await
    }
}
