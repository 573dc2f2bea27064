//! Every event scoped to its provider and account, and the truth of an
//! order paid by several payments, through the real broker and database.
//!
//! Signatures are made as each provider documents its scheme (the fixtures
//! of `providers.rs`); payhook's own endpoints take unsigned webhooks here
//! (`WEBHOOK_VERIFY=off` without their secrets, on loopback).

use serde_json::{Value, json};

use crate::helpers::{Env, STRIPE_SECRET, TestApp, at, payment};
use crate::providers::{
    ADYEN_KEY, T0, adyen, adyen_batch, adyen_item, charge, intent, sign_adyen, stripe, stripe_event,
};

/// Stripe and Adyen verify; the generic endpoints take unsigned webhooks.
fn config(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("STRIPE_WEBHOOK_SECRETS", STRIPE_SECRET),
        ("STRIPE_LIVEMODE", "test"),
        ("ADYEN_HMAC_KEYS", ADYEN_KEY),
        ("ADYEN_MERCHANT_ACCOUNTS", "PayhookShop"),
    ];
    v.extend_from_slice(extra);
    v
}

/// An order's status, user, amount and last event (with its provider).
type OrderRow = (String, Option<String>, Option<i64>, String, String);

async fn order(env: &Env, id: &str) -> Option<OrderRow> {
    env.db
        .query_opt(
            "SELECT payment_status, user_id, amount, last_provider_event_id, last_provider
               FROM orders WHERE order_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

/// An order's payments: (provider, payment, status, amount, refunded).
async fn payments(env: &Env, id: &str) -> Vec<(String, String, String, Option<i64>, i64)> {
    env.db
        .query(
            "SELECT provider, payment_id, status, amount, refunded_amount FROM payments
              WHERE order_id = $1 ORDER BY provider, payment_id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn status(env: &Env, id: &str) -> Option<String> {
    order(env, id).await.map(|o| o.0)
}

/// Every dead letter's (key, reason).
async fn dead_letters(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = payhook::ops::dlq::list(&env.config(&[]))
        .await
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l.error_class(), Some("permanent"));
            (l.key(), l.error_message().unwrap_or_default().to_owned())
        })
        .collect();
    v.sort();
    v
}

async fn accepted(app: &TestApp, event: &Value) {
    let (status, body) = stripe(app, event).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_from_two_providers_is_two_events() {
    let env = Env::new().await;
    let app = env.start(&config(&[])).await;
    // payhook's own format first, then Stripe with the same id text.
    app.payment(&payment("evt_X", "ord_g1", "succeeded", &at(0)))
        .await;
    accepted(
        &app,
        &stripe_event(
            "evt_X",
            "payment_intent.succeeded",
            T0,
            intent("pi_x", "ord_s1", "succeeded"),
        ),
    )
    .await;
    // A generic signer using Adyen's id form does not pre-empt Adyen.
    app.payment(&payment(
        "8815000000000001:AUTHORISATION:true",
        "ord_g2",
        "pending",
        &at(0),
    ))
    .await;
    let item = adyen_item(
        "AUTHORISATION",
        true,
        "8815000000000001",
        "ord_a1",
        "2026-11-26T09:00:00+01:00",
    );
    assert_eq!(
        adyen(&app, adyen_batch(&[item])).await,
        (200, "[accepted]".into())
    );
    env.wait_caught_up().await;
    assert_eq!(status(&env, "ord_g1").await.as_deref(), Some("succeeded"));
    assert_eq!(status(&env, "ord_s1").await.as_deref(), Some("succeeded"));
    assert_eq!(status(&env, "ord_g2").await.as_deref(), Some("pending"));
    assert_eq!(status(&env, "ord_a1").await.as_deref(), Some("succeeded"));
    assert_eq!(
        env.count(
            "SELECT count(DISTINCT (provider, provider_event_id)) FROM payment_events
              WHERE provider_event_id IN ('evt_X', '8815000000000001:AUTHORISATION:true')"
        )
        .await,
        4
    );
    assert!(dead_letters(&env).await.is_empty());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_outside_the_scope_are_acknowledged_dead_lettered_and_counted() {
    let env = Env::new().await;
    let app = env
        .start(&config(&[
            ("STRIPE_LIVEMODE", "live"),
            ("STRIPE_ACCOUNTS", "acct_ok"),
        ]))
        .await;
    let live = |id: &str, order: &str, account: Option<&str>| {
        let mut e = stripe_event(
            id,
            "payment_intent.succeeded",
            T0,
            intent(&format!("pi_{order}"), order, "succeeded"),
        );
        e["livemode"] = json!(true);
        if let Some(a) = account {
            e["account"] = json!(a);
        }
        e
    };
    // A test-mode event (a test key left in the secret list).
    accepted(
        &app,
        &stripe_event(
            "evt_t",
            "payment_intent.succeeded",
            T0,
            intent("pi_t", "ord_test", "succeeded"),
        ),
    )
    .await;
    // A connected account not listed, one listed, and the platform.
    accepted(&app, &live("evt_c", "ord_other_acct", Some("acct_other"))).await;
    accepted(&app, &live("evt_k", "ord_listed", Some("acct_ok"))).await;
    accepted(&app, &live("evt_p", "ord_platform", None)).await;
    // Another merchant account under the same Adyen webhook.
    let mut item = adyen_item(
        "AUTHORISATION",
        true,
        "8815000000000002",
        "ord_other_merchant",
        "2026-11-26T09:00:00+01:00",
    );
    item["merchantAccountCode"] = json!("OtherShop");
    sign_adyen(&mut item);
    assert_eq!(adyen(&app, adyen_batch(&[item])).await.0, 200);
    env.wait_caught_up().await;

    assert_eq!(
        status(&env, "ord_listed").await.as_deref(),
        Some("succeeded")
    );
    assert_eq!(
        status(&env, "ord_platform").await.as_deref(),
        Some("succeeded")
    );
    for o in ["ord_test", "ord_other_acct", "ord_other_merchant"] {
        assert_eq!(order(&env, o).await, None, "{o} must not be applied");
    }
    let letters = dead_letters(&env).await;
    let keys: Vec<&str> = letters.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ord_other_acct", "ord_other_merchant", "ord_test"]);
    assert!(letters[0].1.contains("acct_other") && letters[0].1.contains("STRIPE_ACCOUNTS"));
    assert!(letters[1].1.contains("OtherShop") && letters[1].1.contains("ADYEN_MERCHANT_ACCOUNTS"));
    assert!(
        letters[2].1.contains("test event") && letters[2].1.contains("STRIPE_LIVEMODE is live")
    );
    let m = app.metrics().await;
    for line in [
        r#"payhook_provider_events_out_of_scope_total{provider="stripe",reason="livemode"} 1"#,
        r#"payhook_provider_events_out_of_scope_total{provider="stripe",reason="account"} 1"#,
        r#"payhook_provider_events_out_of_scope_total{provider="adyen",reason="merchant_account"} 1"#,
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    app.stop().await;
    env.cleanup().await;
}

/// Every permutation of `0..n`, in lexicographic order.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in permutations(n - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|x| if x >= first { x + 1 } else { x }));
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_checkout_never_unpays_an_order_whatever_the_arrival_order() {
    let env = Env::new().await;
    let app = env.start(&config(&[])).await;
    // Paid by pi_1; then a second intent for the same order is created and
    // canceled (a checkout retried), later in time. Every arrival order, one
    // order each.
    let orders = permutations(4);
    for (k, perm) in orders.iter().enumerate() {
        let ord = format!("ord_retry{k}");
        let e = |n: usize, t: &str, at: i64, pi: &str, st: &str| {
            stripe_event(
                &format!("evt_r{k}_{n}"),
                t,
                at,
                intent(&format!("{pi}_{k}"), &ord, st),
            )
        };
        let events = [
            e(
                0,
                "payment_intent.created",
                T0,
                "pi_1",
                "requires_payment_method",
            ),
            e(1, "payment_intent.succeeded", T0 + 1, "pi_1", "succeeded"),
            e(
                2,
                "payment_intent.created",
                T0 + 2,
                "pi_2",
                "requires_payment_method",
            ),
            e(3, "payment_intent.canceled", T0 + 3, "pi_2", "canceled"),
        ];
        for &i in perm {
            accepted(&app, &events[i]).await;
        }
    }
    env.wait_caught_up().await;
    for (k, arrival) in orders.iter().enumerate() {
        let ord = format!("ord_retry{k}");
        let o = order(&env, &ord).await.unwrap();
        assert_eq!(o.0, "succeeded", "{ord}: arrival {arrival:?}");
        // The order's last event is its latest, whatever payment it moved.
        assert_eq!(o.3, format!("evt_r{k}_3"));
        assert_eq!(
            payments(&env, &ord).await,
            [
                (
                    "stripe".into(),
                    format!("pi_1_{k}"),
                    "succeeded".into(),
                    Some(4200),
                    0
                ),
                (
                    "stripe".into(),
                    format!("pi_2_{k}"),
                    "failed".into(),
                    Some(4200),
                    0
                ),
            ]
        );
    }
    assert!(dead_letters(&env).await.is_empty());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_add_up_and_the_order_is_refunded_only_at_the_full_amount() {
    let env = Env::new().await;
    let app = env.start(&config(&[])).await;
    let refund = |id: &str, ord: &str, at: i64, refunded: i64| {
        let mut c = charge(&format!("pi_{ord}"), ord);
        c["amount_refunded"] = json!(refunded);
        c["refunded"] = json!(refunded == 4200);
        stripe_event(id, "charge.refunded", at, c)
    };
    // Stripe, in order: paid, a partial refund, then the rest.
    let ord = "ord_f1";
    let paid = stripe_event(
        "evt_f1a",
        "payment_intent.succeeded",
        T0,
        intent("pi_ord_f1", ord, "succeeded"),
    );
    accepted(&app, &paid).await;
    accepted(&app, &refund("evt_f1b", ord, T0 + 10, 1000)).await;
    env.wait_caught_up().await;
    assert_eq!(status(&env, ord).await.as_deref(), Some("succeeded"));
    assert_eq!(payments(&env, ord).await[0].4, 1000);
    accepted(&app, &refund("evt_f1c", ord, T0 + 20, 4200)).await;
    env.wait_caught_up().await;
    assert_eq!(status(&env, ord).await.as_deref(), Some("refunded"));
    assert_eq!(payments(&env, ord).await[0].4, 4200);
    // Backwards: the full refund first; the earlier partial one changes
    // nothing.
    let ord = "ord_f2";
    accepted(&app, &refund("evt_f2c", ord, T0 + 20, 4200)).await;
    accepted(&app, &refund("evt_f2b", ord, T0 + 10, 1000)).await;
    accepted(
        &app,
        &stripe_event(
            "evt_f2a",
            "payment_intent.succeeded",
            T0,
            intent("pi_ord_f2", ord, "succeeded"),
        ),
    )
    .await;
    env.wait_caught_up().await;
    assert_eq!(status(&env, ord).await.as_deref(), Some("refunded"));
    assert_eq!(payments(&env, ord).await[0].4, 4200);

    // Adyen, from an account with default webhook settings (no
    // shopperReference): the payment is applied with the user unknown;
    // two refunds of parts, the first one before the payment itself.
    let auth = |ord: &str, psp: &str| {
        let mut i = adyen_item("AUTHORISATION", true, psp, ord, "2026-11-26T09:00:00+01:00");
        i["additionalData"] = json!({});
        sign_adyen(&mut i);
        i
    };
    let part = |ord: &str, psp: &str, original: &str, value: i64, date: &str| {
        let mut i = adyen_item("REFUND", true, psp, ord, date);
        i["additionalData"] = json!({});
        i["originalReference"] = json!(original);
        i["amount"]["value"] = json!(value);
        sign_adyen(&mut i);
        i
    };
    let ord = "ord_a1";
    let r1 = part(
        ord,
        "8815000000000011",
        "8815000000000010",
        999,
        "2026-11-26T10:00:00+01:00",
    );
    let r2 = part(
        ord,
        "8815000000000012",
        "8815000000000010",
        1000,
        "2026-11-26T11:00:00+01:00",
    );
    assert_eq!(adyen(&app, adyen_batch(&[r1])).await.0, 200);
    assert_eq!(
        adyen(&app, adyen_batch(&[auth(ord, "8815000000000010")]))
            .await
            .0,
        200
    );
    env.wait_caught_up().await;
    let o = order(&env, ord).await.unwrap();
    assert_eq!((o.0.as_str(), o.1, o.2), ("succeeded", None, Some(1999)));
    assert_eq!(payments(&env, ord).await[0].4, 999);
    assert_eq!(adyen(&app, adyen_batch(&[r2])).await.0, 200);
    env.wait_caught_up().await;
    assert_eq!(status(&env, ord).await.as_deref(), Some("refunded"));
    assert_eq!(
        payments(&env, ord).await,
        [(
            "adyen".into(),
            "8815000000000010".into(),
            "succeeded".into(),
            Some(1999),
            1999
        )]
    );
    assert!(dead_letters(&env).await.is_empty());
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_disagrees_with_what_its_order_pinned_is_dead_lettered() {
    let env = Env::new().await;
    let app = env.start(&config(&[])).await;
    let ord = "ord_pin";
    app.payment(&payment("evt_p1", ord, "succeeded", &at(0)))
        .await;
    env.wait_caught_up().await;
    let before = order(&env, ord).await.unwrap();
    assert_eq!(
        before,
        (
            "succeeded".into(),
            Some("usr_7".into()),
            Some(1999),
            "evt_p1".into(),
            "generic".into()
        )
    );
    // Later events of the same order that name another user, amount or
    // currency.
    for (id, field, value) in [
        ("evt_p2", "user_id", json!("usr_8")),
        ("evt_p3", "amount", json!(1)),
        ("evt_p4", "currency", json!("EUR")),
    ] {
        let mut e = payment(id, ord, "refunded", &at(60));
        e[field] = value;
        app.payment(&e).await;
    }
    // A Stripe event of the same order that names no user: no conflict.
    let mut object = intent("pi_pin", ord, "processing");
    object["metadata"] = json!({"order_id": ord});
    object["amount"] = json!(1999);
    accepted(
        &app,
        &stripe_event("evt_p5", "payment_intent.processing", T0, object),
    )
    .await;
    env.wait_caught_up().await;
    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (_, why) in &letters {
        assert!(why.starts_with("order ord_pin is pinned to "), "{why}");
    }
    let reasons: String = letters.iter().map(|(_, w)| w.as_str()).collect();
    for (field, found) in [("user_id", "usr_8"), ("amount", "1"), ("currency", "EUR")] {
        assert!(
            reasons.contains(&format!("pinned to {field}")) && reasons.contains(found),
            "{field}: {reasons}"
        );
    }
    // Unchanged by the refused ones; the Stripe payment joined the order.
    let after = order(&env, ord).await.unwrap();
    assert_eq!(after.0, "succeeded");
    assert_eq!(after.1.as_deref(), Some("usr_7"));
    assert_eq!(after.2, Some(1999));
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events WHERE order_id = 'ord_pin'")
            .await,
        2
    );
    assert_eq!(payments(&env, ord).await.len(), 2);
    app.stop().await;
    env.cleanup().await;
}
