//! Stripe and Adyen webhooks, signed as each provider signs, through the
//! real broker and database to order and dispute rows.
//!
//! The fixtures are written for payhook from the shapes Stripe's API
//! reference (event, PaymentIntent, Charge, Dispute) and Adyen's
//! `NotificationRequestItem` documentation describe; none is copied.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{Env, ORDERS_SECRET, STRIPE_SECRET, TestApp, sign_stripe, unix_now};

pub(crate) const ADYEN_KEY: &str =
    "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
/// 2026-11-26T08:00:00Z: Stripe's `created` is whole seconds.
pub(crate) const T0: i64 = 1_795_680_000;

pub(crate) fn verified(
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("WEBHOOK_VERIFY", "on"),
        ("WEBHOOK_ORDERS_SECRETS", ORDERS_SECRET),
        ("WEBHOOK_CHARGEBACKS_SECRETS", ORDERS_SECRET),
        ("STRIPE_WEBHOOK_SECRETS", STRIPE_SECRET),
        ("ADYEN_HMAC_KEYS", ADYEN_KEY),
        ("ADYEN_MERCHANT_ACCOUNTS", "PayhookShop"),
        // The Stripe fixtures are test-mode events.
        ("STRIPE_LIVEMODE", "test"),
        ("DISPUTE_SWEEP_INTERVAL", "100ms"),
    ];
    v.extend_from_slice(extra);
    v
}

// ---- Stripe fixtures ----

pub(crate) fn stripe_event(id: &str, t: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "api_version": "2024-06-20", "created": created,
           "livemode": false, "pending_webhooks": 1, "type": t,
           "data": {"object": object}})
}

pub(crate) fn intent(pi: &str, order: &str, status: &str) -> Value {
    json!({"id": pi, "object": "payment_intent", "amount": 4200, "currency": "usd",
           "latest_charge": format!("ch_{pi}"), "status": status,
           "metadata": {"order_id": order, "user_id": "usr_s"}})
}

pub(crate) fn charge(pi: &str, order: &str) -> Value {
    json!({"id": format!("ch_{pi}"), "object": "charge", "amount": 4200,
           "amount_refunded": 4200, "currency": "usd", "payment_intent": pi, "refunded": true,
           "metadata": {"order_id": order, "user_id": "usr_s"}})
}

pub(crate) fn stripe_dispute(pi: &str, status: &str) -> Value {
    json!({"id": format!("dp_{pi}"), "object": "dispute", "amount": 4200, "currency": "usd",
           "charge": format!("ch_{pi}"), "payment_intent": pi, "reason": "fraudulent",
           "status": status})
}

/// A Stripe body as Stripe sends it: pretty-printed, so that storing it
/// byte for byte is not the same as storing its value.
pub(crate) fn stripe_body(event: &Value) -> String {
    serde_json::to_string_pretty(event).unwrap()
}

/// Posts a Stripe event signed with the Stripe scheme; returns status and
/// body text.
pub(crate) async fn stripe(app: &TestApp, event: &Value) -> (u16, String) {
    let body = stripe_body(event);
    let ts = unix_now();
    let sig = sign_stripe(STRIPE_SECRET, ts, body.as_bytes());
    let r = app
        .post_raw(
            "/webhooks/stripe",
            &crate::helpers::stripe_headers(format!("t={ts},v1={sig}")),
            body,
        )
        .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

// ---- Adyen fixtures ----

pub(crate) fn adyen_item(code: &str, success: bool, psp: &str, order: &str, date: &str) -> Value {
    let mut item = json!({
        "additionalData": {"shopperReference": "usr_a", "chargebackReasonCode": "10.4"},
        "amount": {"currency": "EUR", "value": 1999},
        "eventCode": code, "eventDate": date, "merchantAccountCode": "PayhookShop",
        "merchantReference": order, "paymentMethod": "visa", "pspReference": psp,
        "reason": "", "success": if success { "true" } else { "false" }
    });
    sign_adyen(&mut item);
    item
}

/// Adyen's HMAC, computed here from its documented definition with the
/// primitives, not through payhook.
pub(crate) fn sign_adyen(item: &mut Value) {
    use hmac::Mac;
    let text = |v: Option<&Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let signing = [
        text(item.get("pspReference")),
        text(item.get("originalReference")),
        text(item.get("merchantAccountCode")),
        text(item.get("merchantReference")),
        text(item.pointer("/amount/value")),
        text(item.pointer("/amount/currency")),
        text(item.get("eventCode")),
        text(item.get("success")),
    ]
    .join(":");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(ADYEN_KEY).unwrap()).unwrap();
    mac.update(signing.as_bytes());
    item["additionalData"]["hmacSignature"] = base64::engine::general_purpose::STANDARD
        .encode(mac.finalize().into_bytes())
        .into();
}

