//! Codec throughput: a realistic ~1 KB event payload sealed and opened with compression and
//! encryption on, next to a JSON-only baseline (serialize + parse, no codec) in the same run.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kernel::codec::{open, seal, Aad, CodecSettings, DataKey};
use serde_json::{json, Value};
use uuid::Uuid;

/// An order-placed event of roughly one kilobyte of JSON.
fn event() -> Value {
    let lines: Vec<Value> = (0..6)
        .map(|i| {
            json!({
                "product_id": format!("prod-{:08}", 1000 + i),
                "sku": format!("SKU-{:05}-BLU-M", 31000 + i * 7),
                "name": format!("Organic cotton t-shirt, size M, colour {i}"),
                "quantity": 1 + i % 3,
                "unit_price": {"amount": 1999 + i * 250, "currency": "EUR"},
            })
        })
        .collect();
    json!({
        "order_id": "0193b6a2-7c1e-7f3a-9d2e-4b5c6d7e8f90",
        "user_id": "0193b6a2-1111-7aaa-8bbb-cccccccccccc",
        "lines": lines,
        "shipping_address": {
            "name": "Ada Lovelace", "street": "12 St James's Square",
            "city": "London", "postcode": "SW1Y 4JH", "country": "GB"
        },
        "total": {"amount": 15492, "currency": "EUR"},
        "placed_at": "2025-11-21T23:58:00Z",
    })
}

fn bench_codec(c: &mut Criterion) {
    let value = event();
    let json = serde_json::to_vec(&value).expect("JSON of plain values");
    let key = DataKey::generate();
    let aad = Aad {
        aggregate_id: "0193b6a2-7c1e-7f3a-9d2e-4b5c6d7e8f90",
        sequence: 42,
        event_id: Uuid::now_v7(),
    };
    let full = CodecSettings {
        compression_enabled: true,
        compress_threshold: 512,
        zstd_level: 3,
        encryption_enabled: true,
    };
    let sealed = seal(Some(&key), &aad, &json, &full).expect("seal");
    eprintln!(
        "payload: {} bytes JSON, {} bytes sealed (compressed + encrypted)",
        json.len(),
        sealed.len()
    );

    let mut group = c.benchmark_group("codec_1kb");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("json_only_serialize_parse", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).expect("serialize");
            let back: Value = serde_json::from_slice(&bytes).expect("parse");
            black_box(back)
        })
    });
    group.bench_function("seal_zstd_aes", |b| {
        b.iter(|| seal(Some(&key), black_box(&aad), black_box(&json), &full).expect("seal"))
    });
    group.bench_function("open_zstd_aes", |b| {
        b.iter(|| open(Some(&key), black_box(&aad), black_box(&sealed)).expect("open"))
    });
    // The split between zstd and AES-GCM: the same payload encrypted without compression.
    let aes_only = CodecSettings {
        compression_enabled: false,
        ..full.clone()
    };
    let sealed_aes = seal(Some(&key), &aad, &json, &aes_only).expect("seal");
    group.bench_function("seal_aes_only", |b| {
        b.iter(|| seal(Some(&key), black_box(&aad), black_box(&json), &aes_only).expect("seal"))
    });
    group.bench_function("open_aes_only", |b| {
        b.iter(|| open(Some(&key), black_box(&aad), black_box(&sealed_aes)).expect("open"))
    });
    group.bench_function("json_then_seal_open_then_parse", |b| {
        b.iter(|| {
            let bytes = serde_json::to_vec(black_box(&value)).expect("serialize");
            let sealed = seal(Some(&key), &aad, &bytes, &full).expect("seal");
            let opened = open(Some(&key), &aad, &sealed).expect("open");
            let back: Value = serde_json::from_slice(&opened).expect("parse");
            black_box(back)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
