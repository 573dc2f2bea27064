//! Signed webhooks against the real broker and database: a good signature is
//! accepted and stored; forged, replayed, unsigned and malformed requests are
//! 401 and reach nothing.

use serde_json::{Value, json};

use crate::helpers::{
    Env, TestApp, chargeback, payment, sign_standard, sign_stripe, standard_headers,
    stripe_headers, unix_now,
};

/// What a refused request is, its headers and its body.
type Case = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

/// Rotation in progress on the payment endpoint: old and new both active.
const ORDERS_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ORDERS_NEW: &str = "whsec_cGF5aG9vayByb3RhdGlvbiBrZXkgMjAyNi0xMQ==";
/// Never configured: what a forger would use.
const FORGED: &str = "whsec_Zm9yZ2VkIGtleSBub2JvZHkgY29uZmlndXJlZA==";
const STRIPE: &str = "whsec_stripe_test_secret_0123456789";
const ORDERS: &str = "/webhooks/payments/orders";
const CHARGEBACKS: &str = "/webhooks/payments/chargebacks";

async fn start(env: &Env) -> TestApp {
    let secrets = format!("{ORDERS_OLD},{ORDERS_NEW}");
    env.start(&[
        ("WEBHOOK_VERIFY", "on"),
        ("WEBHOOK_TOLERANCE", "60s"),
        ("WEBHOOK_ORDERS_SCHEME", "standard"),
        ("WEBHOOK_ORDERS_SECRETS", &secrets),
        ("WEBHOOK_CHARGEBACKS_SCHEME", "stripe"),
        ("WEBHOOK_CHARGEBACKS_SECRETS", STRIPE),
    ])
    .await
}

