//! What the command read side knows without reading a document: the collections of the
//! `command` projection, the command types and statuses, the handlers' defaults, and the
//! latency histogram the metrics are estimated from.
//!
//! # Latency histogram
//!
//! Latencies are counted in fixed, log-scale buckets of microseconds, [`BUCKETS_PER_DOUBLING`]
//! (4) buckets per power of two, so each bucket's upper bound is `r = 2^(1/4) ≈ 1.189` times
//! its lower bound:
//!
//! - bucket 0 holds latencies below 1 µs;
//! - bucket `i` (1 ≤ i < [`BUCKET_COUNT`] − 1) holds `[r^(i−1), r^i)` µs;
//! - the last bucket holds everything from `r^(BUCKET_COUNT−2)` µs (2^40 µs, about 12.7 days)
//!   up.
//!
//! Each type's counter document keeps the count of each bucket that has any at
//! `buckets.b<index>` ([`bucket_field`]); [`LatencyHistogram::from_counts`] reads them back.
//!
//! A percentile is the nearest-rank sample's bucket, reported as the bucket's geometric
//! midpoint `r^(i−½)`. The true nearest-rank value lies in that bucket, so the estimate is
//! within a factor `√r ≈ 1.0905` of it: **relative error ≤ 9.05 %** ([`RELATIVE_ERROR_BOUND`]),
//! for latencies from 1 µs to 12.7 days. Bucket 0 reports 0 and the last bucket its lower
//! bound.

use serde_json::Value;

/// Projection-owned collections (see `projection`).
pub const COMMANDS: &str = "command_commands";
pub const HISTORY: &str = "command_history";
pub const AUDIT: &str = "command_audit";
/// One counter document per command type (id: the type): runs, failures, total latency,
/// latency histogram and last reset.
pub const METRICS: &str = "command_metrics";
pub const HANDLERS: &str = "command_handlers";

/// The eight command types of seed 004; each has a handler of the same name.
pub const COMMAND_TYPES: [&str; 8] = [
    "payment",
    "user",
    "order",
    "notification",
    "inventory",
    "refund",
    "audit",
    "system",
];

/// The statuses a command moves through.
pub const STATUSES: [&str; 6] = [
    "queued",
    "scheduled",
    "executed",
    "failed",
    "undone",
    "cancelled",
];

pub fn is_command_type(name: &str) -> bool {
    COMMAND_TYPES.contains(&name)
}

pub fn is_status(name: &str) -> bool {
    STATUSES.contains(&name)
}

/// What a built-in handler does, shown until a registration says otherwise.
pub fn default_description(command_type: &str) -> Option<&'static str> {
    Some(match command_type {
        "payment" => "Processes payments of repository users.",
        "user" => "Creates, updates and deletes repository users.",
        "order" => "Places and moves repository orders.",
        "notification" => "Sends notifications to users.",
        "inventory" => "Adjusts product stock.",
        "refund" => "Refunds completed payments.",
        "audit" => "Records audit entries.",
        "system" => "Runs system operations.",
        _ => return None,
    })
}

/// Buckets per power of two.
pub const BUCKETS_PER_DOUBLING: u32 = 4;
/// Bucket 0 (below 1 µs), 160 buckets up to 2^40 µs, and the overflow bucket.
pub const BUCKET_COUNT: usize = 162;
/// The largest relative error of a percentile estimate: `2^(1/8) − 1`.
pub const RELATIVE_ERROR_BOUND: f64 = 0.090_508;

/// The histogram bucket of a latency in microseconds.
pub fn latency_bucket(latency_us: f64) -> usize {
    if latency_us.is_nan() || latency_us < 1.0 {
        return 0;
    }
    let index = (latency_us.log2() * f64::from(BUCKETS_PER_DOUBLING)).floor() + 1.0;
    // The cast saturates, and the overflow bucket takes everything beyond.
    (index as usize).min(BUCKET_COUNT - 1)
}

