//! Feeds arbitrary text (bytes read as lossy UTF-8) to the WebSocket client frame parser
//! (`read_api::ws::parse_client_message`): it must never panic, a rejected frame gets the
//! error text the socket sends back, and an accepted one never carries the contexts its token
//! allows, which only the server sets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use read_api::ws::parse_client_message;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_client_message(&text) {
        Ok(message) => {
            if let Some(subscription) = message.subscribe {
                assert_eq!(
                    subscription.allowed_contexts, None,
                    "a client set its own allowed contexts: {text:?}"
                );
            }
        }
        Err(detail) => assert!(detail.starts_with("invalid message: "), "{detail}"),
    }
});
