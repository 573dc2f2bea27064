//! PAYLOAD_RETENTION against the real broker and database: the provider's
//! stored payloads older than the retention are cleared, recent ones kept,
//! and nothing payhook needs changes: orders, payments and disputes stay as
//! they were, and a redelivered event whose payload is gone is still a
//! duplicate, while later events still apply.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{Env, STRIPE_SECRET, at, chargeback, payment};
use crate::providers::{T0, intent, stripe, stripe_event};

/// Every column of the events of `table` named in `ids`, but the payloads,
/// by event id: what must survive the clearing unchanged.
async fn kept_columns(env: &Env, table: &str, ids: &[&str]) -> Vec<Value> {
    let sql = format!(
        "SELECT to_jsonb(e) - 'payload' - 'payload_raw' - 'payload_cleared_at'
           FROM {table} e WHERE provider_event_id = ANY($1) ORDER BY provider_event_id"
    );
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    env.db
        .query(&sql, &[&ids])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The three old events' payloads are cleared, and the clearing stamped.
async fn assert_old_payloads_cleared(env: &Env) {
    for (table, id) in [
        ("payment_events", "evt_r1"),
        ("payment_events", "evt_rs1"),
        ("chargeback_events", "cb_r1"),
    ] {
        assert_eq!(
            payload_state(env, table, id).await,
            (false, false, true),
            "{id}"
        );
    }
}

/// (payload is there, payload_raw is there, payload_cleared_at is set) of
/// one event.
async fn payload_state(env: &Env, table: &str, id: &str) -> (bool, bool, bool) {
    let r = env
        .db
        .query_one(
            &format!(
                "SELECT payload IS NOT NULL, payload_raw IS NOT NULL, payload_cleared_at IS NOT NULL
                   FROM {table} WHERE provider_event_id = $1"
            ),
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Every row of the state tables, as JSON.
async fn state(env: &Env) -> Vec<Value> {
    let mut out = Vec::new();
    for t in ["orders", "payments", "payment_refunds", "disputes"] {
        for r in env
            .db
            .query(
                &format!("SELECT to_jsonb(t) FROM {t} t ORDER BY to_jsonb(t)::text"),
                &[],
            )
            .await
            .unwrap()
        {
            out.push(r.get(0));
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_payloads_are_cleared_recent_ones_kept_and_nothing_else_changes() {
    let env = Env::new().await;
    let app = env
        .start(&[
            ("PAYLOAD_RETENTION", "1h"),
            ("PAYLOAD_RETENTION_INTERVAL", "100ms"),
            ("STRIPE_WEBHOOK_SECRETS", STRIPE_SECRET),
            ("STRIPE_LIVEMODE", "test"),
        ])
        .await;
    assert_eq!(
        metric(&app.metrics().await, "payhook_payloads_cleared_total"),
        0.0
    );
    // Old: a payment and its chargeback (payhook's own events), and a
    // Stripe payment (payload and payload_raw).
    let old_pay = payment("evt_r1", "ord_r1", "succeeded", &at(0));
    app.payment(&old_pay).await;
    let old_cb = chargeback("cb_r1", "ord_r1", "opened", &at(60));
    app.chargeback(&old_cb).await;
    let stripe_pay = stripe_event(
        "evt_rs1",
        "payment_intent.succeeded",
        T0,
        intent("pi_rs1", "ord_rs1", "succeeded"),
    );
    assert_eq!(stripe(&app, &stripe_pay).await.0, 202);
    // Recent: kept.
    app.payment(&payment("evt_r2", "ord_r2", "succeeded", &at(0)))
        .await;
    env.wait_caught_up().await;
    assert_eq!(
        payload_state(&env, "payment_events", "evt_rs1").await,
        (true, true, false)
    );
    // Stored three hours ago, as far as the database knows.
    let kept_pay = kept_columns(&env, "payment_events", &["evt_r1", "evt_rs1"]).await;
    let kept_cb = kept_columns(&env, "chargeback_events", &["cb_r1"]).await;
    let before = state(&env).await;
    for table in ["payment_events", "chargeback_events"] {
        env.db
            .execute(
                &format!(
                    "UPDATE {table} SET stored_at = stored_at - interval '3 hours'
                      WHERE provider_event_id IN ('evt_r1', 'evt_rs1', 'cb_r1')"
                ),
                &[],
            )
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    while payload_state(&env, "chargeback_events", "cb_r1").await.0
        || payload_state(&env, "payment_events", "evt_rs1").await.0
        || payload_state(&env, "payment_events", "evt_r1").await.0
    {
        assert!(Instant::now() < deadline, "old payloads never cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_old_payloads_cleared(&env).await;
    assert_eq!(
        payload_state(&env, "payment_events", "evt_r2").await,
        (true, false, false),
        "a recent payload is kept"
    );
    // Every other column, and every order, payment and dispute: unchanged
    // (but stored_at, which the test moved).
    let unmoved = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("stored_at");
                r
            })
            .collect()
    };
    assert_eq!(
        unmoved(kept_columns(&env, "payment_events", &["evt_r1", "evt_rs1"]).await),
        unmoved(kept_pay)
    );
    assert_eq!(
        unmoved(kept_columns(&env, "chargeback_events", &["cb_r1"]).await),
        unmoved(kept_cb)
    );
    assert_eq!(state(&env).await, before);
    let m = app.metrics().await;
    assert_eq!(metric(&m, "payhook_payloads_cleared_total"), 3.0, "{m}");

    // The provider delivers them again: duplicates, changing nothing, not
    // even bringing the payload back.
    let state_now = state(&env).await;
    app.payment(&old_pay).await;
    app.chargeback(&old_cb).await;
    assert_eq!(stripe(&app, &stripe_pay).await.0, 202);
    env.wait_caught_up().await;
    assert_eq!(state(&env).await, state_now);
    assert_old_payloads_cleared(&env).await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM payment_events WHERE provider_event_id IN ('evt_r1', 'evt_rs1')"
        )
        .await,
        2
    );
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("payhook_consumer_records_total{")
                && l.contains("outcome=\"duplicate\"")
                && l.ends_with(" 2")),
        "{m}"
    );
    // A later event of the order whose payloads are gone still orders
    // after them and applies.
    app.payment(&payment("evt_r3", "ord_r1", "refunded", &at(120)))
        .await;
    app.chargeback(&chargeback("cb_r2", "ord_r1", "won", &at(180)))
        .await;
    env.wait_caught_up().await;
    let r = env
        .db
        .query_one(
            "SELECT o.payment_status, o.last_provider_event_id, d.status
               FROM orders o JOIN disputes d USING (order_id) WHERE order_id = 'ord_r1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        ("refunded".into(), "evt_r3".into(), "won".into())
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retention_payloads_are_kept() {
    let env = Env::new().await;
    let app = env.start(&[("PAYLOAD_RETENTION_INTERVAL", "100ms")]).await;
    app.payment(&payment("evt_k1", "ord_k1", "succeeded", &at(0)))
        .await;
    env.wait_caught_up().await;
    env.db
        .execute(
            "UPDATE payment_events SET stored_at = now() - interval '3650 days'",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        payload_state(&env, "payment_events", "evt_k1").await,
        (true, false, false)
    );
    assert_eq!(
        metric(&app.metrics().await, "payhook_payloads_cleared_total"),
        0.0
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_cleared_in_batches() {
    let env = Env::new().await;
    let n = payhook::db::retention::BATCH * 2 + 345;
    // Old events written straight to the table (the job reads nothing else).
    env.db
        .execute(
            "INSERT INTO payment_events (provider_event_id, event_id, order_id, user_id, status,
                                         amount, currency, occurred_at, payload, kafka_topic,
                                         kafka_partition, kafka_offset, stored_at)
             SELECT 'evt_b' || i, gen_random_uuid(), 'ord_b', 'usr_7', 'succeeded', 1999, 'USD',
                    now(), '{\"email\": \"someone@example.com\"}', 't', 0, i,
                    now() - interval '2 days' + i * interval '1 ms'
               FROM generate_series(1, $1::int8) i",
            &[&n],
        )
        .await
        .unwrap();
    // And one just inside the retention.
    env.db
        .execute(
            "UPDATE payment_events SET stored_at = now() - interval '23 hours'
              WHERE provider_event_id = 'evt_b1'",
            &[],
        )
        .await
        .unwrap();
    let pool = payhook::db::pool(&env.db_url, 2, Duration::from_secs(5)).unwrap();
    let mut batches = Vec::new();
    let total = payhook::db::retention::clear_payloads(
        &pool,
        Duration::from_secs(86_400),
        Duration::from_secs(30),
        |b| batches.push(b),
    )
    .await
    .unwrap();
    assert_eq!(total, n as u64 - 1);
    assert_eq!(batches.iter().sum::<u64>(), total);
    assert!(batches.len() >= 3, "{batches:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events WHERE payload IS NOT NULL")
            .await,
        1
    );
    // Nothing left to do.
    let again = payhook::db::retention::clear_payloads(
        &pool,
        Duration::from_secs(86_400),
        Duration::from_secs(30),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again, 0);
    env.cleanup().await;
}
