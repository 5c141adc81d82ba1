//! Limits on every route: request body size (413) and request rate per client IP and per
//! token subject (429 with `Retry-After`), with `governor`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::auth::JwtKeys;
use crate::problem::ApiError;

/// Rejects bodies over `max_bytes` with 413, whether or not they declare a length.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    max_bytes: usize,
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let too_large = || {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than {} bytes",
                self.max_bytes
            ))
        };
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_bytes as u64) {
            return Err(too_large().into());
        }
        if declared.is_none() {
            // A chunked body: read it under the limit.
            let body = req
                .take_body()
                .into_bytes_limit(self.max_bytes)
                .await
                .map_err(|_| too_large())?;
            req.set_body(body);
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// Per-IP and per-subject rate limits.
#[derive(Clone)]
pub struct RateLimit {
    enabled: bool,
    by_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    by_subject: Arc<DefaultKeyedRateLimiter<String>>,
    keys: JwtKeys,
}

impl RateLimit {
    /// `requests` per `window`, with a burst of `requests`.
    pub fn new(enabled: bool, requests: u32, window: Duration, keys: JwtKeys) -> Self {
        let burst = NonZeroU32::new(requests.max(1)).expect("max(1) is non-zero");
        let period = window / burst.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("period is non-zero")
            .allow_burst(burst);
        Self {
            enabled,
            by_ip: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            by_subject: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            keys,
        }
    }

    fn check(&self, req: &Request) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let clock = DefaultClock::default();
        let retry = |not_until: governor::NotUntil<governor::clock::QuantaInstant>| {
            ApiError::TooManyRequests {
                retry_after_secs: not_until.wait_time_from(clock.now()).as_secs().max(1),
            }
        };
        if let Some(ip) = req.remote_addr().as_socket_addr().map(|addr| addr.ip()) {
            self.by_ip.check_key(&ip).map_err(retry)?;
        }
        // Only a verified subject gets a bucket, so forged subjects cannot dodge the IP limit.
        if let Some(subject) = bearer(req).and_then(|token| self.keys.verify(token).ok()) {
            self.by_subject.check_key(&subject.sub).map_err(retry)?;
        }
        Ok(())
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(poem::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

impl<E: Endpoint> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        RateLimitEndpoint {
            inner,
            limit: self.clone(),
        }
    }
}

pub struct RateLimitEndpoint<E> {
    inner: E,
    limit: RateLimit,
}

impl<E: Endpoint> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        self.limit.check(&req)?;
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
