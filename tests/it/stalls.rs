//! No record can stall a partition, nothing is ever skipped, and the final
//! state does not depend on arrival order: against the real broker and
//! database.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use payhook::{
    kafka::{
        envelope::{Envelope, EventType},
        partitioner::partition_for_key,
    },
    ops::{self, offsets::ResetTo},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rskafka::{client::partition::Compression, record::Record};
use serde_json::{Value, json, value::RawValue};

use crate::helpers::{Env, PARTITIONS, TestApp, at, chargeback, payment};

fn envelope(kind: EventType, key: &str, body: &Value) -> Vec<u8> {
    let raw = RawValue::from_string(body.to_string()).unwrap();
    serde_json::to_vec(&Envelope::new(kind, key, raw)).unwrap()
}

/// Writes `values` to one partition directly, 500 to a request, in order.
async fn produce_to(env: &Env, topic: &str, partition: i32, key: &str, values: Vec<Vec<u8>>) {
    let client = env.kafka.partition_client(topic, partition).await.unwrap();
    let records: Vec<Record> = values
        .into_iter()
        .map(|v| Record {
            key: Some(key.as_bytes().to_vec()),
            value: Some(v),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        })
        .collect();
    for chunk in records.chunks(500) {
        client
            .produce(chunk.to_vec(), Compression::NoCompression)
            .await
            .unwrap();
    }
}

/// A test-only rule in the test's database: Postgres refuses (SQLSTATE
/// 22023, a data exception) any payment event whose id starts `refused`,
/// as it would refuse a value its column cannot hold.
async fn refuse_some_data(env: &Env) {
    env.db
        .batch_execute(
            "CREATE FUNCTION refuse_data() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.provider_event_id LIKE 'refused%' THEN
                 RAISE EXCEPTION 'value refused for %', NEW.provider_event_id
                   USING ERRCODE = '22023';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_data BEFORE INSERT ON payment_events
               FOR EACH ROW EXECUTE FUNCTION refuse_data();",
        )
        .await
        .unwrap();
}

/// The value of one sample line of `/metrics`, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `/readyz` with its detail: the admin listener's when there is one.
async fn readyz(app: &TestApp) -> Value {
    let url = match app.admin {
        Some(admin) => format!("http://{admin}/readyz"),
        None => app.url("/readyz"),
    };
    app.http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `/readyz` until `pred` holds of it.
async fn wait_readyz(app: &TestApp, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = readyz(app).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stopped_reason<'a>(v: &'a Value, topic: &str, partition: i64) -> Option<&'a str> {
    v["partitions"]
        .as_array()?
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == partition)?["stopped"]
        .as_str()
}

