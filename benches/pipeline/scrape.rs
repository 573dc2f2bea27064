//! payhook's own producer figures, read from its `/metrics` before and after
//! a case: how long records waited in their partition's queue, how long
//! each produce request took at the broker, and how many records a request
//! carried. They say where an ingest tail comes from.

use std::net::SocketAddr;

/// Cumulative histogram buckets (upper bound in seconds, count) and totals.
#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
}

impl Hist {
    fn minus(&self, before: &Hist) -> Hist {
        let at = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, c - at(*le)))
                .collect(),
            count: self.count - before.count,
            sum: self.sum - before.sum,
        }
    }

    /// The upper bound of the bucket holding quantile `q` (a histogram
    /// with buckets only knows that much).
    fn quantile_at_most(&self, q: f64) -> Option<f64> {
        let want = self.count * q;
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want && self.count > 0.0)
            .map(|(le, _)| *le)
    }
}

/// A snapshot of the producer histograms.
#[derive(Clone, Debug, Default)]
pub struct Producer {
    queue: Hist,
    request: Hist,
    batch: Hist,
    requests: Option<Hist>,
}

impl Producer {
    pub async fn read(addr: SocketAddr) -> Option<Self> {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let hist = |name: &str| {
            let mut h = Hist::default();
            let mut found = false;
            for line in text.lines() {
                let Some(rest) = line.strip_prefix(name) else {
                    continue;
                };
                let value = |s: &str| s.trim().parse::<f64>().ok();
                if let Some(v) = rest.strip_prefix("_count ").and_then(value) {
                    h.count = v;
                    found = true;
                } else if let Some(v) = rest.strip_prefix("_sum ").and_then(value) {
                    h.sum = v;
                } else if let Some(b) = rest.strip_prefix("_bucket{le=\"") {
                    let (le, v) = b.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    h.buckets.push((le, value(v)?));
                }
            }
            // An older build without these metrics: no figures, not zeros.
            found.then_some(h)
        };
        Some(Self {
            queue: hist("payhook_producer_queue_seconds")?,
            request: hist("payhook_producer_request_seconds")?,
            batch: hist("payhook_producer_batch_records")?,
            // Builds before one produce request per broker have none.
            requests: hist("payhook_producer_request_partitions"),
        })
    }

    /// What happened between `before` and `self`, as a note.
    pub fn since(&self, before: &Producer) -> String {
        let (q, r, b) = (
            self.queue.minus(&before.queue),
            self.request.minus(&before.request),
            self.batch.minus(&before.batch),
        );
        let ms = |h: &Hist, quantile: f64| {
            h.quantile_at_most(quantile)
                .map_or_else(|| "-".into(), |s| format!("{}", s * 1000.0))
        };
        let mean = |h: &Hist| {
            if h.count > 0.0 {
                h.sum / h.count * 1000.0
            } else {
                0.0
            }
        };
        let per = |h: &Hist| if h.count > 0.0 { h.sum / h.count } else { 0.0 };
        // Before one request per broker, each partition batch was a request.
        let requests = match (&self.requests, &before.requests) {
            (Some(now), Some(then)) => now.minus(then),
            _ => Hist {
                count: b.count,
                sum: b.count,
                buckets: Vec::new(),
            },
        };
        format!(
            "producer: lane queue mean {:.2} ms, p99 ≤ {} ms; batch acknowledged mean {:.2} ms, p99 ≤ {} ms; {:.0} partition batches of {:.1} records in {:.0} produce requests ({:.2} per event)",
            mean(&q),
            ms(&q, 0.99),
            mean(&r),
            ms(&r, 0.99),
            b.count,
            per(&b),
            requests.count,
            if b.sum > 0.0 {
                requests.count / b.sum
            } else {
                0.0
            },
        )
    }
}
