//! Ingest: HTTP → validation → envelope → producer → broker ack → 202.
//!
//! payhook's HTTP server and producer are started in-process on port 0 (the
//! same `http::serve` and `Producer` that `payhook serve` runs), without the
//! consumer: this measures the accepting half alone; `e2e` runs everything.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use payhook::{
    app::readiness::ServiceProbe,
    consume::health::ConsumerHealth,
    http::{self, AppState, Endpoint},
    kafka::producer::{Producer, ProducerConfig},
    metrics::Metrics,
    providers::signature::Verifier,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Profile,
    env::{BenchEnv, run_tag},
    load::{closed_loop, open_loop},
    report::{Row, rss_mib},
};

/// `per_record`: rskafka's per-record producer at each in-flight setting
/// (compared in the note; the caller adds the ratio to the bulk ceiling).
pub async fn run(profile: &Profile, per_record: &[Row]) -> Vec<Row> {
    let env = BenchEnv::new("ingest").await;
    let cfg = env.config(&profile.payhook_overrides());
    let (rss_before, _) = rss_mib();
    let (producer, producer_tasks) = Producer::start(
        &env.kafka,
        &[&cfg.kafka.orders_topic, &cfg.kafka.disputes_topic],
        ProducerConfig::from_config(&cfg.kafka),
    )
    .await
    .expect("start the producer");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let verifier = |auth: &payhook::config::WebhookAuth| {
        payhook::providers::intake(
            Verifier::new(auth.scheme, auth.secrets.clone(), cfg.webhooks.tolerance),
            !cfg.webhooks.verify,
        )
    };
    let state = Arc::new(AppState {
        publisher: Arc::new(producer),
        orders: Endpoint {
            topic: cfg.kafka.orders_topic.clone(),
            intake: verifier(&cfg.webhooks.orders()),
        },
        chargebacks: Endpoint {
            topic: cfg.kafka.disputes_topic.clone(),
            intake: verifier(&cfg.webhooks.chargebacks()),
        },
        readiness: Arc::new(ServiceProbe {
            kafka: env.kafka.clone(),
            pool: env.pool(1),
            topic: cfg.kafka.orders_topic.clone(),
            health: ConsumerHealth::new(cfg.consumer.stall_after, Metrics::new()),
            member: uuid::Uuid::new_v4(),
        }),
        max_body_bytes: cfg.http.max_body_bytes,
        request_timeout: cfg.http.request_timeout,
        retry_after: cfg.http.retry_after,
        occurred_at_max_future: cfg.http.occurred_at_max_future,
        metrics: Metrics::new(),
        ops_on_public: true,
        signer: None,
        providers: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let limits = http::Limits {
        header_timeout: cfg.http.header_timeout,
        max_connections: cfg.http.max_connections,
    };
    let server = tokio::spawn(http::serve(
        listener,
        state,
        limits,
        shutdown.clone(),
        Duration::from_secs(10),
        http::Surface::Public,
    ));

    // Sample resident memory while the load runs.
    let peak_rss = Arc::new(std::sync::Mutex::new(0.0f64));
    let sampler = {
        let peak = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            loop {
                let (now, _) = rss_mib();
                {
                    let mut p = peak.lock().expect("lock");
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let run = run_tag();
    let seq = Arc::new(AtomicU64::new(0));
    let mut rows = Vec::new();
    for &n in &profile.in_flight {
        let out = closed_loop(
            addr,
            &run,
            Arc::clone(&seq),
            n,
            profile.warmup,
            profile.measure,
            false,
        )
        .await;
        let (rss, _) = rss_mib();
        let vs_rskafka = per_record
            .iter()
            .find(|r| r.name.ends_with(&format!(" in_flight={n}")))
            .and_then(|r| r.events_per_s)
            .map_or_else(|| "-".to_owned(), |c| format!("{:.2}", out.per_s() / c));
        rows.push(
            Row::throughput(format!("in_flight={n}"), out.per_s())
                .with_latency(&out.latency)
                .note(format!(
                    "{} errors, RSS {rss:.0} MiB, {vs_rskafka}x rskafka per-record",
                    out.failed
                )),
        );
    }
    let base = seq.load(std::sync::atomic::Ordering::Relaxed) + 1;
    let out = open_loop(
        addr,
        &run,
        base,
        profile.rate,
        profile.rate_conns,
        profile.warmup,
        profile.measure,
        false,
    )
    .await;
    let (rss, _) = rss_mib();
    rows.push(
        Row::throughput(format!("rate={}/s", profile.rate), out.per_s())
            .with_latency(&out.latency)
            .ratio_to(None)
            .note(format!(
                "{} errors, RSS {rss:.0} MiB, latency from due time",
                out.failed
            )),
    );
    sampler.abort();
    let (_, hwm) = rss_mib();
    let peak = *peak_rss.lock().expect("lock");
    rows.push(Row::info("rss_in_process").note(format!(
        "RSS peak {peak:.0} MiB sampled, VmHWM {hwm:.0} MiB, {rss_before:.0} MiB before start \
         (one process: payhook + load generator)"
    )));

    shutdown.cancel();
    let _ = server.await;
    producer_tasks.drained().await;
    env.cleanup().await;
    rows.push(child_rss(profile).await);
    rows
}

/// Resident memory of a **separate** `payhook serve` process (consumers
/// included) under 64 webhooks in flight: the figure the in-process rows
/// cannot give, since there the load generator shares the process.
async fn child_rss(profile: &Profile) -> Row {
    let env = BenchEnv::new("rss").await;
    let addr = crate::env::free_addr();
    // Its default log level and format, as it would run in production
    // (`info`; JSON, stderr not being a terminal); the lines go nowhere.
    let mut child = crate::env::spawn_payhook(&env, profile, &addr.to_string(), &[]);
    let pid = child.id();
    let status = move || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |s: &str, name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    // Wait until it listens.
    let up = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < up, "payhook did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = field(&status(), "VmRSS:");
    let sampler = tokio::spawn(async move {
        let mut peak = 0.0f64;
        for _ in 0..100_000 {
            peak = peak.max(field(&status(), "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if status().is_empty() {
                break;
            }
        }
        peak
    });
    let out = closed_loop(
        addr,
        &run_tag(),
        Arc::new(AtomicU64::new(0)),
        64,
        profile.warmup,
        profile.measure,
        false,
    )
    .await;
    let hwm = field(&status(), "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let peak = sampler.await.unwrap_or(0.0);
    env.cleanup().await;
    let mut row = Row::throughput("payhook_process in_flight=64", out.per_s())
        .with_latency(&out.latency)
        .note(format!(
            "separate `payhook serve` (consumers on, info logs): RSS {idle:.0} MiB idle, peak {peak:.0} MiB, VmHWM {hwm:.0} MiB; {} errors",
            out.failed
        ));
    row.ratio_to_ceiling = None;
    row
}
