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

/// Every body Postgres could not store is a 400 at the edge, with a detail
/// that says why, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_postgres_cannot_store_are_refused_before_publishing() {
    let env = Env::new().await;
    let app = env.start(&[("OCCURRED_AT_MAX_FUTURE", "1h")]).await;
    let body = |extra: &str| {
        format!(
            r#"{{"provider_event_id":"evt_x","order_id":"ord_x","user_id":"usr_1","status":"pending","amount":1,"currency":"USD","occurred_at":"2026-11-26T10:00:00Z","extra":{extra}}}"#
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (body(r#""\u0000""#), "\\u0000"),
        (body(r#"{"\u0000":1}"#), "\\u0000"),
        (
            body(r#"1"#).replace(r#""ord_x""#, r#""ord\u0000x""#),
            "\\u0000",
        ),
        (body(r#""\ud800""#), "surrogate"),
        (body(r#""\udc00\ud800""#), "surrogate"),
        (body(r#""\ud83d\u0041""#), "surrogate"),
        (body("1e-16384"), "Postgres cannot store"),
        (body("1e-1001"), "exponent"),
        (body(&format!("0.{}1", "0".repeat(16_383))), "16383 digits"),
        (body("1e400"), "number out of range"),
    ];
    for (b, why) in &cases {
        let r = app
            .post_raw(
                "/webhooks/payments/orders",
                &[("content-type", "application/json".into())],
                b.clone(),
            )
            .await;
        assert_eq!(r.status(), 400, "{why}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "invalid_json", "{v}");
        assert!(v["detail"].as_str().unwrap().contains(why), "{why}: {v}");
    }
    // An event dated beyond OCCURRED_AT_MAX_FUTURE (here 1h) of the server's
    // clock, on either endpoint.
    let ahead = (chrono::Utc::now() + chrono::Duration::minutes(61))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (path, b) in [
        (
            "/webhooks/payments/orders",
            payment("evt_f", "ord_f", "succeeded", &ahead),
        ),
        (
            "/webhooks/payments/chargebacks",
            crate::helpers::chargeback("cb_f", "ord_f", "opened", &ahead),
        ),
    ] {
        let r = app.post(path, &b).await;
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["error"].as_str(), v["field"].as_str()),
            (Some("invalid_field"), Some("occurred_at")),
            "{v}"
        );
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("OCCURRED_AT_MAX_FUTURE")
        );
    }
    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    assert_eq!(env.end_offsets(&env.disputes_topic).await, vec![0; 3]);
    // Within the bound is fine.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    app.payment(&payment("evt_s", "ord_s", "pending", &soon))
        .await;
    app.stop().await;
    env.cleanup().await;
}

/// Sends `head` then `body` in `chunk`-byte writes, `pause` apart, while
/// reading; returns what was read by the time the server closed or `wait`
/// passed, and whether any write failed (a reset while sending).
async fn send_slowly(
    addr: std::net::SocketAddr,
    head: String,
    body_len: usize,
    chunk: usize,
    pause: std::time::Duration,
    wait: std::time::Duration,
) -> (String, Option<std::io::Error>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let piece = vec![b' '; chunk];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.min(body_len - sent);
            wr.write_all(&piece[..n]).await?;
            sent += n;
            tokio::time::sleep(pause).await;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    // Read as a client does once it has sent everything: only after the
    // writer is done (a client that stops at the first write error never
    // reads at all).
    let written = writer.await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    (String::from_utf8_lossy(&out).into_owned(), written.err())
}

/// A client that goes on sending a body refused early (413 from its
/// Content-Length, 415, 404) reads the refusal, not a reset: the server reads
/// and discards the rest of the body before it closes (lingering close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_still_being_sent_gets_the_answer_not_a_reset() {
    use std::time::Duration;
    let env = Env::new().await;
    let app = env.start(&[("HTTP_MAX_BODY_BYTES", "4096")]).await;
    let len = 2 << 20;
    let head = |path: &str, ct: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ct}\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    for (h, status) in [
        (head("/webhooks/payments/orders", "application/json"), "413"),
        (head("/webhooks/payments/orders", "text/plain"), "415"),
        (head("/nope", "application/json"), "404"),
    ] {
        // 2 MiB in 64 KiB pieces, a little slower than the server answers:
        // the refusal is sent while most of the body is still to come.
        let (answer, write_error) = send_slowly(
            app.addr,
            h,
            len,
            64 << 10,
            Duration::from_millis(5),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            write_error.is_none(),
            "{status}: the client could not finish sending: {write_error:?}"
        );
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer:?}"
        );
    }
    // Nor is the connection spoiled: once the body is drained, the next
    // request on it is served.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let body = vec![b' '; 100_000];
        s.write_all(
            head("/webhooks/payments/orders", "application/json")
                .replace(&len.to_string(), "100000")
                .as_bytes(),
        )
        .await
        .unwrap();
        s.write_all(&body).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while !String::from_utf8_lossy(&out).contains(r#"{"status":"ok"}"#) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains(r#"{"status":"ok"}"#), "{text}");
    }
    // A client that asked `Expect: 100-continue` is not invited to send:
    // the refusal comes at once and no `100 Continue` precedes it.
    let (answer, _) = raw_exchange(
        app.addr,
        format!(
            "POST /webhooks/payments/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {len}\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(env.end_offsets(&env.orders_topic).await, vec![0; 3]);
    app.stop().await;
    env.cleanup().await;
}
