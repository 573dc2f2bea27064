//! Several payhook instances on one database and one set of topics share
//! the partitions through leases in Postgres (in-process instances here;
//! `tests/faults` kills, hangs and restarts real processes).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::helpers::{Env, TestApp, at, payment};

async fn status(app: &TestApp, url: &str) -> Value {
    app.http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Partitions each app owns, per topic, from its `/status`.
async fn owned(apps: &[&TestApp]) -> Vec<BTreeMap<String, Vec<i64>>> {
    let mut out = Vec::new();
    for app in apps {
        let v = status(app, &app.url("/status")).await;
        let mut per_topic: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for p in v["partitions"].as_array().unwrap() {
            per_topic
                .entry(p["topic"].as_str().unwrap().to_owned())
                .or_default()
                .push(p["partition"].as_i64().unwrap());
        }
        out.push(per_topic);
    }
    out
}

/// Waits until every topic's partitions are spread as evenly as they can
/// be over `apps`, each partition exactly once. Returns how long it took.
async fn wait_balanced(env: &Env, apps: &[&TestApp], limit: Duration) -> Duration {
    let started = Instant::now();
    let p = env.partitions as usize;
    let n = apps.len();
    loop {
        let owned = owned(apps).await;
        let balanced = [&env.orders_topic, &env.disputes_topic].iter().all(|t| {
            let mut all: Vec<i64> = owned
                .iter()
                .flat_map(|o| o.get(*t).cloned().unwrap_or_default())
                .collect();
            let fair = owned.iter().all(|o| {
                let k = o.get(*t).map_or(0, Vec::len);
                k == p / n || k == p.div_ceil(n)
            });
            all.sort();
            fair && all == (0..p as i64).collect::<Vec<_>>()
        });
        if balanced {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not balanced after {limit:?}: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_sixteen_partitions_and_hand_over_on_exit() {
    let env = Env::with_partitions(16).await;
    let settings = [("CONSUMER_LEASE_TTL", "2s"), ("DATABASE_POOL_SIZE", "6")];
    let a = env.start(&settings).await;
    let b = env.start(&settings).await;
    let c = env.start(&settings).await;
    let took = wait_balanced(&env, &[&a, &b, &c], Duration::from_secs(10)).await;
    println!("3 instances, 16 partitions per topic: balanced {took:?} after start");
    // `payhook status` sees the same from Postgres.
    let fleet = payhook::ops::status::fleet(&env.config(&[])).await.unwrap();
    assert_eq!(fleet.members.iter().filter(|m| m.alive).count(), 3);
    assert_eq!(fleet.partitions.len(), 32);
    for m in &fleet.members {
        let owns = fleet
            .partitions
            .iter()
            .filter(|(p, _)| p.lease_valid && p.owner == Some(m.member_id))
            .count();
        assert!((10..=11).contains(&owns), "{owns}");
    }
    assert!(fleet.partitions.iter().all(|(_, end)| *end == Some(0)));

    // Work spread over all three, every event applied once.
    for (i, app) in [&a, &b, &c].iter().enumerate() {
        for o in 0..20 {
            app.payment(&payment(
                &format!("e{i}-{o}"),
                &format!("ord_{o}"),
                "pending",
                &at(i as i64),
            ))
            .await;
        }
    }
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 60);

    // A clean exit hands its partitions over at once: no waiting for expiry.
    c.stop().await;
    let took = wait_balanced(&env, &[&a, &b], Duration::from_secs(5)).await;
    println!("after a clean exit: rebalanced over 2 in {took:?}");
    a.payment(&payment("after-exit", "ord_x", "pending", &at(9)))
        .await;
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 61);

    // Every epoch of every partition had one owner at a time.
    let overlaps = env
        .count(
            "SELECT count(*) FROM partition_lease_history a
               JOIN partition_lease_history b
                 USING (consumer_group, topic, partition)
              WHERE a.epoch < b.epoch AND b.acquired_at < a.valid_until",
        )
        .await;
    assert_eq!(overlaps, 0);
    assert_eq!(
        env.count(
            "SELECT count(DISTINCT (consumer_group, topic, partition)) FROM partition_lease_history"
        )
        .await,
        32,
        "every partition was acquired at least once"
    );
    a.stop().await;
    b.stop().await;
    // Both left: no member, no owner.
    assert_eq!(env.count("SELECT count(*) FROM consumer_members").await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM partition_leases WHERE owner IS NOT NULL")
            .await,
        0
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_addr_takes_metrics_and_status_off_the_public_listener() {
    let env = Env::new().await;
    let app = env.start(&[("ADMIN_ADDR", "127.0.0.1:0")]).await;
    let admin = app.admin.expect("an admin listener");
    let get = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(app.url("/metrics")).await, 404);
    assert_eq!(get(app.url("/status")).await, 404);
    assert_eq!(get(app.url("/readyz")).await, 200);
    assert_eq!(get(format!("http://{admin}/metrics")).await, 200);
    assert_eq!(get(format!("http://{admin}/readyz")).await, 200);
    assert_eq!(get(format!("http://{admin}/healthz")).await, 200);
    assert_eq!(
        get(format!("http://{admin}/webhooks/payments/orders")).await,
        404
    );
    let v = status(&app, &format!("http://{admin}/status")).await;
    assert_eq!(v["database"], "ok", "{v}");
    assert!(v["member_id"].is_string(), "{v}");
    // Webhooks still work on the public listener.
    app.payment(&payment("adm-1", "ord_adm", "pending", &at(0)))
        .await;
    env.wait_caught_up().await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_at_runtime_are_published_to_and_consumed() {
    let mut env = Env::new().await;
    let app = env
        .start(&[
            ("KAFKA_METADATA_REFRESH", "500ms"),
            ("CONSUMER_LEASE_TTL", "2s"),
        ])
        .await;
    app.payment(&payment("before", "ord_0", "pending", &at(0)))
        .await;
    // Another tool grows the topics, as an operator would.
    for topic in [&env.orders_topic, &env.disputes_topic] {
        let brokers =
            std::env::var("PAYHOOK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let ok =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
                .args([
                    "kafka-class",
                    "org.apache.kafka.tools.TopicCommand",
                    "--bootstrap-server",
                    &brokers,
                    "--alter",
                    "--topic",
                    topic,
                    "--partitions",
                    "6",
                ])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
        assert!(ok, "kafka-topics --alter failed");
    }
    env.partitions = 6;
    for topic in [&env.orders_topic, &env.disputes_topic] {
        // Also refreshes this test client's metadata cache.
        env.kafka
            .wait_for_topic(topic, 6, Duration::from_secs(10))
            .await
            .unwrap();
    }
    // Within a refresh or two, new keys land on the new partitions too and
    // are consumed there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        for _ in 0..20 {
            n += 1;
            app.payment(&payment(
                &format!("after-{n}"),
                &format!("ord_{n}"),
                "pending",
                &at(1),
            ))
            .await;
        }
        env.wait_caught_up().await;
        let new = env
            .count("SELECT count(*) FROM payment_events WHERE kafka_partition >= 3")
            .await;
        if new > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no event ever reached partitions 3..5"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events").await,
        n + 1
    );
    // Every partition of both topics gets an owner (the disputes topic was
    // grown a moment after the orders topic).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leases = env
            .count("SELECT count(*) FROM partition_leases WHERE owner IS NOT NULL")
            .await;
        if leases == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "{leases} of 12 partitions owned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_recreated_with_fewer_partitions_is_owned_whole_within_a_ttl() {
    let env = Env::with_partitions(8).await;
    let settings = [("CONSUMER_LEASE_TTL", "2s")];
    let a = env.start(&settings).await;
    let b = env.start(&settings).await;
    wait_balanced(&env, &[&a, &b], Duration::from_secs(10)).await;
    // The orders topic is deleted and created again with 2 partitions, as
    // an operator might.
    env.kafka.delete_topic(&env.orders_topic).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = env
            .kafka
            .ensure_topic(&env.orders_topic, std::num::NonZeroU32::new(2).unwrap(), 1)
            .await;
        if created.as_ref().is_ok_and(|c| *c)
            && env
                .kafka
                .partitions(&env.orders_topic)
                .await
                .is_ok_and(|p| p.len() == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "cannot re-create: {created:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recreated = Instant::now();
    // Within a TTL (and the round that notices), both partitions that exist
    // have a live owner, and no process keeps a lease on one that does not.
    let owned = |p: i32| {
        format!(
            "SELECT count(*) FROM partition_leases WHERE topic = '{}' AND partition = {p}
                AND owner IS NOT NULL AND expires_at > now()",
            env.orders_topic
        )
    };
    loop {
        let (p0, p1) = (env.count(&owned(0)).await, env.count(&owned(1)).await);
        let stale = env
            .count(&format!(
                "SELECT count(*) FROM partition_leases WHERE topic = '{}' AND partition >= 2
                    AND owner IS NOT NULL AND expires_at > now()",
                env.orders_topic
            ))
            .await;
        if p0 == 1 && p1 == 1 && stale == 0 {
            break;
        }
        assert!(
            recreated.elapsed() < Duration::from_secs(2),
            "after {:?}: partition 0 owned {p0}, partition 1 owned {p1}, \
             {stale} lease(s) on partitions that no longer exist",
            recreated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "re-created with 2 partitions: both owned {:?} later",
        recreated.elapsed()
    );
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}
