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

/// How much of an oversize body is read and discarded before the 413, and for how long:
/// closing a connection with unread data makes the kernel reset it, and the client may then
/// lose the 413 already sent. Past either bound the connection is simply closed.
const DRAIN_MAX_BYTES: u64 = 64 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        // `Connection` is an HTTP/1 header (HTTP/2 forbids it in responses).
        let http1 = req.version() < poem::http::Version::HTTP_2;
        if declared.is_some_and(|length| length > self.max_bytes as u64) {
            drain(req.take_body()).await;
            return Ok(self.too_large(http1));
        }
        if declared.is_none() {
            // A chunked body: read it under the limit.
            match read_at_most(req.take_body(), self.max_bytes).await {
                Ok(body) => req.set_body(body),
                Err(()) => return Ok(self.too_large(http1)),
            }
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

impl<E> BodyLimitEndpoint<E> {
    /// 413 problem+json; an HTTP/1 connection is not reused (the client may still be
    /// sending).
    fn too_large(&self, http1: bool) -> Response {
        let mut response = ApiError::PayloadTooLarge(format!(
            "the request body is larger than {} bytes",
            self.max_bytes
        ))
        .into_response();
        if http1 {
            response.headers_mut().insert(
                poem::http::header::CONNECTION,
                poem::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The whole body if it has at most `max` bytes; otherwise the rest is drained and `Err`.
async fn read_at_most(body: poem::Body, max: usize) -> Result<Vec<u8>, ()> {
    use tokio::io::AsyncReadExt;
    let mut reader = body.into_async_read();
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = reader.read(&mut chunk).await.map_err(|_| ())?;
        if read == 0 {
            return Ok(data);
        }
        if data.len() + read > max {
            drain_reader(&mut reader).await;
            return Err(());
        }
        data.extend_from_slice(&chunk[..read]);
    }
}

async fn drain(body: poem::Body) {
    drain_reader(&mut body.into_async_read()).await;
}

/// Reads and discards up to [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`].
async fn drain_reader(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    let discard = async {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut reader.take(DRAIN_MAX_BYTES), &mut sink).await;
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, discard).await;
}

/// Per-IP and per-subject rate limits.
#[derive(Clone)]
pub struct RateLimit {
    enabled: bool,
    by_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    by_subject: Arc<DefaultKeyedRateLimiter<String>>,
    keys: JwtKeys,
    /// Made once: making a clock probes the CPU (cpuid), which cost ~6 % of a write's CPU
    /// when it was done per request.
    clock: DefaultClock,
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
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, req: &mut Request) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let retry = |not_until: governor::NotUntil<governor::clock::QuantaInstant>| {
            ApiError::TooManyRequests {
                retry_after_secs: not_until.wait_time_from(self.clock.now()).as_secs().max(1),
            }
        };
        if let Some(ip) = req.remote_addr().as_socket_addr().map(|addr| addr.ip()) {
            self.by_ip.check_key(&ip).map_err(retry)?;
        }
        // Only a verified subject gets a bucket, so forged subjects cannot dodge the IP limit.
        let token = bearer(req).map(str::to_string);
        if let Some(subject) =
            token.and_then(|token| crate::auth::verify_once(req, &self.keys, &token).ok())
        {
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

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        self.limit.check(&mut req)?;
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
