//! Consume: a topic pre-filled with `n` envelopes, drained by payhook's
//! consumer into Postgres (offsets stored in the same transaction as the
//! rows, as always). The clock runs from the consumer's start until every
//! partition's stored offset has reached the end of the log.

use std::time::Duration;

use payhook::{
    consume::{config::ConsumerConfig, fleet, health::ConsumerHealth, sink::DeadLetters},
    kafka::producer::{Producer, ProducerConfig},
    metrics::Metrics,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Profile,
    ceilings::produce_all,
    env::{BenchEnv, run_tag},
    report::Row,
};

pub async fn run(profile: &Profile, ceiling: Option<f64>) -> Vec<Row> {
    let env = BenchEnv::new("consume").await;
    let n = profile.consume_n;
    let run = run_tag();
    let topic = env.orders_topic.clone();
    produce_all(&env, &topic, &run, n).await;
    let cfg = env.config(&profile.payhook_overrides());
    let pool = env.pool(cfg.database.pool_size);
    let db = env.client().await;
    let group = cfg.kafka.orders_consumer_group.clone();
    let ccfg = ConsumerConfig::new(
        &group,
        &topic,
        &cfg.consumer,
        &cfg.kafka,
        &cfg.database,
        cfg.http.occurred_at_max_future,
    );
    let (dead_letter_producer, dead_letter_lanes) = Producer::start(
        &env.kafka,
        &[&env.dlq_topic],
        ProducerConfig::from_config(&cfg.kafka),
    )
    .await
    .expect("start the dead-letter producer");
    let shutdown = CancellationToken::new();
    let t0 = Instant::now();
    let metrics = Metrics::new();
    let member = uuid::Uuid::new_v4();
    let shared = fleet::Context {
        member,
        kafka: env.kafka.clone(),
        pool: pool.clone(),
        dead_letters: DeadLetters {
            producer: dead_letter_producer.clone(),
            topic: env.dlq_topic.clone(),
            max_bytes: payhook::consume::dlq::DEFAULT_MAX_MESSAGE_BYTES,
        },
        health: ConsumerHealth::new(cfg.consumer.stall_after, metrics.clone()),
        committers: payhook::consume::committer::Committers::start(
            &pool,
            member,
            &metrics,
            std::slice::from_ref(&ccfg),
        ),
        metrics,
    };
    let task = tokio::spawn(fleet::run(
        shared,
        vec![ccfg],
        "bench".into(),
        cfg.consumer.lease_ttl,
        shutdown.clone(),
    ));
    let deadline = t0 + Duration::from_secs(600);
    loop {
        if env.stored_total(&db, &group).await as u64 >= n {
            break;
        }
        assert!(Instant::now() < deadline, "consumer did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    shutdown.cancel();
    let _ = task.await;
    drop(dead_letter_producer);
    dead_letter_lanes.drained().await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM payment_events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored as u64, n, "every event stored once");
    drop(db);
    env.cleanup().await;
    vec![
        Row::throughput(format!("n={n}"), n as f64 / took.as_secs_f64())
            .ratio_to(ceiling)
            .note(format!(
                "{:.1} s, CONSUMER_MAX_BATCH={}, {} partitions",
                took.as_secs_f64(),
                cfg.consumer.max_batch,
                crate::env::PARTITIONS
            )),
    ]
}