async fn ids(env: &Env) -> Vec<String> {
    env.db
        .query(
            "SELECT provider_event_id FROM payment_events ORDER BY kafka_partition, kafka_offset",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_database_refuses_are_dead_lettered_and_the_partition_moves_on() {
    let env = Env::new().await;
    refuse_some_data(&env).await;
    // No CONSUMER_MAX_ATTEMPTS: a data exception needs no retry limit.
    let app = env.start(&[]).await;
    let started = Instant::now();
    app.payment(&payment("before", "ord_r", "pending", &at(0)))
        .await;
    let refused = app
        .payment(&payment("refused-1", "ord_r", "succeeded", &at(1)))
        .await;
    app.payment(&payment("after", "ord_r", "failed", &at(2)))
        .await;
    // The same kind of record written straight to the topic by another
    // writer: a payload Postgres cannot store as jsonb (\u0000).
    let mut nul = payment("nul", "ord_r", "pending", &at(3));
    nul["note"] = json!("a\u{0}b");
    let p = partition_for_key(b"ord_r", NonZeroU32::new(PARTITIONS).unwrap());
    produce_to(
        &env,
        &env.orders_topic,
        p,
        "ord_r",
        vec![envelope(EventType::OrderWebhook, "ord_r", &nul)],
    )
    .await;
    app.payment(&payment("last", "ord_r", "refunded", &at(4)))
        .await;
    env.wait_caught_up().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");

    assert_eq!(ids(&env).await, ["before", "after", "last"]);
    let letters = ops::dlq::list(&env.config(&[])).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_event = letters
        .iter()
        .find(|d| d.event_id() == Some(refused))
        .unwrap();
    assert_eq!(by_event.error_class(), Some("permanent"));
    assert_eq!(by_event.attempts(), Some(1));
    let msg = by_event.error_message().unwrap();
    assert!(msg.contains("22023") && msg.contains("refused-1"), "{msg}");
    let other = letters
        .iter()
        .find(|d| d.event_id() != Some(refused))
        .unwrap();
    assert_eq!(other.error_class(), Some("permanent"));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_deep_in_a_large_fetch_is_isolated_in_few_transactions() {
    let env = Env::new().await;
    refuse_some_data(&env).await;
    const N: usize = 2000;
    const BAD: usize = 1500;
    let values: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let id = if i == BAD {
                "refused-deep".to_owned()
            } else {
                format!("big-{i}")
            };
            envelope(
                EventType::OrderWebhook,
                "ord_big",
                &payment(&id, "ord_big", "pending", &at(i as i64)),
            )
        })
        .collect();
    produce_to(&env, &env.orders_topic, 0, "ord_big", values).await;

    let started = Instant::now();
    let app = env
        .start(&[
            ("CONSUMER_MAX_BATCH", "2000"),
            ("KAFKA_FETCH_MAX_BYTES", "8388608"),
        ])
        .await;
    env.wait_caught_up().await;
    let took = started.elapsed();

    assert_eq!(
        env.count("SELECT count(*) FROM payment_events").await,
        N as i64 - 1
    );
    let letters = ops::dlq::list(&env.config(&[])).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source_offset(), Some(BAD as i64));
    let text = app.metrics().await;
    let series = |outcome: &str| {
        format!(
            "payhook_consumer_transactions_total{{topic=\"{}\",outcome=\"{outcome}\"}}",
            env.orders_topic
        )
    };
    let (commits, rollbacks) = (
        sample(&text, &series("commit")),
        sample(&text, &series("rollback")),
    );
    println!(
        "bad record at {BAD} of a {N}-record fetch: {commits} commits + {rollbacks} rollbacks, \
         caught up {took:?} after start"
    );
    // ~2·log2(2000) = 22 while halving, plus the rest; never record by record.
    assert!(
        commits + rollbacks <= 30.0,
        "{commits} commits, {rollbacks} rollbacks"
    );
    assert!(rollbacks >= 1.0);
    app.stop().await;
    env.cleanup().await;
}