async fn expect_401(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 401, "{what}");
    let v: Value = r.json().await.unwrap();
    // The same answer whatever failed: nothing to learn from it.
    assert_eq!(
        v,
        json!({"error": "unauthorized", "detail": "invalid or missing signature"}),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_correctly_signed_webhooks_are_accepted() {
    let env = Env::new().await;
    let app = start(&env).await;
    let pay = payment("evt_sig", "ord_sig", "succeeded", "2026-11-26T10:00:00Z").to_string();
    let pay = pay.as_bytes();
    let cb = chargeback("cb_sig", "ord_sig", "opened", "2026-11-26T11:00:00Z").to_string();
    let cb = cb.as_bytes();
    let now = unix_now();

    // Standard Webhooks endpoint.
    let good = sign_standard(ORDERS_NEW, "msg_1", now, pay);
    let cases: Vec<Case> = vec![
        (
            "forged with an unknown secret",
            standard_headers("msg_1", now, &sign_standard(FORGED, "msg_1", now, pay)),
            pay.to_vec(),
        ),
        (
            "replayed: signed 2 minutes ago, tolerance 60s",
            standard_headers(
                "msg_1",
                now - 120,
                &sign_standard(ORDERS_NEW, "msg_1", now - 120, pay),
            ),
            pay.to_vec(),
        ),
        (
            "from the future beyond the tolerance",
            standard_headers(
                "msg_1",
                now + 120,
                &sign_standard(ORDERS_NEW, "msg_1", now + 120, pay),
            ),
            pay.to_vec(),
        ),
        (
            "unsigned",
            vec![("content-type", "application/json".into())],
            pay.to_vec(),
        ),
        (
            "empty signature",
            standard_headers("msg_1", now, ""),
            pay.to_vec(),
        ),
        (
            "version only",
            standard_headers("msg_1", now, "v1,"),
            pay.to_vec(),
        ),
        (
            "truncated signature",
            standard_headers("msg_1", now, &good[..good.len() - 8]),
            pay.to_vec(),
        ),
        (
            "signature for another id",
            standard_headers("msg_2", now, &good),
            pay.to_vec(),
        ),
        (
            "body changed after signing",
            standard_headers("msg_1", now, &good),
            pay.iter().copied().chain(*b" ").collect(),
        ),
        (
            "a Stripe header on a Standard endpoint",
            stripe_headers(format!("t={now},v1={}", sign_stripe(STRIPE, now, pay))),
            pay.to_vec(),
        ),
    ];
    for (what, headers, body) in cases {
        expect_401(app.post_raw(ORDERS, &headers, body).await, what).await;
    }

    // Stripe endpoint.
    let good_cb = sign_stripe(STRIPE, now, cb);
    let cases: Vec<Case> = vec![
        (
            "forged",
            stripe_headers(format!(
                "t={now},v1={}",
                sign_stripe("whsec_some_other_secret_xyz", now, cb)
            )),
            cb.to_vec(),
        ),
        (
            "replayed",
            stripe_headers(format!(
                "t={},v1={}",
                now - 120,
                sign_stripe(STRIPE, now - 120, cb)
            )),
            cb.to_vec(),
        ),
        (
            "unsigned",
            vec![("content-type", "application/json".into())],
            cb.to_vec(),
        ),
        (
            "no timestamp",
            stripe_headers(format!("v1={good_cb}")),
            cb.to_vec(),
        ),
        ("no v1", stripe_headers(format!("t={now}")), cb.to_vec()),
        (
            "truncated",
            stripe_headers(format!("t={now},v1={}", &good_cb[..60])),
            cb.to_vec(),
        ),
        (
            "timestamp changed after signing",
            stripe_headers(format!("t={},v1={good_cb}", now + 1)),
            cb.to_vec(),
        ),
        (
            "body changed after signing",
            stripe_headers(format!("t={now},v1={good_cb}")),
            cb.iter().copied().chain(*b"\n").collect(),
        ),
    ];
    for (what, headers, body) in cases {
        expect_401(app.post_raw(CHARGEBACKS, &headers, body).await, what).await;
    }

    // Not one refused request reached Kafka.
    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    assert_eq!(env.end_offsets(&env.disputes_topic).await, vec![0; 3]);

    // Correctly signed: with the old secret too, during the rotation.
    let old = sign_standard(ORDERS_OLD, "msg_1", now, pay);
    let r = app
        .post_raw(ORDERS, &standard_headers("msg_1", now, &old), pay.to_vec())
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let r = app
        .post_raw(
            CHARGEBACKS,
            &stripe_headers(format!("t={now},v1={good_cb}")),
            cb.to_vec(),
        )
        .await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    env.wait_caught_up().await;
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events WHERE provider_event_id = 'evt_sig'")
            .await,
        1
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM orders WHERE order_id = 'ord_sig' AND payment_status = 'succeeded'"
        )
        .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM disputes").await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// An endpoint with secrets verifies whatever else is set; one without is
/// off unless unsigned intake is chosen; unsigned intake beyond loopback
/// needs a second, deliberate setting. A gauge says which endpoints take
/// unsigned webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_fails_closed_per_endpoint() {
    let env = Env::new().await;
    let intent = json!({"id": "evt_fc", "object": "event", "type": "payment_intent.succeeded",
        "created": unix_now(), "livemode": false,
        "data": {"object": {"id": "pi_fc", "object": "payment_intent", "amount": 100,
            "currency": "eur", "metadata": {"order_id": "ord_fc", "user_id": "usr_fc"}}}})
    .to_string();
    let post = |app: &TestApp, path: &'static str, body: String| {
        let http = app.http.clone();
        let url = app.url(path);
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let unsigned_payment = payment("evt_fc_g", "ord_fc_g", "succeeded", "2026-11-26T10:00:00Z");

    // Stripe secrets set, WEBHOOK_VERIFY=off: Stripe still verifies (an
    // unsigned event is 401 and changes nothing); the endpoints without
    // secrets take unsigned webhooks, as chosen.
    let app = env
        .start(&[
            ("WEBHOOK_VERIFY", "off"),
            ("STRIPE_WEBHOOK_SECRETS", STRIPE),
        ])
        .await;
    assert_eq!(post(&app, "/webhooks/stripe", intent.clone()).await, 401);
    assert_eq!(post(&app, ORDERS, unsigned_payment.to_string()).await, 202);
    let metrics = app.metrics().await;
    for (endpoint, v) in [
        ("orders", 1),
        ("chargebacks", 1),
        ("stripe", 0),
        ("adyen", 1),
    ] {
        let line = format!("payhook_webhook_endpoint_unsigned{{endpoint=\"{endpoint}\"}} {v}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    env.wait_caught_up().await;
    app.stop().await;

    // A Stripe-only deployment, verification on: it starts, Stripe
    // verifies, the generic endpoints are off.
    let app = env
        .start(&[("WEBHOOK_VERIFY", "on"), ("STRIPE_WEBHOOK_SECRETS", STRIPE)])
        .await;
    assert_eq!(post(&app, "/webhooks/stripe", intent.clone()).await, 401);
    assert_eq!(post(&app, ORDERS, unsigned_payment.to_string()).await, 404);
    assert_eq!(post(&app, "/webhooks/adyen", "{}".into()).await, 404);
    let metrics = app.metrics().await;
    assert!(metrics.contains("payhook_webhook_endpoint_unsigned{endpoint=\"stripe\"} 0"));
    assert!(!metrics.contains("endpoint=\"orders\"} 1"), "{metrics}");
    app.stop().await;
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE order_id = 'ord_fc'")
            .await,
        0,
        "the unsigned Stripe event moved nothing"
    );

    // Unsigned intake on every interface: refused before anything starts,
    // unless confirmed deliberately.
    let all_interfaces = [("WEBHOOK_VERIFY", "off"), ("HTTP_ADDR", "0.0.0.0:0")];
    let e = payhook::app::Application::build(env.config(&all_interfaces))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER"),
        "{e}"
    );
    let mut confirmed = all_interfaces.to_vec();
    confirmed.push(("WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER", "true"));
    let app = env.start(&confirmed).await;
    app.stop().await;
    env.cleanup().await;
}
