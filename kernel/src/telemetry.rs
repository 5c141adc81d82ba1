//! Logging setup shared by every binary: JSON (or pretty) lines through `tracing`, filtered
//! by `RUST_LOG` or the configured level. Nothing here logs request headers or query strings,
//! which is how tokens stay out of the logs.

use tracing_subscriber::fmt;
use tracing_subscriber::EnvFilter;

use crate::config::LoggingSettings;

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(settings: &LoggingSettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},sqlx=warn", settings.level)));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if settings.format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .try_init()
    };
    // Err only means a subscriber is already installed.
    let _ = result;
}

/// Removes a token from a URL query string before it is logged.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}=[redacted]"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("token") || key.contains("secret") || key.contains("password") || key == "auth"
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_redacted_from_queries() {
        let redacted = super::redact_query("from_position=3&access_token=eyJhbGciOi.x.y");
        assert_eq!(redacted, "from_position=3&access_token=[redacted]");
        assert!(!redacted.contains("eyJ"));
    }
}
