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

/// Writes `head` (and nothing more) on a raw connection and returns what the
/// server answers, and when: at the end of the first JSON answer, or (with
/// `until_close`) when the server closes, or when `wait` passes.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &[u8],
    wait: std::time::Duration,
    until_close: bool,
) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One whole JSON answer is enough.
                    if !until_close && out.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_slow_and_deep_requests_are_refused_cleanly() {
    use std::time::Duration;
    let env = Env::new().await;
    let app = env
        .start(&[
            ("HTTP_REQUEST_TIMEOUT", "500ms"),
            ("HTTP_HEADER_TIMEOUT", "500ms"),
        ])
        .await;

    // A declared 100 MB body is refused from its Content-Length, before any
    // of it is read: the answer comes though almost nothing was sent (had
    // the server waited for the body, this would be a 408 after 500ms).
    let (answer, took) = raw_exchange(
        app.addr,
        b"POST /webhooks/payments/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100000000\r\n\r\n{\"a\":",
        Duration::from_secs(5),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );
    assert!(took < Duration::from_millis(450), "took {took:?}");

    // A body that trickles in slower than HTTP_REQUEST_TIMEOUT: 408.
    let (answer, took) = raw_exchange(
        app.addr,
        b"POST /webhooks/payments/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"a\":",
        Duration::from_secs(5),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(took >= Duration::from_millis(450), "took {took:?}");

    // Headers that never finish: the connection is closed after
    // HTTP_HEADER_TIMEOUT instead of being held forever.
    let (_, took) = raw_exchange(
        app.addr,
        b"POST /webhooks/payments/orders HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(5),
        true,
    )
    .await;
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Nor may a connection that sends nothing at all, or that goes idle
    // after a request, hold its slot.
    let (_, took) = raw_exchange(app.addr, b"", Duration::from_secs(5), true).await;
    assert!(
        took < Duration::from_secs(3),
        "silent connection held {took:?}"
    );
    let (answer, took) = raw_exchange(
        app.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
        true,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // Nesting far deeper than any parser's limit: a clean 400, no crash.
    for body in [
        "[".repeat(1 << 17),
        "{\"a\":".repeat(40_000),
        format!("{}{}", "[".repeat(33), "]".repeat(33)),
    ] {
        let r = app
            .post_raw(
                "/webhooks/payments/orders",
                &[("content-type", "application/json".into())],
                body,
            )
            .await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_json", "{v}");
    }
    // The server is still there.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    use std::time::Duration;
    let env = Env::new().await;
    let app = env
        .start(&[
            ("HTTP_MAX_CONNECTIONS", "2"),
            ("HTTP_HEADER_TIMEOUT", "30s"),
        ])
        .await;
    // Two idle connections take both slots.
    let idle1 = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let http = reqwest::Client::new();
    let url = app.url("/healthz");
    let third = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served over the cap"
    );
    // A slot frees up: the waiting client is served.
    drop(idle1);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(idle2);
    app.stop().await;
    env.cleanup().await;
}
