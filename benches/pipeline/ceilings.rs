//! What the broker and the database can do without payhook in the way.
//!
//! - Produce, per record: the same envelope records published one by one
//!   by `in_flight` concurrent callers, each waiting for its record's
//!   acknowledgement, through rskafka's own `BatchProducer` (one per
//!   partition, the same linger as payhook's default). This is ingest
//!   without HTTP, and the ceiling each ingest row is compared with.
//! - Produce, bulk: the same records built up front and sent 500 per produce
//!   request, one request in flight per partition, every partition at once:
//!   what the broker takes when nobody waits per record.
//! - Insert: the same rows written straight to Postgres, 5,000 per
//!   transaction, one connection per partition's share, with no Kafka and no
//!   offsets: `COPY … FROM STDIN BINARY` into `payment_events` plus the
//!   set-based upsert of `orders` (the fastest way in), and, for comparison,
//!   payhook's own `unnest` statements with big batches.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use payhook::{
    db::store::PgStore,
    domain::orders::{OrderService, PaymentEvent},
    kafka::partitioner::partition_for_key,
};
use rskafka::{
    client::{
        partition::{Compression, UnknownTopicHandling},
        producer::{BatchProducerBuilder, aggregator::RecordAggregator},
    },
    record::Record,
};
use tokio::time::Instant;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{Json, Type},
};

use crate::{
    Profile,
    env::{BenchEnv, PARTITIONS, brokers, order_of, payment_event, payment_record, run_tag},
    report::{Row, histogram},
};

const PRODUCE_BATCH: usize = 500;
const INSERT_BATCH: usize = 5_000;

/// Records for each partition, as payhook's partitioner would place them.
fn records_by_partition(run: &str, n: u64) -> Vec<Vec<Record>> {
    let parts = std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
    let mut out: Vec<Vec<Record>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for i in 0..n {
        let p = partition_for_key(order_of(i).as_bytes(), parts);
        out[p as usize].push(payment_record(run, i));
    }
    out
}

/// Produces `n` records to `topic` as fast as the broker takes them;
/// returns records per second.
pub async fn produce_all(env: &BenchEnv, topic: &str, run: &str, n: u64) -> f64 {
    let by_partition = records_by_partition(run, n);
    let client = Arc::new(
        rskafka::client::ClientBuilder::new(vec![brokers()])
            .build()
            .await
            .expect("connect to Kafka"),
    );
    let mut clients = Vec::new();
    for p in 0..PARTITIONS as i32 {
        clients.push(
            client
                .partition_client(topic.to_owned(), p, UnknownTopicHandling::Retry)
                .await
                .expect("partition client"),
        );
    }
    let _ = env;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (records, pc) in by_partition.into_iter().zip(clients) {
        tasks.push(tokio::spawn(async move {
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let batch: Vec<Record> = records.by_ref().take(PRODUCE_BATCH).collect();
                pc.produce(batch, Compression::NoCompression)
                    .await
                    .expect("produce");
            }
        }));
    }
    for t in tasks {
        t.await.expect("produce task");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

pub async fn produce_ceiling(n: u64) -> Row {
    let env = BenchEnv::new("ceil-produce").await;
    let run = run_tag();
    let rate = produce_all(&env, &env.orders_topic.clone(), &run, n).await;
    env.cleanup().await;
    Row::throughput(format!("kafka_produce batch={PRODUCE_BATCH}"), rate)
        .note(format!("{n} records, no HTTP"))
}

/// `in_flight` callers publishing one record each at a time through
/// rskafka's `BatchProducer`; rows with the rate and the ack latency.
pub async fn produce_per_record_ceilings(profile: &Profile) -> Vec<Row> {
    let env = BenchEnv::new("ceil-records").await;
    let run = run_tag();
    let client = rskafka::client::ClientBuilder::new(vec![brokers()])
        .build()
        .await
        .expect("connect to Kafka");
    let linger = env.config(&profile.payhook_overrides()).kafka.linger;
    let mut producers = Vec::new();
    for p in 0..PARTITIONS as i32 {
        let pc = client
            .partition_client(env.orders_topic.clone(), p, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        producers.push(
            BatchProducerBuilder::new(Arc::new(pc))
                .with_linger(linger)
                .build(RecordAggregator::new(900 * 1024)),
        );
    }
    let producers = Arc::new(producers);
    let parts = std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
    let seq = Arc::new(AtomicU64::new(0));
    let mut rows = Vec::new();
    for &in_flight in &profile.in_flight {
        let start = Instant::now();
        let from = start + profile.warmup;
        let until = from + profile.measure;
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let (producers, seq, run) = (Arc::clone(&producers), Arc::clone(&seq), run.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = histogram();
                let mut ok = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= until {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let p = partition_for_key(order_of(n).as_bytes(), parts);
                    let record = payment_record(&run, n);
                    producers[p as usize]
                        .produce(record)
                        .await
                        .expect("produce");
                    if t0 >= from {
                        ok += 1;
                        let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                }
                (h, ok)
            }));
        }
        let mut h = histogram();
        let mut ok = 0;
        for t in tasks {
            let (th, tok) = t.await.expect("producer task");
            h.add(&th).expect("same bounds");
            ok += tok;
        }
        rows.push(
            Row::throughput(
                format!("rskafka_per_record in_flight={in_flight}"),
                ok as f64 / profile.measure.as_secs_f64(),
            )
            .with_latency(&h)
            .note(format!("BatchProducer, linger {linger:?}, no HTTP")),
        );
    }
    drop(producers);
    env.cleanup().await;
    rows
}