/// The value a bucket stands for in µs: its geometric midpoint (see the module docs).
pub fn bucket_value_us(bucket: usize) -> f64 {
    let per_doubling = f64::from(BUCKETS_PER_DOUBLING);
    match bucket {
        0 => 0.0,
        b if b >= BUCKET_COUNT - 1 => 2f64.powf((BUCKET_COUNT - 2) as f64 / per_doubling),
        b => 2f64.powf((b as f64 - 0.5) / per_doubling),
    }
}

/// The object of a counter document holding its bucket counts.
pub const BUCKETS_FIELD: &str = "buckets";

/// The dotted path of a bucket's count in a counter document: `buckets.b17`.
pub fn bucket_field(bucket: usize) -> String {
    format!("{BUCKETS_FIELD}.b{}", bucket.min(BUCKET_COUNT - 1))
}

/// A whole, non-negative count stored in a document (0 if absent or not a number).
pub fn count_of(value: Option<&Value>) -> u64 {
    match value {
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
            .unwrap_or(0),
        None => 0,
    }
}

/// Counts per bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKET_COUNT],
            total: 0,
        }
    }
}

impl LatencyHistogram {
    /// A histogram from a counter document's `buckets` object (`{"b17": 3, ...}`); keys
    /// that name no bucket are ignored.
    pub fn from_counts(buckets: Option<&Value>) -> Self {
        let mut histogram = Self::default();
        for (key, count) in buckets.and_then(Value::as_object).into_iter().flatten() {
            let bucket = key.strip_prefix('b').and_then(|n| n.parse::<usize>().ok());
            if let Some(bucket) = bucket {
                histogram.add(bucket, count_of(Some(count)));
            }
        }
        histogram
    }

    pub fn record(&mut self, latency_us: f64) {
        self.add(latency_bucket(latency_us), 1);
    }

    /// Adds `count` samples to a bucket (out-of-range buckets go to the overflow bucket).
    pub fn add(&mut self, bucket: usize, count: u64) {
        let bucket = bucket.min(BUCKET_COUNT - 1);
        self.counts[bucket] += count;
        self.total += count;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `p`-th percentile (0 < p ≤ 100) in µs by nearest rank, or `None` when empty.
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_value_us(bucket));
            }
        }
        Some(bucket_value_us(BUCKET_COUNT - 1))
    }
}

