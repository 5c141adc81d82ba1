//! `codec_us_per_event` for `benches/compare`: one ~1 KB event through the whole payload path
//! the engine takes, encode plus decode: a typed event to JSON (serde), zstd, AES-256-GCM, then
//! back (decrypt, decompress, JSON to the typed event). Also timed, for the record: the same
//! path through an untyped `serde_json::Value` (what the criterion bench `codec` measures) and
//! the JSON alone, so the share of the codec itself is visible.
//!
//! Warm-up, then `--runs` runs of `--events` events each; prints median [min..max] µs/event.

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::Instant;

use kernel::codec::{open, seal, Aad, CodecSettings, DataKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Money {
    amount: i64,
    currency: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Line {
    product_id: String,
    sku: String,
    name: String,
    quantity: u32,
    unit_price: Money,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Address {
    name: String,
    street: String,
    city: String,
    postcode: String,
    country: String,
}

/// An order-placed event as a typed event: with 4 lines 993 bytes of JSON (the metric's
/// "1 KB event"); with 6, the 1,321-byte event earlier runs used.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OrderEvent {
    OrderPlaced {
        order_id: String,
        user_id: String,
        lines: Vec<Line>,
        shipping_address: Address,
        total: Money,
        placed_at: String,
    },
}

fn event(lines: u32) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: "0193b6a2-7c1e-7f3a-9d2e-4b5c6d7e8f90".into(),
        user_id: "0193b6a2-1111-7aaa-8bbb-cccccccccccc".into(),
        lines: (0..lines)
            .map(|i| Line {
                product_id: format!("prod-{:08}", 1000 + i),
                sku: format!("SKU-{:05}-BLU-M", 31000 + i * 7),
                name: format!("Organic cotton t-shirt, size M, colour {i}"),
                quantity: 1 + i % 3,
                unit_price: Money {
                    amount: 1999 + i64::from(i) * 250,
                    currency: "EUR".into(),
                },
            })
            .collect(),
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            street: "12 St James's Square".into(),
            city: "London".into(),
            postcode: "SW1Y 4JH".into(),
            country: "GB".into(),
        },
        total: Money {
            amount: 15492,
            currency: "EUR".into(),
        },
        placed_at: "2025-11-21T23:58:00Z".into(),
    }
}

fn time_per_event(events: u64, mut once: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..events {
        once();
    }
    started.elapsed().as_secs_f64() * 1e6 / events as f64
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let mut events = 50_000u64;
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if flag == "--events" => events = value.parse().expect("--events N"),
            [flag, value] if flag == "--runs" => runs = value.parse().expect("--runs N"),
            _ => panic!("usage: codec [--events N] [--runs N]"),
        }
    }
    let typed = event(4);
    let untyped = serde_json::to_value(&typed).expect("JSON of plain values");
    let key = DataKey::generate();
    let aad = Aad {
        aggregate_id: "0193b6a2-7c1e-7f3a-9d2e-4b5c6d7e8f90",
        sequence: 42,
        event_id: Uuid::now_v7(),
    };
    // Quintet's defaults (configs/default.yaml).
    let settings = CodecSettings::default();
    let json = serde_json::to_vec(&typed).expect("serialize");
    let sealed = seal(Some(&key), &aad, &json, &settings).expect("seal");
    println!(
        "codec: {} bytes JSON, {} sealed (zstd level {}); {events} events per run, {runs} runs (median [min..max])",
        json.len(),
        sealed.len(),
        settings.zstd_level,
    );

    // The whole path: typed event -> JSON -> sealed -> JSON -> typed event.
    let whole = |event: &OrderEvent, settings: &CodecSettings| {
        let bytes = serde_json::to_vec(black_box(event)).expect("serialize");
        let sealed = seal(Some(&key), &aad, &bytes, settings).expect("seal");
        let opened = open(Some(&key), &aad, &sealed).expect("open");
        let back: OrderEvent = serde_json::from_slice(&opened).expect("parse");
        black_box(back);
    };
    let full_untyped = || {
        let bytes = serde_json::to_vec(black_box(&untyped)).expect("serialize");
        let sealed = seal(Some(&key), &aad, &bytes, &settings).expect("seal");
        let opened = open(Some(&key), &aad, &sealed).expect("open");
        let back: serde_json::Value = serde_json::from_slice(&opened).expect("parse");
        black_box(back);
    };
    let json_only = || {
        let bytes = serde_json::to_vec(black_box(&typed)).expect("serialize");
        let back: OrderEvent = serde_json::from_slice(&bytes).expect("parse");
        black_box(back);
    };
    let codec_only = || {
        let sealed = seal(Some(&key), &aad, black_box(&json), &settings).expect("seal");
        black_box(open(Some(&key), &aad, &sealed).expect("open"));
    };

    let report = |name: &str, mut once: Box<dyn FnMut() + '_>| {
        time_per_event(events / 5, &mut once);
        let (mid, lo, hi) = median(
            (0..runs)
                .map(|_| time_per_event(events, &mut once))
                .collect(),
        );
        println!("{name}: {mid:.2} µs/event [{lo:.2}..{hi:.2}]");
        (mid, lo, hi)
    };
    let (typed_us, lo, hi) = report(
        "typed JSON + zstd + AES-GCM, encode+decode",
        Box::new(|| whole(&typed, &settings)),
    );
    report(
        "untyped serde_json::Value + zstd + AES-GCM",
        Box::new(full_untyped),
    );
    report("typed JSON only (no codec)", Box::new(json_only));
    report("zstd + AES-GCM only (seal + open)", Box::new(codec_only));
    // What the `codec.zstd_level` setting buys: the same whole path at other levels.
    for level in [3, 1, -1, -5] {
        let other = CodecSettings {
            zstd_level: level,
            ..settings.clone()
        };
        let size = seal(Some(&key), &aad, &json, &other).expect("seal").len();
        report(
            &format!("typed, zstd level {level} ({size} bytes sealed)"),
            Box::new(|| whole(&typed, &other)),
        );
    }
    // For comparison with earlier runs: the 1,321-byte event they used.
    let larger = event(6);
    report(
        &format!(
            "typed, the {}-byte event of earlier runs",
            serde_json::to_vec(&larger).expect("serialize").len()
        ),
        Box::new(|| whole(&larger, &settings)),
    );
    println!("RESULT us={typed_us:.2} min={lo:.2} max={hi:.2}");
}
