//! Records that cannot be applied go to the dead-letter topic, and only
//! then does the partition move past them.

use payhook::{
    kafka::envelope::{Envelope, EventType},
    ops::{self, dlq::ReplaySelection},
};
use serde_json::{json, value::RawValue};

use crate::helpers::{Env, at, payment};

fn envelope(kind: EventType, key: &str, body: &serde_json::Value) -> Vec<u8> {
    let raw = RawValue::from_string(body.to_string()).unwrap();
    serde_json::to_vec(&Envelope::new(kind, key, raw)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_good_ones_applied_in_order() {
    let env = Env::new().await;
    let key = Some("ord_p");
    let good = |i: i64| {
        envelope(
            EventType::OrderWebhook,
            "ord_p",
            &payment(&format!("g{i}"), "ord_p", "pending", &at(i)),
        )
    };
    let mut unknown_type: serde_json::Value = serde_json::from_slice(&good(99)).unwrap();
    unknown_type["type"] = json!("refund.webhook");
    let mut bad_payload: serde_json::Value = serde_json::from_slice(&good(98)).unwrap();
    bad_payload["payload"]["currency"] = json!("usd");
    let records = vec![
        (key, good(0)),
        (key, b"not json at all".to_vec()),
        (key, good(1)),
        (key, br#"{"event_id":"nope"}"#.to_vec()),
        (key, good(2)),
        (key, serde_json::to_vec(&unknown_type).unwrap()),
        (key, serde_json::to_vec(&bad_payload).unwrap()),
        (key, good(3)),
    ];
    // Written three days ago (as by a producer catching up): the dead
    // letters must still be stamped when they are written, or a topic's
    // retention could delete them at once.
    let written = chrono::DateTime::from_timestamp_millis(
        (chrono::Utc::now() - chrono::Duration::days(3)).timestamp_millis(),
    )
    .unwrap();
    env.produce_raw_at(&env.orders_topic, records, written)
        .await;

    let started = chrono::Utc::now();
    let app = env.start(&[]).await;
    env.wait_caught_up().await;

    // The good ones, in order.
    let rows = env
        .db
        .query(
            "SELECT provider_event_id FROM payment_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["g0", "g1", "g2", "g3"]);
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE last_provider_event_id = 'g3'")
            .await,
        1
    );

    // The four poison records, unchanged, with their provenance.
    let cfg = env.config(&[]);
    let letters = ops::dlq::list(&cfg).await.unwrap();
    assert_eq!(letters.len(), 4, "{letters:?}");
    let mut by_offset: Vec<_> = letters.iter().collect();
    by_offset.sort_by_key(|d| d.source_offset());
    let offsets: Vec<Option<i64>> = by_offset.iter().map(|d| d.source_offset()).collect();
    assert_eq!(offsets, [Some(1), Some(3), Some(5), Some(6)]);
    assert_eq!(
        by_offset[0].record.value.as_deref(),
        Some(&b"not json at all"[..])
    );
    assert_eq!(by_offset[0].key(), "ord_p");
    for d in &by_offset {
        assert_eq!(d.source_topic(), Some(env.orders_topic.as_str()));
        assert_eq!(d.error_class(), Some("permanent"));
        assert_eq!(d.attempts(), Some(1));
        assert!(d.first_failure().is_some());
        // As the broker stored them: the dead letter's own time is when it
        // was written, the original's is in its header.
        assert!(
            d.record.timestamp >= started - chrono::Duration::seconds(1),
            "dead letter stamped {} (original {written})",
            d.record.timestamp
        );
        assert_eq!(d.original_timestamp(), Some(written));
    }
    assert!(
        by_offset[2]
            .error_message()
            .unwrap()
            .contains("refund.webhook")
    );
    assert!(by_offset[3].error_message().unwrap().contains("currency"));

    let metrics = app.metrics().await;
    let line = |outcome: &str| {
        format!(
            "payhook_consumer_records_total{{topic=\"{}\",outcome=\"{outcome}\"}}",
            env.orders_topic
        )
    };
    assert!(
        metrics.contains(&format!("{} 4\n", line("dead_lettered"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{} 4\n", line("applied"))),
        "{metrics}"
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_failing_is_dead_lettered_after_the_limit_then_replayed() {
    let env = Env::new().await;
    // A database that refuses one event: a failure the consumer sees as
    // transient (it is not the record's fault) until retries run out.
    env.db
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.provider_event_id = 'cursed' THEN RAISE EXCEPTION 'refusing %', NEW.provider_event_id; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON payment_events FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let app = env
        .start(&[
            ("CONSUMER_MAX_ATTEMPTS", "3"),
            ("RETRY_BACKOFF_MIN", "10ms"),
            ("RETRY_BACKOFF_MAX", "50ms"),
        ])
        .await;
    app.payment(&payment("before", "ord_c", "pending", &at(0)))
        .await;
    let cursed = app
        .payment(&payment("cursed", "ord_c", "succeeded", &at(1)))
        .await;
    app.payment(&payment("after", "ord_c", "failed", &at(2)))
        .await;
    env.wait_caught_up().await;

    let ids: Vec<String> = env
        .db
        .query(
            "SELECT provider_event_id FROM payment_events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["before", "after"]);
    let cfg = env.config(&[]);
    let letters = ops::dlq::list(&cfg).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id(), Some(cursed));
    assert_eq!(letters[0].error_class(), Some("transient"));
    assert_eq!(letters[0].attempts(), Some(3));
    assert!(
        letters[0]
            .error_message()
            .unwrap()
            .contains("refusing cursed")
    );

    // The cause is fixed; replay by event id.
    env.db
        .batch_execute("DROP TRIGGER refuse ON payment_events")
        .await
        .unwrap();
    let sel = ReplaySelection {
        event_ids: vec![cursed],
        ..Default::default()
    };
    let replayed_at = chrono::Utc::now();
    let done = ops::dlq::replay(&cfg, &sel, false).await.unwrap();
    assert_eq!(done.len(), 1);
    // The replayed record is new in its topic: stamped at the replay.
    let p = done[0].published.unwrap();
    let back = env
        .record_at(&env.orders_topic, p.partition, p.offset)
        .await;
    assert!(
        back.timestamp >= replayed_at - chrono::Duration::seconds(1),
        "replayed record stamped {}",
        back.timestamp
    );
    assert_eq!(back.value, letters[0].record.value);
    env.wait_caught_up().await;
    assert_eq!(
        env.count("SELECT count(*) FROM payment_events WHERE provider_event_id = 'cursed'")
            .await,
        1
    );
    // Replaying again is harmless.
    ops::dlq::replay(&cfg, &sel, false).await.unwrap();
    env.wait_caught_up().await;
    assert_eq!(env.count("SELECT count(*) FROM payment_events").await, 3);
    assert_eq!(
        ops::dlq::list(&cfg).await.unwrap().len(),
        1,
        "nothing new dead-lettered"
    );
    // The replayed event is older than "after": the order keeps "failed".
    assert_eq!(
        env.count("SELECT count(*) FROM orders WHERE payment_status = 'failed'")
            .await,
        1
    );
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_report_on_the_pipeline() {
    let env = Env::new().await;
    let app = env.start(&[]).await;
    app.payment(&payment("m1", "ord_m", "pending", &at(0)))
        .await;
    let r = app
        .post("/webhooks/payments/orders", &json!({"order_id": 1}))
        .await;
    assert_eq!(r.status(), 400);
    env.wait_caught_up().await;
    let metrics = app.metrics().await;
    for want in [
        r#"payhook_webhooks_total{endpoint="orders",status="202"} 1"#,
        r#"payhook_webhooks_total{endpoint="orders",status="400"} 1"#,
        "payhook_publish_seconds_count 1",
    ] {
        assert!(metrics.contains(want), "{want} missing in\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "payhook_consumer_records_total{{topic=\"{}\",outcome=\"applied\"}} 1",
        env.orders_topic
    )));

    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    let r = app.http.post(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    app.stop().await;
    env.cleanup().await;
}

/// Records written straight to the topic (no edge) with a payload Postgres
/// could not store, or dated beyond OCCURRED_AT_MAX_FUTURE of their own
/// envelope's timestamp, fail to decode: dead-lettered at once, and the
/// partition moves on to the good records behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_and_far_future_records_are_dead_lettered_not_retried() {
    let env = Env::new().await;
    let key = Some("ord_u");
    let good = |i: i64| {
        envelope(
            EventType::OrderWebhook,
            "ord_u",
            &payment(&format!("u{i}"), "ord_u", "pending", &at(i)),
        )
    };
    let raw_envelope = |payload: String| {
        let raw = RawValue::from_string(payload).unwrap();
        serde_json::to_vec(&Envelope::new(EventType::OrderWebhook, "ord_u", raw)).unwrap()
    };
    let hazard = |extra: &str| {
        let mut p = payment("hz", "ord_u", "pending", &at(5)).to_string();
        p.pop();
        raw_envelope(format!(r#"{p},"extra":{extra}}}"#))
    };
    // Accepted (enveloped) on 2026-11-26T10:00:00Z, occurring two days later.
    let mut far: serde_json::Value = serde_json::from_slice(&good(6)).unwrap();
    far["timestamp"] = json!("2026-11-26T10:00:00Z");
    far["payload"]["occurred_at"] = json!("2026-11-28T10:00:01Z");
    let records = vec![
        (key, good(0)),
        (key, hazard(r#""\u0000""#)),
        (key, hazard(r#""\udc00""#)),
        (key, hazard("1e-16384")),
        (key, serde_json::to_vec(&far).unwrap()),
        (key, good(1)),
    ];
    env.produce_raw(&env.orders_topic, records).await;
    let app = env.start(&[]).await;
    env.wait_caught_up().await;
    let ids: Vec<String> = env
        .db
        .query(
            "SELECT provider_event_id FROM payment_events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["u0", "u1"]);
    let mut letters = ops::dlq::list(&env.config(&[])).await.unwrap();
    letters.sort_by_key(|d| d.source_offset());
    let why: Vec<(Option<i64>, Option<&str>, Option<u32>)> = letters
        .iter()
        .map(|d| (d.source_offset(), d.error_class(), d.attempts()))
        .collect();
    assert_eq!(
        why,
        (1..=4)
            .map(|o| (Some(o), Some("permanent"), Some(1)))
            .collect::<Vec<_>>()
    );
    let messages: Vec<&str> = letters.iter().map(|d| d.error_message().unwrap()).collect();
    assert!(messages[0].contains("\\u0000"), "{messages:?}");
    assert!(messages[1].contains("surrogate"), "{messages:?}");
    assert!(
        messages[2].contains("Postgres cannot store"),
        "{messages:?}"
    );
    assert!(
        messages[3].contains("OCCURRED_AT_MAX_FUTURE"),
        "{messages:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Runs the payhook binary (`serve`, at debug level) against `env` until
/// `until(&url)` completes, then stops it with SIGTERM; returns everything
/// it printed.
async fn serve_binary_until<F, Fut>(env: &Env, until: F) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use tokio::io::AsyncReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        "exec \"$0\" serve 2>&1",
        env!("CARGO_BIN_EXE_payhook"),
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("RUST_LOG", "debug")
    .env("LOG_FORMAT", "json")
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env.config_pairs(&[
        ("HTTP_ADDR", &format!("127.0.0.1:{port}")),
        ("WEBHOOK_VERIFY", "off"),
        ("RETRY_BACKOFF_MAX", "1s"),
    ]) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = Vec::new();
        out.read_to_end(&mut text).await.unwrap();
        String::from_utf8_lossy(&text).into_owned()
    });
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http.get(format!("{url}/readyz")).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "payhook never served");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    until(url).await;
    let pid = child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await;
    reader.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_copy_is_dead_lettered_in_part_and_its_partition_moves_on() {
    let env = Env::new().await;
    // Another producer writes a valid Kafka record that is no payhook
    // envelope: an unknown `type` of about 1 MB, as large as the topic
    // accepts. Its dead letter (the value, plus headers quoting the error)
    // cannot be copied whole into a dead-letter topic of the same size.
    let big_type = "t".repeat(1_048_000);
    let value = format!(
        r#"{{"event_id":"0193a0c4-0000-7000-8000-000000000001","key":"ord_big","type":"{big_type}","payload":{{}},"timestamp":"2026-11-26T10:00:00Z"}}"#
    )
    .into_bytes();
    let value_len = value.len();
    env.produce_raw(&env.orders_topic, vec![(Some("ord_big"), value)])
        .await;
    let started = std::time::Instant::now();
    let env_ref = &env;
    let logs = serve_binary_until(&env, |url| async move {
        let env = env_ref;
        // The next webhook for that key is applied.
        let r = reqwest::Client::new()
            .post(format!("{url}/webhooks/payments/orders"))
            .header("content-type", "application/json")
            .body(payment("after-big", "ord_big", "succeeded", &at(1)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while env
            .count("SELECT count(*) FROM payment_events WHERE provider_event_id = 'after-big'")
            .await
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the webhook after the large record was never applied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!(
        "a {value_len}-byte foreign record dead-lettered and the next webhook applied {:?} after start",
        started.elapsed()
    );

    let letters = ops::dlq::list(&env.config(&[])).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0];
    assert_eq!(d.truncated(), Some("value"));
    assert_eq!(
        d.record.headers["dlq.original.value.bytes"],
        value_len.to_string().into_bytes()
    );
    assert_eq!(d.record.headers["dlq.original.value.sha256"].len(), 64);
    assert_eq!(d.source_topic(), Some(env.orders_topic.as_str()));
    assert_eq!(d.source_offset(), Some(0));
    let msg = d.error_message().unwrap();
    assert!(
        msg.contains("unknown envelope type") && msg.len() < 1100,
        "{}",
        msg.len()
    );
    // A replay of a cut dead letter is refused: it would publish the part.
    let sel = ReplaySelection {
        partition: Some(d.partition),
        ..Default::default()
    };
    let e = ops::dlq::replay(&env.config(&[]), &sel, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds only part"), "{e}");

    // No log line carried the record, or more than an excerpt of it.
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(
        logs.contains("sending it to the dead-letter topic"),
        "{logs}"
    );
    assert!(longest < 4096, "a log line of {longest} bytes");
    env.cleanup().await;
}