/// The greatest event of each order by the event order: (time, precedence,
/// id), the rule docs/guarantees.md states ("The event order").
fn expected_state(events: &[(String, String, u8, i64, String)]) -> BTreeMap<String, String> {
    let mut best: BTreeMap<String, (i64, u8, String)> = BTreeMap::new();
    for (order, id, precedence, secs, _) in events {
        let key = (*secs, *precedence, id.clone());
        let cur = best.entry(order.clone()).or_insert(key.clone());
        if key > *cur {
            *cur = key;
        }
    }
    best.into_iter().map(|(o, (_, _, id))| (o, id)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_in_any_order_leave_the_same_state() {
    const ORDERS: usize = 40;
    const PERMUTATIONS: usize = 5;
    let env = Env::new().await;
    // Small transactions: events of one order meet both in one batch (the
    // Rust rule) and across batches (the SQL rule).
    let app = env.start(&[("CONSUMER_MAX_BATCH", "4")]).await;
    let mut rng = StdRng::seed_from_u64(8);
    let pay = ["pending", "failed", "succeeded", "refunded"];
    let dis = ["opened", "won", "lost"];
    // (order, id, precedence, whole second, kind): six payments and three
    // chargebacks per order over two seconds, so ties are the rule.
    let mut events = Vec::new();
    for o in 0..ORDERS {
        for (kind, count, statuses) in [('e', 6, &pay[..]), ('c', 3, &dis[..])] {
            for k in 0..count {
                let p = rng.random_range(0..statuses.len() as u8);
                events.push((
                    format!("o{o}"),
                    format!("{kind}{o}-{k}"),
                    p,
                    rng.random_range(0..2i64),
                    statuses[p as usize].to_owned(),
                ));
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for perm in 0..PERMUTATIONS {
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(perm as u64));
        // Provider retries: a tenth of the events arrive twice.
        let dups: Vec<usize> = order.iter().copied().step_by(10).collect();
        order.extend(dups);
        let events = events.clone();
        let (http, orders_url, cb_url) = (
            app.http.clone(),
            app.url("/webhooks/payments/orders"),
            app.url("/webhooks/payments/chargebacks"),
        );
        tasks.spawn(async move {
            for i in order {
                let (o, id, _, secs, status) = &events[i];
                let (order_id, pid) = (format!("p{perm}-{o}"), format!("p{perm}-{id}"));
                let (url, body) = if id.starts_with('e') {
                    (&orders_url, payment(&pid, &order_id, status, &at(*secs)))
                } else {
                    (&cb_url, chargeback(&pid, &order_id, status, &at(*secs)))
                };
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    env.wait_caught_up().await;

    let split = |kind: char| -> Vec<(String, String, u8, i64, String)> {
        events
            .iter()
            .filter(|e| e.1.starts_with(kind))
            .cloned()
            .collect()
    };
    for (table, kind) in [("orders", 'e'), ("disputes", 'c')] {
        let expected = expected_state(&split(kind));
        let rows = env
            .db
            .query(
                &format!("SELECT order_id, last_provider_event_id FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        let mut per_perm: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for r in rows {
            let (order, id): (String, String) = (r.get(0), r.get(1));
            let (perm, order) = order.split_once('-').unwrap();
            let id = id.split_once('-').unwrap().1.to_owned();
            per_perm
                .entry(perm.to_owned())
                .or_default()
                .insert(order.to_owned(), id);
        }
        assert_eq!(per_perm.len(), PERMUTATIONS, "{table}");
        for (perm, state) in &per_perm {
            assert_eq!(
                state, &expected,
                "{table}: permutation {perm} ended elsewhere"
            );
        }
    }
    println!(
        "{} events ({} orders) posted in {PERMUTATIONS} permutations with 10% repeats: identical final states",
        events.len(),
        ORDERS
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_out_of_range_stops_the_partition_until_an_operator_resets_it() {
    let env = Env::new().await;
    let values: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            envelope(
                EventType::OrderWebhook,
                "ord_oor",
                &payment(&format!("r{i}"), "ord_oor", "pending", &at(i)),
            )
        })
        .collect();
    produce_to(&env, &env.orders_topic, 0, "ord_oor", values).await;
    // Retention removed 0..=4 while the stored offset was still at 2.
    let client = env
        .kafka
        .partition_client(&env.orders_topic, 0)
        .await
        .unwrap();
    client.delete_records(5, 10_000).await.unwrap();
    env.db
        .execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
             VALUES ('payhook-orders', $1, 0, 2)",
            &[&env.orders_topic],
        )
        .await
        .unwrap();

    let app = env.start(&[]).await;
    let topic = env.orders_topic.clone();
    let v = wait_readyz(&app, "stopped", |v| stopped_reason(v, &topic, 0).is_some()).await;
    let reason = stopped_reason(&v, &topic, 0).unwrap();
    assert!(
        reason.contains("below the log start 5") && reason.contains("2..=4"),
        "{reason}"
    );
    assert_eq!(v["status"], "degraded", "{v}");
    // Nothing jumped: the stored offset is where it was, nothing applied.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.stored_offsets("payhook-orders", &topic).await[0], 2);
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 0);
    let text = app.metrics().await;
    let series = |m: &str| format!("payhook_consumer_{m}{{topic=\"{topic}\",partition=\"0\"}}");
    assert_eq!(sample(&text, &series("stopped")), 1.0, "{text}");
    assert_eq!(sample(&text, &series("stalled")), 1.0, "{text}");

    // The operator looks, then moves it on deliberately.
    let cfg = env.config(&[]);
    let dry = ops::offsets::reset(&cfg, &topic, 0, ResetTo::Earliest, true)
        .await
        .unwrap();
    assert_eq!((dry.before, dry.after, dry.applied), (Some(2), 5, false));
    assert_eq!(env.stored_offsets("payhook-orders", &topic).await[0], 2);
    let done = ops::offsets::reset(&cfg, &topic, 0, ResetTo::Earliest, false)
        .await
        .unwrap();
    assert_eq!((done.before, done.after), (Some(2), 5));
    assert!(
        ops::offsets::reset(&cfg, &topic, 0, ResetTo::Offset(11), true)
            .await
            .is_err(),
        "an offset beyond the log is refused"
    );
    env.wait_caught_up().await;
    assert_eq!(ids(&env).await, ["r5", "r6", "r7", "r8", "r9"]);
    wait_readyz(&app, "ready again", |v| v["status"] == "ready").await;
    app.stop().await;
    env.cleanup().await;
}

/// Writes one record with the Java client's console producer, compressed
/// with `codec`: another client's batch, as payhook's topic may receive.
fn produce_with_java(topic: &str, key: &str, codec: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let brokers =
        std::env::var("PAYHOOK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mut child = Command::new(format!("{root}/scripts/services"))
        .args([
            "kafka-class",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            &brokers,
            "--topic",
            topic,
            "--compression-codec",
            codec,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("scripts/services kafka-class");
    use std::io::Write;
    writeln!(
        child.stdin.take().unwrap(),
        "{key}|{{\"written by\":\"the Java client\"}}"
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "console producer failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_a_codec_payhook_cannot_read_stops_its_partition_loudly() {
    let env = Env::new().await;
    let n = NonZeroU32::new(PARTITIONS).unwrap();
    let part = |k: &str| partition_for_key(k.as_bytes(), n);
    let lz4 = "ord_lz4";
    let zstd = (0..)
        .map(|i| format!("ord_zstd_{i}"))
        .find(|k| part(k) != part(lz4))
        .unwrap();
    let app = env.start(&[]).await;
    for key in [lz4, zstd.as_str()] {
        for i in 0..3 {
            app.payment(&payment(&format!("{key}-g{i}"), key, "pending", &at(i)))
                .await;
        }
    }
    env.wait_caught_up().await;
    produce_with_java(&env.orders_topic, lz4, "lz4");
    produce_with_java(&env.orders_topic, &zstd, "zstd");
    for key in [lz4, zstd.as_str()] {
        for i in 3..5 {
            app.payment(&payment(&format!("{key}-g{i}"), key, "pending", &at(i)))
                .await;
        }
    }
    let topic = env.orders_topic.clone();
    let (p_lz4, p_zstd) = (i64::from(part(lz4)), i64::from(part(&zstd)));
    let v = wait_readyz(&app, "both stopped", |v| {
        stopped_reason(v, &topic, p_lz4).is_some() && stopped_reason(v, &topic, p_zstd).is_some()
    })
    .await;
    for (p, codec) in [(p_lz4, "Lz4"), (p_zstd, "Zstd")] {
        let reason = stopped_reason(&v, &topic, p).unwrap();
        assert!(
            reason.contains("offset 3") && reason.contains(codec),
            "{reason}"
        );
    }
    // What came before the unreadable batch is applied; nothing after it.
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 6);

    // After looking at it with a client that reads the codec, the operator
    // steps over the one-record batch.
    let cfg = env.config(&[]);
    for p in [p_lz4, p_zstd] {
        ops::offsets::reset(&cfg, &topic, p as i32, ResetTo::Offset(4), false)
            .await
            .unwrap();
    }
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 10);
    wait_readyz(&app, "ready again", |v| v["status"] == "ready").await;
    app.stop().await;
    env.cleanup().await;
}

/// Posts `body` until it is answered 202 (as a provider retries), within
/// 60 s.
async fn post_until_accepted(app: &TestApp, body: &Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.post("/webhooks/payments/orders", body).await;
        if r.status() == 202 {
            return;
        }
        assert!(Instant::now() < deadline, "never accepted: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_stops_its_partition_and_loses_nothing() {
    let env = Env::with_partitions(1).await;
    let app = env.start(&[("CONSUMER_LEASE_TTL", "2s")]).await;
    let topic = env.orders_topic.clone();
    for i in 0..40 {
        app.payment(&payment(&format!("old-{i}"), "ord_re", "pending", &at(i)))
            .await;
    }
    env.wait_caught_up().await;
    assert_eq!(env.stored_offsets("payhook-orders", &topic).await[0], 40);
    let old_id = env.kafka.topic_id(&topic).await.unwrap().unwrap();

    // The topic is deleted and created again, same name and partitions.
    env.kafka.delete_topic(&topic).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env
        .kafka
        .ensure_topic(&topic, std::num::NonZeroU32::new(1).unwrap(), 1)
        .await
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "cannot re-create the topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_id = env.kafka.topic_id(&topic).await.unwrap().unwrap();
    assert_ne!(old_id, new_id);
    // 100 new webhooks, each answered 202 (after the producer finds the new
    // topic): more than the 40 the stored offset says were applied.
    for i in 0..100 {
        post_until_accepted(
            &app,
            &payment(&format!("new-{i}"), "ord_re", "pending", &at(100 + i)),
        )
        .await;
    }
    // The partition stops and says why; nothing of the new log is applied.
    let v = wait_readyz(&app, "stopped on re-creation", |v| {
        stopped_reason(v, &topic, 0).is_some_and(|r| r.contains("re-created"))
    })
    .await;
    let reason = stopped_reason(&v, &topic, 0).unwrap().to_owned();
    assert!(
        reason.contains(&old_id.to_string()) && reason.contains(&new_id.to_string()),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 40);
    let text = app.metrics().await;
    assert_eq!(
        sample(
            &text,
            &format!("payhook_consumer_stopped{{topic=\"{topic}\",partition=\"0\"}}")
        ),
        1.0
    );

    // The operator looks first, then starts the new log from its start.
    let cfg = env.config(&[]);
    let dry = ops::offsets::reset(&cfg, &topic, 0, ResetTo::Earliest, true)
        .await
        .unwrap();
    assert_eq!(
        (
            dry.before,
            dry.after,
            dry.topic_id_before,
            dry.topic_id_after
        ),
        (Some(40), 0, Some(old_id), new_id)
    );
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 40);
    ops::offsets::reset(&cfg, &topic, 0, ResetTo::Earliest, false)
        .await
        .unwrap();
    env.wait_caught_up().await;
    // Every new webhook applied, none skipped.
    let stored = ids(&env).await;
    assert_eq!(stored.len(), 140, "{stored:?}");
    for i in 0..100 {
        assert!(stored.contains(&format!("new-{i}")), "new-{i} missing");
    }
    wait_readyz(&app, "ready again", |v| v["status"] == "ready").await;
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_cannot_see_offset_0_is_reported_or_stops() {
    let env = Env::with_partitions(1).await;
    let values: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            envelope(
                EventType::OrderWebhook,
                "ord_fs",
                &payment(&format!("fs{i}"), "ord_fs", "pending", &at(i)),
            )
        })
        .collect();
    produce_to(&env, &env.orders_topic, 0, "ord_fs", values).await;
    // Retention removed 0..=3 before payhook ever read the partition.
    let client = env
        .kafka
        .partition_client(&env.orders_topic, 0)
        .await
        .unwrap();
    client.delete_records(4, 10_000).await.unwrap();
    let topic = env.orders_topic.clone();

    // CONSUMER_FIRST_START=stop: it stops and says why, on the admin
    // listener; the public probe says the word only.
    let app = env
        .start(&[
            ("CONSUMER_FIRST_START", "stop"),
            ("ADMIN_ADDR", "127.0.0.1:0"),
        ])
        .await;
    let v = wait_readyz(&app, "stopped at first start", |v| {
        stopped_reason(v, &topic, 0).is_some()
    })
    .await;
    let reason = stopped_reason(&v, &topic, 0).unwrap();
    assert!(
        reason.contains("never consumed") && reason.contains("records 0..=3 were deleted"),
        "{reason}"
    );
    assert_eq!(v["status"], "degraded", "{v}");
    let public = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(
        public.json::<Value>().await.unwrap(),
        serde_json::json!({"status": "degraded"})
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 0);
    app.stop().await;

    // The default: it starts at the first record there, and says so.
    let app = env.start(&[]).await;
    env.wait_caught_up().await;
    assert_eq!(ids(&env).await, ["fs4", "fs5"]);
    let status: Value = app
        .http
        .get(app.url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let notice = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == topic.as_str())
        .and_then(|p| p["notice"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(notice.contains("records 0..=3 were deleted"), "{status}");
    let text = app.metrics().await;
    assert_eq!(
        sample(
            &text,
            &format!(
                "payhook_consumer_first_start_gap_records{{topic=\"{topic}\",partition=\"0\"}}"
            )
        ),
        4.0,
        "{text}"
    );
    app.stop().await;
    env.cleanup().await;
}