/// The text of a JSON string field, if it is one.
pub fn text<'a>(doc: &'a Value, field: &str) -> Option<&'a str> {
    doc.get(field).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank percentile of sorted data.
    fn exact(sorted: &[f64], p: f64) -> f64 {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted[rank - 1]
    }

    #[test]
    fn buckets_are_log_scale_with_four_per_doubling() {
        assert_eq!(latency_bucket(0.0), 0);
        assert_eq!(latency_bucket(0.99), 0);
        assert_eq!(latency_bucket(1.0), 1);
        assert_eq!(latency_bucket(1.18), 1);
        assert_eq!(latency_bucket(1.19), 2);
        assert_eq!(latency_bucket(2.0), 5);
        assert_eq!(latency_bucket(1024.0), 41);
        assert_eq!(latency_bucket(f64::NAN), 0);
        assert_eq!(latency_bucket(1e300), BUCKET_COUNT - 1);
        assert_eq!(latency_bucket(2f64.powi(40)), BUCKET_COUNT - 1);
        assert_eq!(latency_bucket(2f64.powi(40) * 0.99), BUCKET_COUNT - 2);
        // Every value's bucket midpoint is within the documented bound.
        let mut v = 1.0;
        while v < 2f64.powi(40) {
            let estimate = bucket_value_us(latency_bucket(v));
            assert!(
                (estimate - v).abs() / v <= RELATIVE_ERROR_BOUND,
                "{v} -> {estimate}"
            );
            v *= 1.013;
        }
    }

    #[test]
    fn percentiles_of_known_data_are_within_the_bound() {
        // 1..=1000 ms in µs: p50 = 500 ms, p95 = 950 ms, p99 = 990 ms.
        let data: Vec<f64> = (1..=1000).map(|ms| f64::from(ms) * 1000.0).collect();
        let mut histogram = LatencyHistogram::default();
        data.iter().for_each(|&v| histogram.record(v));
        assert_eq!(histogram.total(), 1000);
        for (p, want) in [(50.0, 500_000.0), (95.0, 950_000.0), (99.0, 990_000.0)] {
            assert_eq!(exact(&data, p), want);
            let got = histogram.percentile_us(p).expect("samples");
            assert!(
                (got - want).abs() / want <= RELATIVE_ERROR_BOUND,
                "p{p}: {got} vs {want}"
            );
        }
        // A skewed set: 90 fast (100 µs), 10 slow (1 s): p50 fast, p95 and p99 slow.
        let mut skewed = LatencyHistogram::default();
        (0..90).for_each(|_| skewed.record(100.0));
        (0..10).for_each(|_| skewed.record(1_000_000.0));
        let p50 = skewed.percentile_us(50.0).expect("samples");
        let p95 = skewed.percentile_us(95.0).expect("samples");
        assert!((p50 - 100.0).abs() / 100.0 <= RELATIVE_ERROR_BOUND, "{p50}");
        assert!((p95 - 1e6).abs() / 1e6 <= RELATIVE_ERROR_BOUND, "{p95}");
        // p90 is the 90th sample, still fast.
        assert!(skewed.percentile_us(90.0).expect("samples") < 200.0);
    }

    #[test]
    fn percentiles_of_edge_cases() {
        assert_eq!(LatencyHistogram::default().percentile_us(50.0), None);
        let mut one = LatencyHistogram::default();
        one.record(0.0);
        assert_eq!(one.percentile_us(99.0), Some(0.0));
        let mut huge = LatencyHistogram::default();
        huge.add(10_000, 2);
        assert_eq!(huge.total(), 2);
        assert_eq!(huge.percentile_us(50.0), Some(2f64.powi(40)));
    }

    #[test]
    fn histograms_read_back_from_bucket_counts() {
        let mut recorded = LatencyHistogram::default();
        let mut doc = serde_json::Map::new();
        for (latency_us, times) in [(0.5, 2_u64), (100.0, 90), (1e6, 10), (1e300, 1)] {
            (0..times).for_each(|_| recorded.record(latency_us));
            let field = bucket_field(latency_bucket(latency_us));
            let key = field.strip_prefix("buckets.").expect("under buckets");
            doc.insert(key.to_string(), serde_json::json!(times));
        }
        assert_eq!(bucket_field(17), "buckets.b17");
        assert_eq!(
            bucket_field(10_000),
            format!("buckets.b{}", BUCKET_COUNT - 1)
        );
        // Stores may hand back whole counts as floats; junk keys and values count nothing.
        doc.insert("b3".into(), serde_json::json!(0.0));
        doc.insert("x9".into(), serde_json::json!(5));
        doc.insert("b".into(), serde_json::json!(5));
        doc.insert("b4".into(), serde_json::json!("five"));
        let read = LatencyHistogram::from_counts(Some(&Value::Object(doc)));
        assert_eq!(read, recorded);
        assert_eq!(read.total(), 103);
        for p in [50.0, 95.0, 99.0, 100.0] {
            assert_eq!(read.percentile_us(p), recorded.percentile_us(p));
        }
        assert_eq!(LatencyHistogram::from_counts(None).total(), 0);
        assert_eq!(count_of(Some(&serde_json::json!(3.0))), 3);
        assert_eq!(count_of(Some(&serde_json::json!(-1))), 0);
        assert_eq!(count_of(None), 0);
    }

    #[test]
    fn names_are_checked() {
        assert!(COMMAND_TYPES.iter().all(|t| is_command_type(t)));
        assert!(COMMAND_TYPES
            .iter()
            .all(|t| default_description(t).is_some()));
        assert!(!is_command_type("Payment"));
        assert!(!is_status("half_done") && is_status("undone"));
    }
}