/// The rows of event numbers `range`, split by partition.
fn events(run: &str, topic: &str, n: u64) -> Vec<Vec<PaymentEvent>> {
    let parts = std::num::NonZeroU32::new(PARTITIONS).expect("non-zero");
    let mut out: Vec<Vec<PaymentEvent>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for i in 0..n {
        let p = partition_for_key(order_of(i).as_bytes(), parts);
        out[p as usize].push(payment_event(run, i, topic, p));
    }
    out
}

const UPSERT_ORDERS: &str = "
INSERT INTO orders AS cur (order_id, user_id, payment_status, amount, currency,
                           status_occurred_at, last_provider_event_id)
SELECT DISTINCT ON (o) o, u, s, a, c, t, p
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[],
            $6::timestamptz[], $7::text[]) WITH ORDINALITY AS x(o, u, s, a, c, t, p, i)
ORDER BY o, t DESC, i DESC
ON CONFLICT (order_id) DO UPDATE
   SET user_id = EXCLUDED.user_id, payment_status = EXCLUDED.payment_status,
       amount = EXCLUDED.amount, currency = EXCLUDED.currency,
       status_occurred_at = EXCLUDED.status_occurred_at,
       last_provider_event_id = EXCLUDED.last_provider_event_id, updated_at = now()
 WHERE EXCLUDED.status_occurred_at >= cur.status_occurred_at";

async fn copy_batch(db: &mut tokio_postgres::Client, batch: &[PaymentEvent]) {
    let tx = db.transaction().await.expect("begin");
    let sink = tx
        .copy_in(
            "COPY payment_events (provider_event_id, event_id, order_id, user_id, status, \
             amount, currency, occurred_at, payload, kafka_topic, kafka_partition, \
             kafka_offset) FROM STDIN BINARY",
        )
        .await
        .expect("copy in");
    let types = [
        Type::TEXT,
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BPCHAR,
        Type::TIMESTAMPTZ,
        Type::JSONB,
        Type::TEXT,
        Type::INT4,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    for e in batch {
        let w = &e.webhook;
        let payload: &serde_json::value::RawValue =
            serde_json::from_str(&e.payload).expect("valid JSON");
        writer
            .as_mut()
            .write(&[
                &w.provider_event_id.as_str(),
                &e.event_id,
                &w.order_id.as_str(),
                &w.user_id.as_ref().map(|u| u.as_str()),
                &w.status.as_str(),
                &w.amount.map(|a| a.minor_units()),
                &w.currency.as_ref().map(|c| c.as_str()),
                &w.occurred_at.as_datetime(),
                &Json(payload),
                &e.source.topic.as_str(),
                &e.source.partition,
                &e.source.offset,
            ])
            .await
            .expect("copy row");
    }
    writer.finish().await.expect("copy finish");
    let col = |f: &dyn Fn(&PaymentEvent) -> String| batch.iter().map(f).collect::<Vec<_>>();
    let o = col(&|e| e.webhook.order_id.as_str().to_owned());
    let u: Vec<Option<&str>> = batch
        .iter()
        .map(|e| e.webhook.user_id.as_ref().map(|u| u.as_str()))
        .collect();
    let s = col(&|e| e.webhook.status.as_str().to_owned());
    let c: Vec<Option<&str>> = batch
        .iter()
        .map(|e| e.webhook.currency.as_ref().map(|c| c.as_str()))
        .collect();
    let p = col(&|e| e.webhook.provider_event_id.as_str().to_owned());
    let a: Vec<Option<i64>> = batch
        .iter()
        .map(|e| e.webhook.amount.map(|a| a.minor_units()))
        .collect();
    let t: Vec<_> = batch
        .iter()
        .map(|e| e.webhook.occurred_at.as_datetime())
        .collect();
    tx.execute(UPSERT_ORDERS, &[&o, &u, &s, &a, &c, &t, &p])
        .await
        .expect("upsert orders");
    tx.commit().await.expect("commit");
}

async fn unnest_batch(pool: &deadpool_postgres::Pool, batch: &[PaymentEvent]) {
    let mut db = pool.get().await.expect("connection");
    let tx = db.transaction().await.expect("begin");
    let mut store = PgStore::new(&tx);
    OrderService
        .process_payment_webhooks(&mut store, batch)
        .await
        .expect("apply");
    tx.commit().await.expect("commit");
}

/// Writes `n` rows straight to Postgres; returns rows per second.
async fn insert(n: u64, copy: bool) -> f64 {
    let env = BenchEnv::new("ceil-insert").await;
    let run = run_tag();
    let by_partition = events(&run, &env.orders_topic, n);
    let mut dbs = Vec::new();
    for _ in 0..PARTITIONS {
        dbs.push(env.client().await);
    }
    let pool = env.pool(PARTITIONS as usize);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (rows, mut db) in by_partition.into_iter().zip(dbs) {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for batch in rows.chunks(INSERT_BATCH) {
                if copy {
                    copy_batch(&mut db, batch).await;
                } else {
                    unnest_batch(&pool, batch).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("insert task");
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let check = env.client().await;
    let stored: i64 = check
        .query_one("SELECT count(*) FROM payment_events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored as u64, n, "every row is stored");
    drop(check);
    tokio::time::sleep(Duration::from_millis(10)).await;
    env.cleanup().await;
    rate
}

pub async fn insert_ceilings(n: u64) -> Vec<Row> {
    let copy = insert(n, true).await;
    let unnest = insert(n, false).await;
    vec![
        Row::throughput(format!("pg_copy batch={INSERT_BATCH}"), copy)
            .note(format!("{n} rows, COPY BINARY + orders upsert, no Kafka")),
        Row::throughput(format!("pg_unnest batch={INSERT_BATCH}"), unnest)
            .note(format!("{n} rows, payhook's SQL, no Kafka, no offsets")),
    ]
}
