//! End to end: from the 202 to the committed row, at a fixed arrival rate.
//!
//! Why not `stored_at`: its `DEFAULT now()` is the time the consumer's
//! transaction *started*, before the row was even written, let alone
//! committed. Instead the bench database gets a statement-level trigger on
//! `payment_events` that calls `pg_notify` with the partition and offset
//! range each statement inserted. Postgres delivers a notification only
//! when the transaction that sent it commits, so the instant the bench's
//! listening connection receives it is a true "committed and visible" time
//! (late by the delivery, never early). After the run each event's
//! partition and offset are read back and matched to the notification that
//! covered them. The trigger is the bench's only addition to the schema; it
//! adds one small statement to each transaction.
//!
//! The ack instant is when the load generator received the 202: later than
//! payhook sent it by one loopback hop, which makes the figure a hair
//! smaller than the truth.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use payhook::app::Application;
use tokio::{sync::mpsc, time::Instant};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::{
    Profile,
    env::{BenchEnv, run_tag},
    load::open_loop,
    report::{Row, histogram},
};

const TRIGGER: &str = "
CREATE FUNCTION bench_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('bench_committed', coalesce((
      SELECT string_agg(kafka_partition || ':' || lo || ':' || hi, ',')
      FROM (SELECT kafka_partition, min(kafka_offset) AS lo, max(kafka_offset) AS hi
            FROM new_rows GROUP BY kafka_partition) AS s), ''));
  RETURN NULL;
END $$;
CREATE TRIGGER bench_committed AFTER INSERT ON payment_events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_committed();
";

/// (partition, lowest offset, highest offset, when the commit was seen)
type Commit = (i32, i64, i64, Instant);

pub async fn run(profile: &Profile) -> Vec<Row> {
    let env = BenchEnv::new("e2e").await;
    let db = env.client().await;
    db.batch_execute(TRIGGER)
        .await
        .expect("install the trigger");

    // The listening connection: its messages are read by hand.
    let (listener, mut conn) = tokio_postgres::connect(&env.db_url, NoTls)
        .await
        .expect("connect");
    let (tx, mut rx) = mpsc::unbounded_channel::<Commit>();
    let pump = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = stream.next().await {
            let Ok(AsyncMessage::Notification(n)) = msg else {
                continue;
            };
            let at = Instant::now();
            for part in n.payload().split(',').filter(|s| !s.is_empty()) {
                let mut f = part.split(':').map(|v| v.parse::<i64>().unwrap_or(-1));
                let (Some(p), Some(lo), Some(hi)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let _ = tx.send((p as i32, lo, hi, at));
            }
        }
    });
    listener
        .batch_execute("LISTEN bench_committed")
        .await
        .expect("listen");

    let app = Application::build(env.config(&profile.payhook_overrides()))
        .await
        .expect("build payhook");
    let addr = app.local_addr();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let run = run_tag();
    let out = open_loop(
        addr,
        &run,
        0,
        profile.rate,
        profile.rate_conns,
        profile.warmup,
        profile.measure,
        true,
    )
    .await;

    // Wait for the consumer to apply everything in the log.
    let mut end_total = 0;
    for p in 0..crate::env::PARTITIONS as i32 {
        let c = env
            .kafka
            .partition_client(&env.orders_topic, p)
            .await
            .expect("partition client");
        end_total += c
            .get_offset(rskafka::client::partition::OffsetAt::Latest)
            .await
            .expect("end offset");
    }
    let group = env.config(&[]).orders_consumer_group;
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.stored_total(&db, &group).await < end_total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut commits: HashMap<i32, Vec<(i64, i64, Instant)>> = HashMap::new();
    while let Ok((p, lo, hi, at)) = rx.try_recv() {
        commits.entry(p).or_default().push((lo, hi, at));
    }
    let rows = db
        .query(
            "SELECT provider_event_id, kafka_partition, kafka_offset FROM payment_events",
            &[],
        )
        .await
        .expect("read back");
    let mut where_is: HashMap<u64, (i32, i64)> = HashMap::with_capacity(rows.len());
    let prefix = format!("evt_{run}_");
    for r in &rows {
        let id: &str = r.get(0);
        if let Some(n) = id.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()) {
            where_is.insert(n, (r.get(1), r.get(2)));
        }
    }
    let mut h = histogram();
    let (mut missing, mut early) = (0u64, 0u64);
    for (n, acked) in &out.acks {
        let Some(&(p, off)) = where_is.get(n) else {
            missing += 1;
            continue;
        };
        let seen = commits.get(&p).and_then(|v| {
            v.iter()
                .find(|(lo, hi, _)| *lo <= off && off <= *hi)
                .map(|c| c.2)
        });
        match seen {
            Some(at) if at >= *acked => {
                let _ = h.record((at - *acked).as_micros().max(1) as u64);
            }
            Some(_) => {
                // Committed before the 202 reached the load generator.
                early += 1;
                let _ = h.record(1);
            }
            None => missing += 1,
        }
    }

    shutdown.cancel();
    let _ = task.await;
    pump.abort();
    drop(listener);
    drop(db);
    env.cleanup().await;
    vec![
        Row::throughput(format!("rate={}/s", profile.rate), out.per_s())
            .with_latency(&h)
            .note(format!(
                "202 → commit; {} accepted, {} errors, {missing} unmatched, {early} committed before the 202 arrived; ingest p99 {:.2} ms",
                out.accepted,
                out.failed,
                out.latency.value_at_quantile(0.99) as f64 / 1000.0
            )),
    ]
}
