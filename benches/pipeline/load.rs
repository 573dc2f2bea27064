//! The HTTP load generator: raw hyper 1 client connections with keep-alive,
//! one request at a time per connection.
//!
//! - Closed loop ([`closed_loop`]): `n` connections, each sending its next
//!   request as soon as the last is answered. Latency is per request.
//! - Open loop ([`open_loop`]): requests are due at a fixed rate; a free
//!   connection takes the next due slot, waits until its due time and sends.
//!   Latency is counted from the **due** time, not the send time, so a stall
//!   that delays later sends is charged to them (coordinated omission
//!   corrected, as wrk2 does).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use crate::{env::payment_body, report::histogram};

pub const ORDERS_PATH: &str = "/webhooks/payments/orders";

/// The secret the bench's payhook verifies with (Standard Webhooks form):
/// every webhook is signed, as a provider's would be.
pub const BENCH_SECRET: &str = "whsec_cGF5aG9vay1iZW5jaC1zZWNyZXQtMzItYnl0ZXMhIQ==";

/// `webhook-id`, `webhook-timestamp`, `webhook-signature` for `body`.
pub fn sign(body: &str) -> (String, String, String) {
    use base64::Engine as _;
    use hmac::Mac as _;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "msg_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        .to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(BENCH_SECRET.trim_start_matches("whsec_"))
        .expect("bench secret is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let sig = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    (id, ts, sig)
}

pub struct Conn(SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to payhook");
        stream.set_nodelay(true).expect("nodelay");
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        Self(tx)
    }

    /// Posts one payment webhook and reads the whole answer.
    pub async fn post(&mut self, body: String) -> StatusCode {
        if self.0.ready().await.is_err() {
            return StatusCode::BAD_GATEWAY;
        }
        let (id, ts, sig) = sign(&body);
        let req = Request::post(ORDERS_PATH)
            .header(header::HOST, "payhook")
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts)
            .header("webhook-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .expect("valid request");
        match self.0.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                status
            }
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What one load run saw.
pub struct Outcome {
    /// Latencies (µs) of the 202 answers inside the measured window.
    pub latency: Histogram<u64>,
    /// 202 answers inside the measured window.
    pub accepted: u64,
    /// Other answers (any time).
    pub failed: u64,
    /// 202 answers in all, warm-up included (what per-event costs divide by).
    pub accepted_all: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// When each accepted event was answered: (event number, instant).
    pub acks: Vec<(u64, Instant)>,
}

impl Outcome {
    pub fn per_s(&self) -> f64 {
        self.accepted as f64 / self.window.as_secs_f64()
    }
}

/// One connection's share.
struct Part {
    latency: Histogram<u64>,
    accepted: u64,
    failed: u64,
    accepted_all: u64,
    acks: Vec<(u64, Instant)>,
}

impl Part {
    fn new() -> Self {
        Self {
            latency: histogram(),
            accepted: 0,
            failed: 0,
            accepted_all: 0,
            acks: Vec::new(),
        }
    }

    /// Counts one answer; `measured`: the request is inside the window.
    fn count(
        &mut self,
        status: StatusCode,
        measured: bool,
        n: u64,
        latency: Duration,
        keep_ack: bool,
    ) {
        if status != StatusCode::ACCEPTED {
            self.failed += 1;
            return;
        }
        self.accepted_all += 1;
        if measured {
            self.accepted += 1;
            let _ = self.latency.record(latency.as_micros().max(1) as u64);
            if keep_ack {
                self.acks.push((n, Instant::now()));
            }
        }
    }
}

fn merge(parts: Vec<Part>, window: Duration) -> Outcome {
    let mut out = Outcome {
        latency: histogram(),
        accepted: 0,
        failed: 0,
        accepted_all: 0,
        window,
        acks: Vec::new(),
    };
    for p in parts {
        out.latency.add(&p.latency).expect("same bounds");
        out.accepted += p.accepted;
        out.failed += p.failed;
        out.accepted_all += p.accepted_all;
        out.acks.extend(p.acks);
    }
    out
}

/// `in_flight` connections sending back to back for `warmup + measure`;
/// only requests that start inside the measured window are counted. With
/// `keep_acks`, records when each accepted event (by number) was answered.
pub async fn closed_loop(
    addr: SocketAddr,
    run: &str,
    seq: Arc<AtomicU64>,
    in_flight: usize,
    warmup: Duration,
    measure: Duration,
    keep_acks: bool,
) -> Outcome {
    let mut conns = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        conns.push(Conn::open(addr).await);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + warmup;
    let until = from + measure;
    let mut tasks = Vec::new();
    for mut conn in conns {
        let run = run.to_owned();
        let seq = Arc::clone(&seq);
        tasks.push(tokio::spawn(async move {
            let mut part = Part::new();
            tokio::time::sleep_until(start).await;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let status = conn.post(payment_body(&run, n)).await;
                part.count(status, t0 >= from, n, t0.elapsed(), keep_acks);
            }
            part
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("load task"));
    }
    merge(parts, measure)
}

/// Requests due at `rate` per second for `warmup + measure`, sent over
/// `conns` connections; latency from each request's due time. With
/// `keep_acks`, records when each accepted event (by number) was answered.
#[allow(clippy::too_many_arguments)]
pub async fn open_loop(
    addr: SocketAddr,
    run: &str,
    seq_base: u64,
    rate: u64,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    keep_acks: bool,
) -> Outcome {
    let mut open = Vec::with_capacity(conns);
    for _ in 0..conns {
        open.push(Conn::open(addr).await);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let total = rate * (warmup + measure).as_millis() as u64 / 1000;
    let warm = rate * warmup.as_millis() as u64 / 1000;
    let slot = Arc::new(AtomicU64::new(0));
    let interval_ns = 1_000_000_000 / rate;
    let mut tasks = Vec::new();
    for mut conn in open {
        let run = run.to_owned();
        let slot = Arc::clone(&slot);
        tasks.push(tokio::spawn(async move {
            let mut part = Part::new();
            let mut last = start;
            loop {
                let i = slot.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos(i * interval_ns);
                tokio::time::sleep_until(due).await;
                let n = seq_base + i;
                let status = conn.post(payment_body(&run, n)).await;
                let done = Instant::now();
                last = last.max(done);
                part.count(status, i >= warm, n, done - due, keep_acks);
            }
            (part, last)
        }));
    }
    // If payhook falls behind, the last answers come after the schedule
    // ends: the rate is what was answered over the time it really took.
    let from = start + warmup;
    let mut parts = Vec::new();
    let mut last = from + measure;
    for t in tasks {
        let (part, l) = t.await.expect("load task");
        last = last.max(l);
        parts.push(part);
    }
    merge(parts, last - from)
}