pub(crate) fn adyen_batch(items: &[Value]) -> String {
    let wrapped: Vec<Value> = items
        .iter()
        .map(|i| json!({ "NotificationRequestItem": i }))
        .collect();
    serde_json::to_string_pretty(&json!({"live": "false", "notificationItems": wrapped})).unwrap()
}

pub(crate) async fn adyen(app: &TestApp, body: String) -> (u16, String) {
    let r = app
        .post_raw(
            "/webhooks/adyen",
            &[("content-type", "application/json".to_owned())],
            body,
        )
        .await;
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) async fn order(env: &Env, order: &str) -> Option<(String, String, i64, String, String)> {
    env.db
        .query_opt(
            "SELECT payment_status, user_id, amount, currency::text, last_provider_event_id
             FROM orders WHERE order_id = $1",
            &[&order],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

async fn dispute(env: &Env, order: &str) -> Option<(String, String)> {
    env.db
        .query_opt(
            "SELECT status, last_provider_event_id FROM disputes WHERE order_id = $1",
            &[&order],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_events_end_as_order_and_dispute_rows() {
    let env = Env::new().await;
    let app = env.start(&verified(&[])).await;

    let pay = stripe_event(
        "evt_s1",
        "payment_intent.succeeded",
        T0,
        intent("pi_s1", "ord_s1", "succeeded"),
    );
    let (status, body) = stripe(&app, &pay).await;
    assert_eq!(status, 202, "{body}");
    let disputed = stripe_event(
        "evt_s2",
        "charge.dispute.created",
        T0 + 60,
        stripe_dispute("pi_s1", "needs_response"),
    );
    assert_eq!(stripe(&app, &disputed).await.0, 202);
    // A type payhook does not map: 2xx, counted, nothing published.
    let before = env.end_offsets(&env.orders_topic).await;
    let unknown = stripe_event("evt_s3", "customer.created", T0, json!({"id": "cus_1"}));
    let (status, body) = stripe(&app, &unknown).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ignored":true}"#));
    // A forged event: refused, nothing published.
    let r = app
        .post_raw(
            "/webhooks/stripe",
            &crate::helpers::stripe_headers(format!("t={},v1={}", unix_now(), "ab".repeat(32))),
            pay.to_string(),
        )
        .await;
    assert_eq!(r.status(), 401);
    env.wait_caught_up().await;

    assert_eq!(
        order(&env, "ord_s1").await,
        Some((
            "succeeded".into(),
            "usr_s".into(),
            4200,
            "USD".into(),
            "evt_s1".into()
        ))
    );
    assert_eq!(
        dispute(&env, "ord_s1").await,
        Some(("opened".into(), "evt_s2".into()))
    );
    // The provider's event is stored whole, with its object ids.
    let row = env
        .db
        .query_one(
            "SELECT payload, provider, provider_object_ids, payload_raw FROM payment_events
             WHERE provider_event_id = 'evt_s1'",
            &[],
        )
        .await
        .unwrap();
    let payload: Value = row.get(0);
    assert_eq!(payload, pay);
    assert_eq!(row.get::<_, String>(3), stripe_body(&pay), "byte for byte");
    assert_eq!(row.get::<_, String>(1), "stripe");
    assert_eq!(
        row.get::<_, Vec<String>>(2),
        ["pi_s1".to_owned(), "ch_pi_s1".to_owned()]
    );
    let row = env
        .db
        .query_one(
            "SELECT payload, provider, payload_raw FROM chargeback_events
             WHERE provider_event_id = 'evt_s2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Value>(0), disputed);
    assert_eq!(row.get::<_, String>(1), "stripe");
    assert_eq!(row.get::<_, String>(2), stripe_body(&disputed));
    assert_eq!(env.end_offsets(&env.orders_topic).await, before);
    let m = app.metrics().await;
    assert!(
        m.contains(
            r#"payhook_provider_events_ignored_total{provider="stripe",event_type="customer.created"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"payhook_webhooks_total{endpoint="stripe",status="401"} 1"#));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_payment_without_metadata_is_accepted_and_dead_lettered_with_its_reason() {
    let env = Env::new().await;
    let app = env.start(&verified(&[])).await;
    let mut object = intent("pi_m1", "ord_m1", "succeeded");
    object["metadata"] = json!({"campaign": "winter"});
    let ev = stripe_event("evt_m1", "payment_intent.succeeded", T0, object);
    assert_eq!(stripe(&app, &ev).await.0, 202);
    // Dated far beyond OCCURRED_AT_MAX_FUTURE: not refused at the edge (Stripe
    // would retry it for days), dead-lettered by the consumer.
    let future = stripe_event(
        "evt_m2",
        "payment_intent.succeeded",
        unix_now() + 30 * 86_400,
        intent("pi_m2", "ord_m2", "succeeded"),
    );
    assert_eq!(stripe(&app, &future).await.0, 202);
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 0);
    let mut letters = payhook::ops::dlq::list(&env.config(&[])).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    letters.retain(|l| {
        let why = l.error_message().unwrap();
        !(l.key() == "ord_m2" && why.contains("OCCURRED_AT_MAX_FUTURE"))
    });
    assert_eq!(letters.len(), 1, "{letters:?}");
    let why = letters[0].error_message().unwrap();
    assert!(why.contains("metadata.order_id"), "{why}");
    assert_eq!(letters[0].error_class(), Some("permanent"));
    // The dead letter holds the event byte for byte.
    let original: Value =
        serde_json::from_slice(letters[0].record.value.as_deref().unwrap()).unwrap();
    let payload = std::str::from_utf8(letters[0].record.value.as_deref().unwrap()).unwrap();
    assert!(payload.contains(&stripe_body(&ev)), "{payload}");
    assert_eq!(original["payload"], ev);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_before_its_payment_waits_then_applies_with_it() {
    let env = Env::new().await;
    let app = env
        .start(&verified(&[("DISPUTE_PAYMENT_WAIT", "5m")]))
        .await;
    let created = stripe_event(
        "evt_w1",
        "charge.dispute.created",
        T0 + 100,
        stripe_dispute("pi_w1", "needs_response"),
    );
    let closed = stripe_event(
        "evt_w2",
        "charge.dispute.closed",
        T0 + 200,
        stripe_dispute("pi_w1", "lost"),
    );
    // Closed first, then created, then created again: all wait.
    for ev in [&closed, &created, &created] {
        assert_eq!(stripe(&app, ev).await.0, 202);
    }
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 2);
    assert_eq!(env.count("SELECT count(*) FROM disputes").await, 0);
    wait_for(|| async { app.metrics().await.contains("payhook_parked_disputes 2") }).await;

    // The payment arrives, naming the charge only (as a refund does).
    let refund = stripe_event(
        "evt_w3",
        "charge.refunded",
        T0 + 300,
        charge("pi_w1", "ord_w1"),
    );
    assert_eq!(stripe(&app, &refund).await.0, 202);
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 0);
    // The dispute takes the greatest of its events, not the last applied.
    assert_eq!(
        dispute(&env, "ord_w1").await,
        Some(("lost".into(), "evt_w2".into()))
    );
    assert_eq!(
        env.count("SELECT count(*) FROM chargeback_events WHERE order_id = 'ord_w1'")
            .await,
        2
    );
    // Once known, a later dispute event applies at once.
    let updated = stripe_event(
        "evt_w4",
        "charge.dispute.updated",
        T0 + 150,
        stripe_dispute("pi_w1", "under_review"),
    );
    assert_eq!(stripe(&app, &updated).await.0, 202);
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM chargeback_events WHERE order_id = 'ord_w1'")
            .await,
        3
    );
    assert_eq!(dispute(&env, "ord_w1").await.unwrap().0, "lost");
    assert!(
        payhook::ops::dlq::list(&env.config(&[]))
            .await
            .unwrap()
            .is_empty()
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_whose_payment_never_arrives_is_dead_lettered_after_the_wait() {
    let env = Env::new().await;
    let app = env
        .start(&verified(&[("DISPUTE_PAYMENT_WAIT", "2s")]))
        .await;
    let ev = stripe_event(
        "evt_n1",
        "charge.dispute.created",
        T0,
        stripe_dispute("pi_never", "needs_response"),
    );
    let started = Instant::now();
    assert_eq!(stripe(&app, &ev).await.0, 202);
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 1);
    let cfg = env.config(&[]);
    wait_for(|| async { !payhook::ops::dlq::list(&cfg).await.unwrap().is_empty() }).await;
    // Not before the configured time.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    eprintln!(
        "dispute dead-lettered {waited:?} after it was posted (DISPUTE_PAYMENT_WAIT=2s, sweep every 100ms)"
    );
    let letters = payhook::ops::dlq::list(&cfg).await.unwrap();
    assert_eq!(letters.len(), 1);
    let why = letters[0].error_message().unwrap();
    assert!(
        why.contains("never arrived") && why.contains("pi_never") && why.contains("evt_n1"),
        "{why}"
    );
    assert_eq!(letters[0].source_topic(), Some(env.disputes_topic.as_str()));
    assert_eq!(letters[0].key(), "pi_never");
    // The row goes in the sweep's commit, just after the broker's ack.
    wait_for(|| async { env.count("SELECT count(*) FROM parked_disputes").await == 0 }).await;
    assert_eq!(env.count("SELECT count(*) FROM disputes").await, 0);
    wait_for(|| async {
        let m = app.metrics().await;
        m.contains("payhook_parked_disputes_dead_lettered_total 1")
            && m.contains("payhook_parked_disputes 0")
    })
    .await;
    app.stop().await;
    env.cleanup().await;
}

/// The events of one payment and its dispute, `k` making every id unique;
/// whole-second `created` values with ties.
fn lifecycle(k: usize) -> Vec<Value> {
    let (pi, ord) = (format!("pi_p{k}"), format!("ord_p{k}"));
    let e = |n: &str| format!("evt_p{k}_{n}");
    vec![
        stripe_event(
            &e("a"),
            "payment_intent.created",
            T0,
            intent(&pi, &ord, "requires_payment_method"),
        ),
        stripe_event(
            &e("b"),
            "payment_intent.processing",
            T0,
            intent(&pi, &ord, "processing"),
        ),
        stripe_event(
            &e("c"),
            "payment_intent.succeeded",
            T0 + 1,
            intent(&pi, &ord, "succeeded"),
        ),
        stripe_event(&e("d"), "charge.refunded", T0 + 1, charge(&pi, &ord)),
        stripe_event(
            &e("e"),
            "charge.dispute.created",
            T0 + 2,
            stripe_dispute(&pi, "needs_response"),
        ),
        stripe_event(
            &e("f"),
            "charge.dispute.funds_withdrawn",
            T0 + 2,
            stripe_dispute(&pi, "needs_response"),
        ),
        stripe_event(
            &e("g"),
            "charge.dispute.closed",
            T0 + 3,
            stripe_dispute(&pi, "won"),
        ),
        stripe_event(
            &e("h"),
            "charge.dispute.funds_reinstated",
            T0 + 3,
            stripe_dispute(&pi, "won"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_deliveries_in_any_order_with_duplicates_end_in_one_state() {
    let env = Env::new().await;
    let app = env.start(&verified(&[])).await;
    const RUNS: usize = 10;
    for k in 0..RUNS {
        let mut events = lifecycle(k);
        // A deterministic shuffle per run; run 0 in order, run 1 reversed.
        match k {
            0 => {}
            1 => events.reverse(),
            _ => {
                let mut x = (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for i in (1..events.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    events.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
        }
        // Every other run delivers each event twice.
        let times = if k % 2 == 0 { 1 } else { 2 };
        for ev in &events {
            for _ in 0..times {
                assert_eq!(stripe(&app, ev).await.0, 202);
            }
        }
    }
    env.wait_caught_up().await;
    for k in 0..RUNS {
        let ord = format!("ord_p{k}");
        let o = order(&env, &ord).await.unwrap();
        assert_eq!(
            (o.0.as_str(), o.4.as_str()),
            ("refunded", format!("evt_p{k}_d").as_str()),
            "run {k}"
        );
        assert_eq!(
            dispute(&env, &ord).await,
            Some(("won".into(), format!("evt_p{k}_h"))),
            "run {k}"
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events").await,
        4 * RUNS as i64
    );
    assert_eq!(
        env.count("SELECT count(*) FROM chargeback_events").await,
        4 * RUNS as i64
    );
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 0);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adyen_batch_ends_as_order_and_dispute_rows() {
    let env = Env::new().await;
    let app = env.start(&verified(&[])).await;
    let auth = adyen_item(
        "AUTHORISATION",
        true,
        "8815000000000001",
        "ord_a1",
        "2026-11-26T10:00:00+01:00",
    );
    let mut refund = adyen_item(
        "REFUND",
        true,
        "8815000000000002",
        "ord_a1",
        "2026-11-26T10:05:00+01:00",
    );
    refund["originalReference"] = json!("8815000000000001");
    sign_adyen(&mut refund);
    let chargeback = adyen_item(
        "CHARGEBACK",
        true,
        "8815000000000001",
        "ord_a1",
        "2026-11-26T11:00:00+01:00",
    );
    let capture = adyen_item(
        "CAPTURE",
        true,
        "8815000000000003",
        "ord_a1",
        "2026-11-26T10:01:00+01:00",
    );
    let failed = adyen_item(
        "AUTHORISATION",
        false,
        "8815000000000004",
        "ord_a2",
        "2026-11-26T10:00:00+01:00",
    );
    let body = adyen_batch(&[auth, refund, chargeback, capture, failed]);
    let (status, text) = adyen(&app, body.clone()).await;
    assert_eq!((status, text.as_str()), (200, "[accepted]"));
    // Adyen resends a batch it did not see acknowledged: nothing changes.
    assert_eq!(adyen(&app, body.clone()).await.0, 200);
    env.wait_caught_up().await;

    let o = order(&env, "ord_a1").await.unwrap();
    assert_eq!(
        (o.0.as_str(), o.1.as_str(), o.3.as_str(), o.4.as_str()),
        ("refunded", "usr_a", "EUR", "8815000000000002:REFUND:true")
    );
    assert_eq!(order(&env, "ord_a2").await.unwrap().0, "failed");
    assert_eq!(
        dispute(&env, "ord_a1").await,
        Some(("opened".into(), "8815000000000001:CHARGEBACK:true".into()))
    );
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 3);
    // Each stored item is the item's object as it was in the signed body.
    let row = env
        .db
        .query_one(
            "SELECT payload, provider_object_ids, payload_raw FROM payment_events
             WHERE provider_event_id = '8815000000000002:REFUND:true'",
            &[],
        )
        .await
        .unwrap();
    let stored: Value = row.get(0);
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stored,
        sent["notificationItems"][1]["NotificationRequestItem"]
    );
    let raw: String = row.get(2);
    assert!(raw.contains('\n') && body.contains(&raw), "{raw}");
    assert_eq!(serde_json::from_str::<Value>(&raw).unwrap(), stored);
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        ["8815000000000002".to_owned(), "8815000000000001".to_owned()]
    );
    let m = app.metrics().await;
    assert!(
        m.contains(
            r#"payhook_provider_events_ignored_total{provider="adyen",event_type="CAPTURE"} 2"#
        ),
        "{m}"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adyen_batch_with_one_bad_signature_is_refused_whole() {
    let env = Env::new().await;
    let app = env.start(&verified(&[])).await;
    let good = adyen_item(
        "AUTHORISATION",
        true,
        "8815000000000011",
        "ord_b1",
        "2026-11-26T10:00:00Z",
    );
    let mut bad = adyen_item(
        "AUTHORISATION",
        true,
        "8815000000000012",
        "ord_b2",
        "2026-11-26T10:00:00Z",
    );
    // Tampered after signing: the amount is covered.
    bad["amount"]["value"] = json!(1);
    let (status, text) = adyen(&app, adyen_batch(&[good.clone(), bad])).await;
    assert_eq!(status, 401, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "unauthorized");
    // Nothing of the batch was published.
    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    assert_eq!(env.end_offsets(&env.disputes_topic).await, vec![0; 3]);
    // The good item alone is accepted.
    assert_eq!(adyen(&app, adyen_batch(&[good])).await.0, 200);
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM orders").await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Polls `check` every 50 ms for up to 20 s.
pub(crate) async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The consumer's decoded event for one Stripe event, as it would come off
/// the topic.
fn decoded(event: &Value, offset: i64) -> payhook::kafka::envelope::Event {
    use payhook::{
        kafka::envelope::Envelope,
        providers::{Provider, stripe::Stripe},
    };
    let stripe = Stripe {
        intake: payhook::providers::Intake::Unsigned,
        mapping: payhook::providers::stripe::StripeMapping {
            order_id_key: "order_id".into(),
            user_id_key: "user_id".into(),
            livemode: false,
            accounts: Vec::new(),
        },
    };
    let body = stripe_body(event);
    let item = stripe
        .accept(&Default::default(), body.as_bytes(), 0)
        .unwrap()
        .items
        .remove(0);
    let kind = item.stream.event_type();
    let env = Envelope::from_provider(kind, &item.key, item.raw, "stripe", item.mapping);
    Envelope::decode(env.to_record().value.as_deref())
        .unwrap()
        .into_event(payhook::domain::orders::SourcePosition {
            topic: "t".into(),
            partition: 0,
            offset,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_and_its_payment_applied_at_the_same_moment_never_miss_each_other() {
    use payhook::{
        db::store::PgStore,
        domain::{disputes::DisputeService, orders::OrderService},
        {consume::waiting::settle, kafka::envelope::Event},
    };
    let env = Env::new().await;
    let pool = payhook::db::pool(&env.db_url, 4, Duration::from_secs(5)).unwrap();
    let payment_of = |pi: &str, order: &str| match decoded(
        &stripe_event(
            &format!("evt_pay_{pi}"),
            "payment_intent.succeeded",
            T0,
            intent(pi, order, "succeeded"),
        ),
        1,
    ) {
        Event::Payment(p) => p,
        other => panic!("{other:?}"),
    };
    let dispute_of = |pi: &str| match decoded(
        &stripe_event(
            &format!("evt_dp_{pi}"),
            "charge.dispute.created",
            T0 + 5,
            stripe_dispute(pi, "needs_response"),
        ),
        2,
    ) {
        Event::PendingChargeback(d) => d,
        other => panic!("{other:?}"),
    };
    // The dispute's transaction, as the consumer runs it.
    let dispute_tx = |pool: deadpool_postgres::Pool, d| async move {
        let mut c = pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        let s = settle(&tx, &[], vec![d]).await.unwrap();
        DisputeService
            .process_chargebacks(&mut PgStore::new(&tx), &s.resolved)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (s.parked, s.resolved.len())
    };

    // 1. The payment's transaction holds its objects when the dispute's
    //    starts: the dispute waits for it, then finds the payment.
    let payment = payment_of("pi_r1", "ord_r1");
    let mut c = pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    OrderService
        .process_payment_webhooks(&mut PgStore::new(&tx), std::slice::from_ref(&payment))
        .await
        .unwrap();
    let s = settle(&tx, std::slice::from_ref(&payment), vec![])
        .await
        .unwrap();
    assert_eq!((s.parked, s.resolved.len()), (0, 0));
    let other = tokio::spawn(dispute_tx(pool.clone(), dispute_of("pi_r1")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "the dispute must wait for the payment's lock"
    );
    tx.commit().await.unwrap();
    drop(c);
    assert_eq!(other.await.unwrap(), (0, 1), "resolved, not parked");

    // 2. The dispute's transaction parks first and holds its objects: the
    //    payment's waits, then releases it.
    let mut c = pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let s = settle(&tx, &[], vec![dispute_of("pi_r2")]).await.unwrap();
    assert_eq!((s.parked, s.resolved.len()), (1, 0));
    let payment = payment_of("pi_r2", "ord_r2");
    let pool2 = pool.clone();
    let other = tokio::spawn(async move {
        let mut c = pool2.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        OrderService
            .process_payment_webhooks(&mut PgStore::new(&tx), std::slice::from_ref(&payment))
            .await
            .unwrap();
        let s = settle(&tx, std::slice::from_ref(&payment), vec![])
            .await
            .unwrap();
        DisputeService
            .process_chargebacks(&mut PgStore::new(&tx), &s.resolved)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        s.released
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "the payment must wait for the dispute's lock"
    );
    tx.commit().await.unwrap();
    drop(c);
    assert_eq!(other.await.unwrap(), 1, "the waiting dispute is released");

    for order in ["ord_r1", "ord_r2"] {
        assert_eq!(dispute(&env, order).await.unwrap().0, "opened", "{order}");
    }
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 0);
    drop(pool);
    env.cleanup().await;
}

/// Publishes through the real producer; after the first dead letter is
/// acknowledged, ends every database session of the sweeper (its pool is
/// named `sweeper-<id>`) and fails, as a sweeper process killed right
/// after the broker's acknowledgement would.
#[derive(Debug)]
struct DieAfterFirstPublish {
    producer: payhook::kafka::producer::Producer,
    application_name: String,
    died: std::sync::atomic::AtomicBool,
}

impl payhook::kafka::producer::Publish for DieAfterFirstPublish {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        record: rskafka::record::Record,
    ) -> futures::future::BoxFuture<
        'a,
        Result<payhook::kafka::producer::Published, payhook::kafka::producer::PublishError>,
    > {
        Box::pin(async move {
            let published = self.producer.publish(topic, record).await?;
            if self.died.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(published);
            }
            let (admin, conn) =
                tokio_postgres::connect(&crate::helpers::admin_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = $1",
                    &[&self.application_name],
                )
                .await
                .unwrap();
            Err(payhook::kafka::producer::PublishError::Timeout(
                Duration::from_secs(0),
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeper_killed_after_its_first_dead_letter_never_lets_a_dispute_be_applied_too() {
    let env = Env::new().await;
    // The service's own sweeper stays out of the way (first sweep at start,
    // the next in an hour); this test runs one it controls.
    let app = env
        .start(&verified(&[
            ("DISPUTE_PAYMENT_WAIT", "1s"),
            ("DISPUTE_SWEEP_INTERVAL", "1h"),
        ]))
        .await;
    for pi in ["pi_ka", "pi_kb"] {
        let ev = stripe_event(
            &format!("evt_{pi}"),
            "charge.dispute.created",
            T0,
            stripe_dispute(pi, "needs_response"),
        );
        assert_eq!(stripe(&app, &ev).await.0, 202);
    }
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let application_name = format!("sweeper-{}", env.db_name);
    let pool = payhook::db::pool(
        &format!("{}?application_name={application_name}", env.db_url),
        2,
        Duration::from_secs(5),
    )
    .unwrap();
    let (producer, lanes) = payhook::kafka::producer::Producer::start(
        &env.kafka,
        &[&env.dlq_topic],
        payhook::kafka::producer::ProducerConfig {
            linger: Duration::ZERO,
            queue_per_partition: 64,
            publish_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await
    .unwrap();
    let sweeper =
        |pool: deadpool_postgres::Pool,
         publisher: std::sync::Arc<dyn payhook::kafka::producer::Publish>| {
            payhook::consume::waiting::Sweeper {
                pool,
                publisher,
                dlq_topic: env.dlq_topic.clone(),
                wait: Duration::from_secs(1),
                interval: Duration::from_secs(3600),
                claim_for: Duration::from_secs(1),
                db_deadline: Duration::from_secs(5),
                dead_letter_max_bytes: payhook::consume::dlq::DEFAULT_MAX_MESSAGE_BYTES,
                events: payhook::consume::events::WaitingEvents::new(
                    &payhook::metrics::Metrics::new(),
                ),
                signer: None,
            }
        };
    let dying = sweeper(
        pool,
        std::sync::Arc::new(DieAfterFirstPublish {
            producer: producer.clone(),
            application_name: application_name.clone(),
            died: Default::default(),
        }),
    );
    assert!(dying.sweep_once().await.is_err(), "the sweeper died");

    // Both payments arrive now.
    for pi in ["pi_ka", "pi_kb"] {
        let ev = stripe_event(
            &format!("evt_pay_{pi}"),
            "payment_intent.succeeded",
            T0 + 10,
            intent(pi, &format!("ord_{pi}"), "succeeded"),
        );
        assert_eq!(stripe(&app, &ev).await.0, 202);
    }
    env.wait_caught_up().await;
    // A sweeper that comes later finishes what the dead one claimed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pool = payhook::db::pool(&env.db_url, 2, Duration::from_secs(5)).unwrap();
    let done = sweeper(pool, std::sync::Arc::new(producer.clone()))
        .sweep_once()
        .await
        .unwrap();
    eprintln!("the second sweep dead-lettered {done}");
    assert_eq!(env.count("SELECT count(*) FROM parked_disputes").await, 0);

    // Every dispute ended in exactly one place: applied, or dead-lettered
    // (perhaps twice), never both.
    let letters = payhook::ops::dlq::list(&env.config(&[])).await.unwrap();
    let mut dead_lettered = 0;
    for pi in ["pi_ka", "pi_kb"] {
        let in_dlq = letters.iter().filter(|d| d.key() == pi).count();
        let applied = dispute(&env, &format!("ord_{pi}")).await.is_some();
        assert!(
            (in_dlq > 0) != applied,
            "{pi}: {in_dlq} dead letter(s), applied: {applied}"
        );
        dead_lettered += usize::from(in_dlq > 0);
    }
    // The one the dead sweeper had claimed went to the dead-letter topic;
    // the other was released by its payment.
    assert_eq!(dead_lettered, 1, "{letters:?}");
    drop((dying, producer));
    lanes.drained().await;
    app.stop().await;
    env.cleanup().await;
}
