//! Start-up right after the topics are created: a new topic reaches the
//! broker's metadata a moment after its creation is acknowledged, and
//! neither `payhook topics` nor `payhook serve` may trip over that.

use std::time::{Duration, Instant};

use payhook::{
    app,
    kafka::{
        KafkaError,
        producer::{Producer, ProducerConfig},
    },
};
use uuid::Uuid;

use crate::helpers::{Env, payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_right_after_topics_creates_them() {
    let env = Env::new().await;
    let id = Uuid::new_v4().simple().to_string();
    let (orders, disputes, dlq) = (
        format!("it-{id}-fresh-orders"),
        format!("it-{id}-fresh-disputes"),
        format!("it-{id}-fresh-dlq"),
    );
    let settings = [
        ("KAFKA_ORDERS_TOPIC", orders.as_str()),
        ("KAFKA_DISPUTES_TOPIC", disputes.as_str()),
        ("KAFKA_DLQ_TOPIC", dlq.as_str()),
        ("KAFKA_PARTITIONS", "4"),
    ];
    // What `payhook topics` runs, then what `payhook serve` runs, with
    // nothing in between (as `./scripts/run` does).
    let created: Vec<(String, bool)> = payhook::ops::topics::create(&env.config(&settings))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.topic, r.created))
        .collect();
    assert_eq!(
        created,
        [
            (orders.clone(), true),
            (disputes.clone(), true),
            (dlq.clone(), true)
        ]
    );
    // `topics` returned only once every partition is in the metadata.
    for t in [&orders, &disputes, &dlq] {
        assert_eq!(env.kafka.partitions(t).await.unwrap(), [0, 1, 2, 3]);
    }
    let app = env.start(&settings).await;
    app.payment(&payment(
        "fresh_1",
        "ord_f",
        "succeeded",
        "2026-11-26T10:00:00Z",
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env
        .count("SELECT count(*) FROM payment_events WHERE provider_event_id = 'fresh_1'")
        .await
        == 0
    {
        assert!(Instant::now() < deadline, "the webhook was never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
    for t in [&orders, &disputes, &dlq] {
        let _ = env.kafka.delete_topic(t).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_waits_a_bounded_time_for_a_topic_to_appear() {
    let env = Env::new().await;
    let late = format!("it-{}-late", Uuid::new_v4().simple());
    // Not there: a bounded wait, then the clear error.
    let started = Instant::now();
    let e = env
        .kafka
        .wait_for_topic(&late, 1, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(e, KafkaError::UnknownTopic { .. }), "{e}");
    assert!(e.to_string().contains("payhook topics"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Created while the producer starts: it waits for it and works.
    let creator = {
        let kafka = env.kafka.clone();
        let late = late.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let n = std::num::NonZeroU32::new(2).unwrap();
            assert!(kafka.ensure_topic(&late, n, 1).await.unwrap());
        })
    };
    let (producer, lanes) = Producer::start(
        &env.kafka,
        &[&late],
        ProducerConfig {
            linger: Duration::ZERO,
            queue_per_partition: 8,
            publish_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await
    .expect("the topic appeared within the producer's wait");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    creator.await.unwrap();
    let record = rskafka::record::Record {
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    };
    producer.publish(&late, record).await.unwrap();
    drop(producer);
    lanes.drained().await;
    let _ = env.kafka.delete_topic(&late).await;
    env.cleanup().await;
}

/// In a database that is not UTF8, Postgres would refuse webhooks the edge
/// accepts (text outside the encoding): serve refuses to start instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_database_that_is_not_utf8() {
    let env = Env::new().await;
    let name = format!("payhook_latin1_{}", Uuid::new_v4().simple());
    env.db
        .batch_execute(&format!(
            "CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0 \
             LC_COLLATE 'C' LC_CTYPE 'C'"
        ))
        .await
        .unwrap();
    let url = match env.db_url.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{name}"),
        None => unreachable!(),
    };
    let e = app::Application::build(env.config(&[("DATABASE_URL", &url)]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, app::StartError::DatabaseEncoding { encoding } if encoding == "LATIN1"),
        "{e}"
    );
    assert!(e.to_string().contains("UTF8"), "{e}");
    env.db
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    env.cleanup().await;
}

/// A SIGTERM that arrives while `serve` is still starting (an orchestrator
/// stopping a pod that has not come up yet) is a graceful stop: payhook
/// exits 0 having logged that it stopped, not killed by the signal's
/// default action. The signal is sent as soon as the process writes its
/// first line, during start-up.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_start_up_is_a_graceful_stop() {
    use std::os::unix::process::ExitStatusExt;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let env = Env::new().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_payhook"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env.config_pairs(&[]) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    // The log is on stderr.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("payhook wrote nothing within 30 s")
        .unwrap()
        .expect("payhook wrote nothing");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let mut rest = vec![first];
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        rest.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("payhook did not exit within 60 s of SIGTERM")
        .unwrap();
    let log = rest.join("\n");
    assert_eq!(status.signal(), None, "killed by the signal:\n{log}");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("payhook stopped"), "{log}");
    env.cleanup().await;
}
