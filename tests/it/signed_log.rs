//! The signed log (`ENVELOPE_SIGNING_KEYS`) and what the consumer no longer
//! takes on trust from a record: its signature, a provider's `mapped`
//! field, its envelope's `timestamp`; and `dlq replay`'s refusals. Every
//! forged record here is written straight to the topic, as by anyone with
//! write access to it.

use std::collections::BTreeMap;

use payhook::{
    config::keys::EnvelopeKey,
    consume::dlq,
    kafka::{
        envelope::{Envelope, EventType, HEADER_EVENT_ID, HEADER_TYPE},
        signing::{HEADER_SIGNATURE, Signer},
    },
    ops::{self, dlq::ReplaySelection},
};
use rskafka::record::Record;
use serde_json::{Value, json, value::RawValue};

use crate::{
    helpers::{Env, TestApp, at, payment, unix_now},
    providers::{intent, stripe_body, stripe_event},
};

const OLD: &str = "old:0123456789abcdef0123456789abcdef-old";
const NEW: &str = "new:0123456789abcdef0123456789abcdef-new";

fn signer(entries: &[&str]) -> Signer {
    Signer::new(
        entries
            .iter()
            .map(|e| EnvelopeKey::parse(e).unwrap())
            .collect(),
    )
    .unwrap()
}

/// A record as the edge writes it, for payhook's own format.
fn generic_record(key: &str, body: &Value) -> Record {
    let raw = RawValue::from_string(body.to_string()).unwrap();
    Envelope::new(EventType::OrderWebhook, key, raw).to_record()
}

/// A Stripe envelope whose `mapped` claims `claimed` while its payload is
/// `event`.
fn stripe_record(key: &str, event: &Value, claimed: &Value) -> Record {
    let raw = RawValue::from_string(stripe_body(event)).unwrap();
    let mut env = Envelope::new(EventType::OrderWebhook, key, raw);
    env.provider = Some("stripe".into());
    env.mapped = Some(RawValue::from_string(claimed.to_string()).unwrap());
    env.to_record()
}

/// Unix seconds as RFC 3339.
fn unix_rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn signed(mut r: Record, s: &Signer) -> Record {
    s.sign(&mut r);
    r
}

