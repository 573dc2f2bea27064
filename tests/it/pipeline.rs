//! The pipeline end to end: HTTP → Kafka → consumer → Postgres.

use std::{collections::HashMap, num::NonZeroU32};

use std::time::{Duration, Instant};

use futures::future::join_all;
use payhook::kafka::{
    envelope::{Envelope, EventType},
    partitioner::partition_for_key,
    producer::{Producer, ProducerConfig},
};
use serde_json::{json, value::RawValue};

use crate::helpers::{Env, PARTITIONS, at, chargeback, payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_become_rows_with_their_envelope_and_raw_payload() {
    let env = Env::new().await;
    let app = env.start(&[]).await;

    let mut body = payment("evt_1", "ord_42", "succeeded", "2026-11-26T10:00:00Z");
    body["provider_extra"] = json!({"risk": 3, "tags": ["a"]});
    let pay_id = app.payment(&body).await;
    let cb_id = app
        .chargeback(&chargeback(
            "cb_9",
            "ord_42",
            "opened",
            "2026-11-26T11:00:00Z",
        ))
        .await;
    env.wait_caught_up().await;

    let row = env
        .db
        .query_one(
            "SELECT event_id, order_id, user_id, status, amount, currency, payload, kafka_partition
             FROM payment_events WHERE provider_event_id = 'evt_1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, uuid::Uuid>(0), pay_id);
    assert_eq!(row.get::<_, &str>(1), "ord_42");
    assert_eq!(row.get::<_, &str>(2), "usr_7");
    assert_eq!(row.get::<_, &str>(3), "succeeded");
    assert_eq!(row.get::<_, i64>(4), 1999);
    assert_eq!(row.get::<_, &str>(5), "USD");
    let payload: serde_json::Value = row.get(6);
    assert_eq!(payload, body, "unknown fields are kept");
    let n = NonZeroU32::new(PARTITIONS).unwrap();
    assert_eq!(row.get::<_, i32>(7), partition_for_key(b"ord_42", n));

    let order = env
        .db
        .query_one(
            "SELECT user_id, payment_status, amount, currency, last_provider_event_id FROM orders WHERE order_id = 'ord_42'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(order.get::<_, &str>(0), "usr_7");
    assert_eq!(order.get::<_, &str>(1), "succeeded");
    assert_eq!(order.get::<_, i64>(2), 1999);
    assert_eq!(order.get::<_, &str>(4), "evt_1");

    let cb = env
        .db
        .query_one(
            "SELECT e.event_id, d.status, d.reason FROM chargeback_events e JOIN disputes d USING (order_id)
             WHERE e.provider_event_id = 'cb_9'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cb.get::<_, uuid::Uuid>(0), cb_id);
    assert_eq!(cb.get::<_, &str>(1), "opened");
    assert_eq!(cb.get::<_, Option<&str>>(2), Some("fraudulent"));

    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_accepted_and_stored_once() {
    let env = Env::new().await;
    let app = env.start(&[]).await;
    let body = payment("evt_dup", "ord_1", "succeeded", &at(0));
    let cb = chargeback("cb_dup", "ord_1", "opened", &at(1));
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.payment(&body).await);
        app.chargeback(&cb).await;
    }
    env.wait_caught_up().await;
    // Three records in Kafka, each with its own envelope id...
    assert_eq!(
        env.end_offsets(&env.orders_topic).await.iter().sum::<i64>(),
        3
    );
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    // ...and one row: the first.
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM chargeback_events").await, 1);
    let stored: uuid::Uuid = env
        .db
        .query_one("SELECT event_id FROM payment_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, ids[0]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orders_interleaved_keep_their_order() {
    let env = Env::new().await;
    let app = env.start(&[]).await;
    const ORDERS: usize = 40;
    const EVENTS: usize = 12;
    // Each order's events go one after another (each waits for its 202);
    // the orders run concurrently, so their events interleave in Kafka.
    let app_ref = &app;
    join_all((0..ORDERS).map(|o| async move {
        for e in 0..EVENTS {
            let status = ["pending", "succeeded", "failed", "refunded"][e % 4];
            app_ref
                .payment(&payment(
                    &format!("evt_{o}_{e:02}"),
                    &format!("ord_{o}"),
                    status,
                    &at(e as i64),
                ))
                .await;
        }
    }))
    .await;
    env.wait_caught_up().await;

    let rows = env
        .db
        .query(
            "SELECT order_id, provider_event_id, kafka_partition, kafka_offset FROM payment_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ORDERS * EVENTS);
    let n = NonZeroU32::new(PARTITIONS).unwrap();
    let mut seen: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for r in &rows {
        let order: String = r.get(0);
        let partition: i32 = r.get(2);
        assert_eq!(partition, partition_for_key(order.as_bytes(), n), "{order}");
        seen.entry(order).or_default().push((r.get(1), r.get(3)));
    }
    for (order, events) in seen {
        // Applied (row id order) in the order sent, at rising offsets.
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{order}");
        assert!(events.windows(2).all(|w| w[0].1 < w[1].1), "{order}");
    }
    // The latest event of every order set its state.
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE payment_status = 'refunded' AND last_provider_event_id LIKE '%_11'")
            .await,
        ORDERS as i64
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_events_are_stored_but_never_move_state_back() {
    let env = Env::new().await;
    let app = env.start(&[]).await;
    app.payment(&payment("p2", "ord_x", "succeeded", &at(60)))
        .await;
    app.payment(&payment("p1", "ord_x", "pending", &at(0)))
        .await;
    app.payment(&payment("p3", "ord_x", "failed", &at(30)))
        .await;
    app.chargeback(&chargeback("c2", "ord_x", "lost", &at(600)))
        .await;
    app.chargeback(&chargeback("c1", "ord_x", "opened", &at(300)))
        .await;
    env.wait_caught_up().await;

    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 3);
    assert_eq!(env.count("SELECT count(*) FROM chargeback_events").await, 2);
    let o = env
        .db
        .query_one(
            "SELECT payment_status, last_provider_event_id FROM orders WHERE order_id = 'ord_x'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (o.get::<_, &str>(0), o.get::<_, &str>(1)),
        ("succeeded", "p2")
    );
    let d = env
        .db
        .query_one(
            "SELECT status, last_provider_event_id FROM disputes WHERE order_id = 'ord_x'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((d.get::<_, &str>(0), d.get::<_, &str>(1)), ("lost", "c2"));

    // A newer event still moves it forward.
    app.payment(&payment("p4", "ord_x", "refunded", &at(90)))
        .await;
    env.wait_caught_up().await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE payment_status = 'refunded'")
            .await,
        1
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_from_its_stored_offset() {
    let env = Env::new().await;

    // First life: apply a first lot, then stop.
    let app = env.start(&[]).await;
    for i in 0..30 {
        app.payment(&payment(
            &format!("a{i}"),
            &format!("ord_{}", i % 7),
            "pending",
            &at(i),
        ))
        .await;
    }
    env.wait_caught_up().await;
    app.stop().await;
    let stored = env
        .stored_offsets("payhook-orders", &env.orders_topic)
        .await;
    assert_eq!(stored.iter().sum::<i64>(), 30);

    // Remove the effects of the first lot but keep the offsets. A consumer
    // that re-read from the start would put them back.
    env.db
        .batch_execute("DELETE FROM payment_events; DELETE FROM orders")
        .await
        .unwrap();

    // Second life: a second lot, sent while the consumer is starting.
    let app = env.start(&[]).await;
    for i in 0..20 {
        app.payment(&payment(
            &format!("b{i}"),
            &format!("ord_{}", i % 7),
            "succeeded",
            &at(100 + i),
        ))
        .await;
    }
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 20);
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events WHERE provider_event_id LIKE 'a%'")
            .await,
        0
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_stream_loses_nothing_and_repeats_nothing() {
    let env = Env::new().await;
    // Fill the topic first (through payhook's own producer, no consumer
    // running), so the consumer below has a backlog to be stopped in.
    const N: usize = 3000;
    let (producer, lanes) = Producer::start(
        &env.kafka,
        &[&env.orders_topic],
        ProducerConfig {
            linger: Duration::from_millis(1),
            queue_per_partition: 1024,
            publish_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await
    .unwrap();
    let producer_ref = &producer;
    let topic = env.orders_topic.as_str();
    join_all((0..N).map(|i| async move {
        let body = payment(
            &format!("m{i:05}"),
            &format!("ord_{}", i % 23),
            "pending",
            &at(i as i64),
        );
        let raw = RawValue::from_string(body.to_string()).unwrap();
        let env = Envelope::new(EventType::OrderWebhook, &format!("ord_{}", i % 23), raw);
        producer_ref.publish(topic, env.to_record()).await.unwrap();
    }))
    .await;
    drop(producer);
    lanes.drained().await;

    // Small transactions, so the backlog takes a while; stop part-way.
    let app = env.start(&[("CONSUMER_MAX_BATCH", "3")]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.count("SELECT count(*) FROM payment_events").await < 100 {
        assert!(Instant::now() < deadline, "consumer made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.stop().await;
    let applied_before = env.count("SELECT count(*) FROM payment_events").await;
    assert!(
        applied_before < N as i64,
        "the stop came after the end: make N larger"
    );
    // What was applied is exactly what the stored offsets acknowledge.
    let stored = env
        .stored_offsets("payhook-orders", &env.orders_topic)
        .await;
    assert_eq!(stored.iter().sum::<i64>(), applied_before);

    let app = env.start(&[("CONSUMER_MAX_BATCH", "3")]).await;
    env.wait_caught_up().await;
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events").await,
        N as i64
    );
    // Each record was applied by exactly one transaction: its row carries the
    // offset it was read at, and no offset appears twice.
    assert_eq!(
        env.count("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM payment_events")
            .await,
        N as i64
    );
    eprintln!("applied before the stop: {applied_before} of {N}");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mixed_webhooks_with_duplicates_and_shuffled_times() {
    use rand::{Rng, SeedableRng, seq::SliceRandom};
    let env = Env::new().await;
    let app = env.start(&[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    const ORDERS: usize = 150;
    // Per order: 8 payments and 3 chargebacks with distinct times, sent in a
    // shuffled order, plus duplicates of some of them.
    let mut sends: Vec<(bool, serde_json::Value)> = Vec::new();
    let mut latest_pay: HashMap<String, (i64, String)> = HashMap::new();
    let mut latest_cb: HashMap<String, (i64, String)> = HashMap::new();
    for o in 0..ORDERS {
        let order = format!("ord_{o}");
        let mut own = Vec::new();
        for e in 0..8i64 {
            let t = rng.random_range(0..100_000);
            let id = format!("p_{o}_{e}");
            let slot = latest_pay
                .entry(order.clone())
                .or_insert((-1, String::new()));
            if t > slot.0 {
                *slot = (t, id.clone());
            }
            own.push((
                false,
                payment(
                    &id,
                    &order,
                    ["pending", "succeeded", "failed", "refunded"][e as usize % 4],
                    &at(t),
                ),
            ));
        }
        for e in 0..3i64 {
            let t = 1_000_000 + e * 1000 + rng.random_range(0..999);
            let id = format!("c_{o}_{e}");
            let slot = latest_cb
                .entry(order.clone())
                .or_insert((-1, String::new()));
            if t > slot.0 {
                *slot = (t, id.clone());
            }
            own.push((
                true,
                chargeback(&id, &order, ["opened", "won", "lost"][e as usize], &at(t)),
            ));
        }
        own.shuffle(&mut rng);
        let dups: Vec<_> = own
            .iter()
            .filter(|_| rng.random_bool(0.2))
            .cloned()
            .collect();
        own.extend(dups);
        sends.extend(own);
    }
    let total = sends.len();
    let unique_pay = ORDERS * 8;
    let unique_cb = ORDERS * 3;
    // 16 at a time.
    let app_ref = &app;
    let chunks: Vec<Vec<(bool, serde_json::Value)>> = sends
        .chunks(total.div_ceil(16))
        .map(|c| c.to_vec())
        .collect();
    let started = Instant::now();
    join_all(chunks.into_iter().map(|chunk| async move {
        for (is_cb, body) in chunk {
            if is_cb {
                app_ref.chargeback(&body).await;
            } else {
                app_ref.payment(&body).await;
            }
        }
    }))
    .await;
    env.wait_caught_up().await;
    eprintln!(
        "{total} webhooks posted and applied in {:?}",
        started.elapsed()
    );

    assert_eq!(
        env.count("SELECT count(*) FROM payment_events").await,
        unique_pay as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM chargeback_events").await,
        unique_cb as i64
    );
    for (table, latest) in [("orders", &latest_pay), ("disputes", &latest_cb)] {
        let rows = env
            .db
            .query(
                &format!("SELECT order_id, last_provider_event_id FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), ORDERS);
        for r in rows {
            let order: String = r.get(0);
            let last: String = r.get(1);
            assert_eq!(last, latest[&order].1, "{table} {order}");
        }
    }
    let n = NonZeroU32::new(PARTITIONS).unwrap();
    for table in ["payment_events", "chargeback_events"] {
        for r in env
            .db
            .query(
                &format!("SELECT order_id, kafka_partition FROM {table}"),
                &[],
            )
            .await
            .unwrap()
        {
            let order: String = r.get(0);
            assert_eq!(r.get::<_, i32>(1), partition_for_key(order.as_bytes(), n));
        }
    }
    app.stop().await;
    env.cleanup().await;
}

/// One produce request per broker: concurrent webhooks for many orders go
/// to the broker in requests that carry several partitions each, and every
/// record is where its acknowledgement says, each order's in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_requests_carry_several_partitions_and_every_record_lands_where_acknowledged() {
    let env = Env::new().await;
    let metrics = payhook::metrics::Metrics::new();
    let (producer, lanes) = Producer::start(
        &env.kafka,
        &[&env.orders_topic],
        ProducerConfig {
            linger: Duration::from_millis(2),
            queue_per_partition: 1024,
            publish_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            metrics: Some(metrics.clone()),
        },
    )
    .await
    .unwrap();
    const ORDERS: usize = 40;
    const EACH: usize = 20;
    let producer_ref = &producer;
    let topic = env.orders_topic.as_str();
    // Each order's events one after the other; the orders concurrently.
    let acknowledged: Vec<Vec<(String, payhook::kafka::producer::Published)>> =
        join_all((0..ORDERS).map(|o| async move {
            let mut out = Vec::new();
            for i in 0..EACH {
                let order = format!("ord_{o}");
                let value = format!("{order}/{i}");
                let record = rskafka::record::Record {
                    key: Some(order.clone().into_bytes()),
                    value: Some(value.clone().into_bytes()),
                    headers: Default::default(),
                    timestamp: chrono::Utc::now(),
                };
                let at = producer_ref.publish(topic, record).await.unwrap();
                out.push((value, at));
            }
            out
        }))
        .await;
    drop(producer);
    lanes.drained().await;

    let text = metrics.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let requests = value("payhook_producer_request_partitions_count");
    let batches_in_requests = value("payhook_producer_request_partitions_sum");
    let batches = value("payhook_producer_batch_records_count");
    let records = value("payhook_producer_batch_records_sum");
    assert_eq!(records, (ORDERS * EACH) as f64);
    assert_eq!(batches_in_requests, batches);
    assert!(
        requests < batches,
        "{requests} produce requests for {batches} partition batches: none carried two partitions"
    );

    for (o, events) in acknowledged.iter().enumerate() {
        let order = format!("ord_{o}");
        let mut last = None;
        for (value, at) in events {
            // Where the partitioner sends the order, after the last one.
            assert_eq!(
                at.partition,
                partition_for_key(order.as_bytes(), NonZeroU32::new(PARTITIONS).unwrap()) as i32
            );
            assert!(
                last < Some(at.offset),
                "{order}: {value} at {} after {last:?}",
                at.offset
            );
            last = Some(at.offset);
            let r = env.record_at(topic, at.partition, at.offset).await;
            assert_eq!(r.key.as_deref(), Some(order.as_bytes()));
            assert_eq!(r.value.as_deref(), Some(value.as_bytes()));
        }
    }
    env.cleanup().await;
}
