//! The HTTP edge: bad input gets a clear 4xx and publishes nothing.

use serde_json::{Value, json};

use crate::helpers::{Env, payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_publish_nothing() {
    let env = Env::new().await;
    let app = env.start(&[("HTTP_MAX_BODY_BYTES", "2048")]).await;
    let orders = app.url("/webhooks/payments/orders");
    let chargebacks = app.url("/webhooks/payments/chargebacks");

    let send = |url: String, ct: Option<&'static str>, body: String| {
        let http = app.http.clone();
        async move {
            let mut req = http.post(url).body(body);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    };
    let json_ct = Some("application/json");

    let (s, v) = send(orders.clone(), json_ct, "{not json".into()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")), "{v}");

    let (s, v) = send(orders.clone(), json_ct, "[1,2]".into()).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")), "{v}");

    let mut b = payment("e", "o", "succeeded", "2026-11-26T10:00:00Z");
    b["currency"] = json!("usd");
    let (s, v) = send(orders.clone(), json_ct, b.to_string()).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"], "invalid_field");
    assert_eq!(v["field"], "currency");
    assert!(v["detail"].as_str().unwrap().contains("currency"), "{v}");

    let mut b = payment("e", "o", "succeeded", "2026-11-26T10:00:00Z");
    b.as_object_mut().unwrap().remove("user_id");
    let (s, v) = send(orders.clone(), json_ct, b.to_string()).await;
    assert_eq!(
        (s, v["error"].as_str(), v["field"].as_str()),
        (400, Some("missing_field"), Some("user_id"))
    );

    // A payment body is not a chargeback.
    let b = payment("e", "o", "succeeded", "2026-11-26T10:00:00Z");
    let (s, v) = send(chargebacks.clone(), json_ct, b.to_string()).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("status")), "{v}");

    let (s, v) = send(orders.clone(), Some("text/plain"), b.to_string()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, _) = send(orders.clone(), None, b.to_string()).await;
    assert_eq!(s, 415);

    let mut big = b.clone();
    big["pad"] = json!("x".repeat(4096));
    let (s, v) = send(orders.clone(), json_ct, big.to_string()).await;
    assert_eq!((s, v["error"].as_str()), (413, Some("payload_too_large")));

    let r = app.http.get(orders.clone()).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Nothing reached Kafka.
    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    assert_eq!(env.end_offsets(&env.disputes_topic).await, vec![0; 3]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledgement_in_time_is_a_503_with_retry_after() {
    let env = Env::new().await;
    // A deadline no broker can meet.
    let app = env
        .start(&[("KAFKA_PUBLISH_TIMEOUT", "1us"), ("HTTP_RETRY_AFTER", "7s")])
        .await;
    let r = app
        .post(
            "/webhooks/payments/orders",
            &payment("e1", "o1", "pending", "2026-11-26T10:00:00Z"),
        )
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unavailable");
    app.stop().await;
    env.cleanup().await;
}