async fn status_of(env: &Env, order: &str) -> Option<String> {
    env.db
        .query_opt(
            "SELECT payment_status FROM orders WHERE order_id = $1",
            &[&order],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// The dead letters' error messages, by the source record's event id.
async fn dead_letter_reasons(env: &Env) -> BTreeMap<String, String> {
    ops::dlq::list(&env.config(&[]))
        .await
        .unwrap()
        .iter()
        .map(|d| {
            (
                d.event_id().map_or("-".into(), |e| e.to_string()),
                d.error_message().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn event_id(r: &Record) -> String {
    String::from_utf8(r.headers[HEADER_EVENT_ID].clone()).unwrap()
}

async fn post_payment(app: &TestApp, body: &Value) {
    let r = app.post("/webhooks/payments/orders", body).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signing_keys_forged_records_are_dead_lettered_and_change_nothing() {
    let env = Env::new().await;
    let keys = [("ENVELOPE_SIGNING_KEYS", NEW)];
    let app = env.start(&keys).await;
    let now = 0;
    post_payment(&app, &payment("evt_g1", "ord_sig", "pending", &at(now))).await;
    env.wait_caught_up().await;
    assert_eq!(status_of(&env, "ord_sig").await.as_deref(), Some("pending"));
    // What the edge wrote carries the signature of the first key.
    let p = (0..env.partitions as i32)
        .zip(env.end_offsets(&env.orders_topic).await)
        .find(|(_, end)| *end == 1)
        .unwrap()
        .0;
    let genuine = env.record_at(&env.orders_topic, p, 0).await;
    let header = String::from_utf8(genuine.headers[HEADER_SIGNATURE].clone()).unwrap();
    assert!(header.starts_with("v1:new:"), "{header}");

    // Forged: later events that would move the order to succeeded.
    let forge = |id: &str| payment(id, "ord_sig", "succeeded", &at(now + 60));
    let unsigned = generic_record("ord_sig", &forge("evt_f1"));
    let other_secret = signed(
        generic_record("ord_sig", &forge("evt_f2")),
        &signer(&["new:a-secret-nobody-configured-anywhere-000"]),
    );
    let unknown_key = signed(
        generic_record("ord_sig", &forge("evt_f3")),
        &signer(&["stolen:0123456789abcdef0123456789abcdef-sto"]),
    );
    // A genuine signature over another record's key and value, kept
    // beside a different value.
    let mut moved = signed(generic_record("ord_sig", &forge("evt_f4")), &signer(&[NEW]));
    moved.value = generic_record("ord_sig", &forge("evt_f5")).value;
    let ids = [&unsigned, &other_secret, &unknown_key, &moved].map(event_id);
    env.produce_records(
        &env.orders_topic,
        vec![unsigned, other_secret, unknown_key, moved],
    )
    .await;
    env.wait_caught_up().await;
    assert_eq!(status_of(&env, "ord_sig").await.as_deref(), Some("pending"));
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 1);
    let reasons = dead_letter_reasons(&env).await;
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    let reason = |i: usize| reasons[&ids[i]].as_str();
    assert!(reason(0).contains("not signed"), "{}", reason(0));
    assert!(reason(1).contains("does not match"), "{}", reason(1));
    assert!(
        reason(2).contains("\"stolen\"") && reason(2).contains("does not list"),
        "{}",
        reason(2)
    );
    assert!(reason(3).contains("does not match"), "{}", reason(3));

    // Replaying the unsigned dead letter: refused, it would be signed anew.
    let cfg = env.config(&keys);
    let sel = ReplaySelection {
        event_ids: vec![ids[0].parse().unwrap()],
        ..Default::default()
    };
    let e = ops::dlq::replay(&cfg, &sel, false).await.unwrap_err();
    assert!(
        e.to_string().contains("not signed") && e.to_string().contains("--resign"),
        "{e}"
    );
    // The operator vouches for it: replayed, signed, applied.
    let vouched = ReplaySelection {
        resign: true,
        ..sel
    };
    let done = ops::dlq::replay(&cfg, &vouched, false).await.unwrap();
    let p = done[0].published.unwrap();
    let back = env
        .record_at(&env.orders_topic, p.partition, p.offset)
        .await;
    assert_eq!(signer(&[NEW]).verify(&back), Ok(()));
    env.wait_caught_up().await;
    assert_eq!(
        status_of(&env, "ord_sig").await.as_deref(),
        Some("succeeded")
    );
    assert_eq!(dead_letter_reasons(&env).await.len(), 4, "nothing new");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_out_key_is_honoured_while_listed_and_refused_once_not() {
    let env = Env::new().await;
    let now = 0;
    let old = signer(&[OLD]);
    // Written while `old` signed.
    env.produce_records(
        &env.orders_topic,
        vec![signed(
            generic_record(
                "ord_rot",
                &payment("evt_r1", "ord_rot", "pending", &at(now)),
            ),
            &old,
        )],
    )
    .await;
    // Rotation: `new` signs, `old` still verifies.
    let rotating = [("ENVELOPE_SIGNING_KEYS", format!("{NEW},{OLD}"))];
    let rotating: Vec<(&str, &str)> = rotating.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = env.start(&rotating).await;
    env.wait_caught_up().await;
    assert_eq!(status_of(&env, "ord_rot").await.as_deref(), Some("pending"));
    post_payment(&app, &payment("evt_r2", "ord_rot", "failed", &at(now + 1))).await;
    env.wait_caught_up().await;
    assert_eq!(status_of(&env, "ord_rot").await.as_deref(), Some("failed"));
    app.stop().await;

    // A late record still signed with `old`, after `old` was dropped.
    let late = signed(
        generic_record(
            "ord_rot",
            &payment("evt_r3", "ord_rot", "succeeded", &at(now + 2)),
        ),
        &old,
    );
    let late_id = event_id(&late);
    env.produce_records(&env.orders_topic, vec![late]).await;
    let app = env.start(&[("ENVELOPE_SIGNING_KEYS", NEW)]).await;
    env.wait_caught_up().await;
    assert_eq!(status_of(&env, "ord_rot").await.as_deref(), Some("failed"));
    let reasons = dead_letter_reasons(&env).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[&late_id].contains("\"old\"") && reasons[&late_id].contains("does not list"),
        "{reasons:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Without keys the record is not trusted either: a provider's payload is
/// mapped again, and the envelope cannot date itself past its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_maps_provider_payloads_again_and_bounds_the_envelope_timestamp() {
    let env = Env::new().await;
    let app = env.start(&[("STRIPE_LIVEMODE", "test")]).await;
    let now = unix_now();
    // A failed payment whose envelope claims it succeeded.
    let failed = stripe_event(
        "evt_m1",
        "payment_intent.payment_failed",
        now,
        intent("pi_m1", "ord_m1", "requires_payment_method"),
    );
    let mut claimed = json!({"provider_event_id": "evt_m1", "order_id": "ord_m1",
        "payment_id": "pi_m1", "user_id": "usr_s", "status": "succeeded", "amount": 4200,
        "currency": "USD", "occurred_at": at(now), "object_ids": ["pi_m1", "ch_pi_m1"]});
    let lie = stripe_record("ord_m1", &failed, &claimed);
    // A payload for one order, published under another's key (and so
    // perhaps another partition): refused.
    let other = stripe_event(
        "evt_m2",
        "payment_intent.succeeded",
        now,
        intent("pi_m2", "ord_m2", "succeeded"),
    );
    claimed["order_id"] = json!("ord_victim");
    claimed["provider_event_id"] = json!("evt_m2");
    let misrouted = stripe_record("ord_victim", &other, &claimed);
    let misrouted_id = event_id(&misrouted);
    // payhook's own format, with an envelope dated in year 9999 and an
    // occurred_at ten days ahead: the record's own timestamp (now) bounds it.
    let mut ahead = Envelope::new(
        EventType::OrderWebhook,
        "ord_m3",
        RawValue::from_string(
            payment(
                "evt_m3",
                "ord_m3",
                "succeeded",
                &unix_rfc3339(now + 10 * 86_400),
            )
            .to_string(),
        )
        .unwrap(),
    );
    ahead.timestamp = "9999-12-31T00:00:00Z".parse().unwrap();
    let mut ahead = ahead.to_record();
    ahead.timestamp = chrono::Utc::now();
    let ahead_id = event_id(&ahead);
    assert_eq!(ahead.headers[HEADER_TYPE], b"order.webhook");
    env.produce_records(&env.orders_topic, vec![lie, misrouted, ahead])
        .await;
    env.wait_caught_up().await;

    assert_eq!(status_of(&env, "ord_m1").await.as_deref(), Some("failed"));
    assert_eq!(status_of(&env, "ord_victim").await, None);
    assert_eq!(status_of(&env, "ord_m3").await, None);
    let reasons = dead_letter_reasons(&env).await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[&misrouted_id].contains("ord_m2")
            && reasons[&misrouted_id].contains("not written by payhook"),
        "{reasons:?}"
    );
    assert!(reasons[&ahead_id].contains("occurred_at"), "{reasons:?}");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_sends_only_to_the_configured_topics() {
    let env = Env::new().await;
    let original = generic_record("ord_x", &payment("evt_x1", "ord_x", "succeeded", &at(0)));
    let id = event_id(&original);
    let failure = |topic: &str| dlq::Failure {
        source: payhook::domain::orders::SourcePosition {
            topic: topic.into(),
            partition: 0,
            offset: 7,
        },
        class: payhook::consume::classify::ErrorClass::Permanent,
        message: "forged".into(),
        attempts: 1,
        first_failure: chrono::Utc::now(),
    };
    // A dead letter whose headers name a topic payhook does not own.
    let foreign = dlq::dead_letter(
        &original,
        &failure("payments.elsewhere"),
        dlq::DEFAULT_MAX_MESSAGE_BYTES,
    );
    env.produce_records(&env.dlq_topic, vec![foreign]).await;
    let sel = ReplaySelection {
        event_ids: vec![id.parse().unwrap()],
        ..Default::default()
    };
    let before = env.end_offsets(&env.orders_topic).await;
    for dry_run in [true, false] {
        let e = ops::dlq::replay(&env.config(&[]), &sel, dry_run)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("payments.elsewhere")
                && e.to_string().contains("neither KAFKA_ORDERS_TOPIC"),
            "{e}"
        );
    }
    assert_eq!(env.end_offsets(&env.orders_topic).await, before);
    // The same dead letter naming the orders topic replays.
    let own = dlq::dead_letter(
        &original,
        &failure(&env.orders_topic),
        dlq::DEFAULT_MAX_MESSAGE_BYTES,
    );
    env.produce_records(&env.dlq_topic, vec![own]).await;
    let sel = ReplaySelection {
        partition: Some(ops::dlq::list(&env.config(&[])).await.unwrap()[1].partition),
        from: Some(1),
        ..Default::default()
    };
    let done = ops::dlq::replay(&env.config(&[]), &sel, false)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    env.cleanup().await;
}
