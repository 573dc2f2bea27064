//! How the consumer groups work into transactions (`CONSUMER_LINGER`), and
//! ingest-only replicas (`CONSUMER_ENABLED=false`).

use std::time::{Duration, Instant};

use crate::helpers::{Env, TestApp, at, payment};

/// Committed consumer transactions on `topic`, from `/metrics`.
async fn commits(app: &TestApp, topic: &str) -> u64 {
    let text = app.metrics().await;
    let prefix =
        format!(r#"payhook_consumer_transactions_total{{topic="{topic}",outcome="commit"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a counter"))
}

/// Posts `n` payments 20 ms apart, then waits until they are all applied;
/// returns the transactions that took.
async fn trickle(env: &Env, app: &TestApp, tag: &str, n: usize) -> u64 {
    let before = commits(app, &env.orders_topic).await;
    for i in 0..n {
        let id = format!("evt_{tag}_{i}");
        app.payment(&payment(
            &id,
            &format!("ord_{tag}_{i}"),
            "succeeded",
            &at(i as i64),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.wait_caught_up().await;
    commits(app, &env.orders_topic).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_partition_lingers_so_a_trickle_is_applied_in_few_transactions() {
    // One partition, so every event lands on the same consumer.
    let env = Env::with_partitions(1).await;

    // Without a linger, each event that arrives on its own is applied in its
    // own transaction.
    let eager = env.start(&[("CONSUMER_LINGER", "0ms")]).await;
    let one_by_one = trickle(&env, &eager, "eager", 20).await;
    eager.stop().await;
    assert!(
        one_by_one >= 10,
        "without a linger: {one_by_one} transactions for 20 events"
    );

    // With one, an event arriving after a quiet spell is still applied at
    // once (the fetch after an empty one does not linger)...
    let app = env.start(&[("CONSUMER_LINGER", "3s")]).await;
    let started = Instant::now();
    app.payment(&payment("evt_alone", "ord_alone", "succeeded", &at(0)))
        .await;
    env.wait_caught_up().await;
    let alone = started.elapsed();
    assert!(
        alone < Duration::from_secs(2),
        "a lone event waited {alone:?} (linger 3s)"
    );
    // ...and the events right behind it wait for each other: the fetch after
    // one that brought records holds until KAFKA_FETCH_MIN_BYTES or the linger.
    let lingered = trickle(&env, &app, "linger", 20).await;
    assert!(
        lingered <= 3,
        "with a linger: {lingered} transactions for 20 events"
    );
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 41);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_only_replica_accepts_webhooks_and_leaves_them_to_the_consumers() {
    let env = Env::new().await;
    let edge = env.start(&[("CONSUMER_ENABLED", "false")]).await;
    for i in 0..5 {
        edge.payment(&payment(
            &format!("evt_{i}"),
            &format!("ord_{i}"),
            "succeeded",
            &at(0),
        ))
        .await;
    }
    // Published, acknowledged, and nobody applies them: the replica took no
    // leases and is not a fleet member.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let published: i64 = env.end_offsets(&env.orders_topic).await.iter().sum();
    assert_eq!(published, 5);
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM consumer_members").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM partition_leases").await, 0);

    // A consuming replica applies what the edge accepted.
    let worker = env.start(&[]).await;
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 5);
    edge.stop().await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_several_partitions_share_a_transaction_and_keep_their_positions() {
    use payhook::kafka::partitioner::partition_for_key;

    let env = Env::with_partitions(8).await;
    // A backlog on every partition, accepted by an ingest-only replica...
    let edge = env.start(&[("CONSUMER_ENABLED", "false")]).await;
    let n = 1600;
    for wave in 0..n / 40 {
        futures::future::join_all((0..40).map(|i| {
            let k = wave * 40 + i;
            let body = payment(
                &format!("evt_{k}"),
                &format!("ord_{}", k % 400),
                "succeeded",
                &at(k as i64),
            );
            let edge = &edge;
            async move { edge.payment(&body).await }
        }))
        .await;
    }
    edge.stop().await;
    // ...so all eight partitions have runs ready at once when consuming starts.
    let app = env.start(&[]).await;
    env.wait_caught_up().await;
    app.stop().await;

    let rows = env
        .db
        .query(
            "SELECT provider_event_id, order_id, kafka_partition, kafka_offset, xmin::text
               FROM payment_events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), n);
    let parts = std::num::NonZeroU32::new(8).unwrap();
    let mut positions = std::collections::HashSet::new();
    let mut partitions_of_tx: std::collections::HashMap<String, std::collections::HashSet<i32>> =
        Default::default();
    for r in &rows {
        let (order, partition, offset): (&str, i32, i64) = (r.get(1), r.get(2), r.get(3));
        // Each event keeps the position it was read at, even in a
        // transaction that also holds other partitions' events.
        assert_eq!(
            partition,
            partition_for_key(order.as_bytes(), parts),
            "{order}"
        );
        assert!(
            positions.insert((partition, offset)),
            "two events at {partition}/{offset}"
        );
        partitions_of_tx
            .entry(r.get(4))
            .or_default()
            .insert(partition);
    }
    for r in rows.iter().step_by(97) {
        let record = env.record_at(&env.orders_topic, r.get(2), r.get(3)).await;
        let value = String::from_utf8(record.value.unwrap()).unwrap();
        let id: &str = r.get(0);
        assert!(
            value.contains(&format!(r#""provider_event_id":"{id}""#)),
            "{id} is not at its position"
        );
    }
    let shared = partitions_of_tx.values().filter(|p| p.len() > 1).count();
    assert!(
        shared > 0,
        "no transaction held more than one partition's run ({} transactions)",
        partitions_of_tx.len()
    );
    env.cleanup().await;
}
