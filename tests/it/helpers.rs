//! Test harness: a payhook on port 0 against a fresh database and fresh
//! topics.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use std::sync::Arc;

use payhook::{
    app::Application,
    config::Config,
    http::{AppState, Endpoint},
    kafka::{
        Kafka,
        producer::{Publish, PublishError, Published},
    },
    providers::signature::{Scheme, SigningKey, Verifier},
};
use rskafka::client::partition::OffsetAt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PARTITIONS: u32 = 3;

pub fn admin_url() -> String {
    std::env::var("PAYHOOK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn brokers() -> String {
    std::env::var("PAYHOOK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A database and two topics of one test's own.
pub struct Env {
    /// Partitions per topic.
    pub partitions: u32,
    pub db_name: String,
    pub db_url: String,
    pub orders_topic: String,
    pub disputes_topic: String,
    pub dlq_topic: String,
    pub kafka: Kafka,
    pub db: tokio_postgres::Client,
}

impl Env {
    pub async fn new() -> Self {
        Self::with_partitions(PARTITIONS).await
    }

    /// As [`Env::new`], with `partitions` partitions per topic.
    pub async fn with_partitions(partitions: u32) -> Self {
        init_logs();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("payhook_test_{id}");
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls)
            .await
            .expect("cannot reach Postgres: run ./scripts/services up");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .unwrap();
        let base = admin_url();
        let db_url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{db_name}"),
            None => panic!("PAYHOOK_TEST_DATABASE_URL must end in /<database>"),
        };
        let kafka = Kafka::connect(&[brokers()], Duration::from_secs(20))
            .await
            .expect("cannot reach Kafka: run ./scripts/services up");
        let orders_topic = format!("it-{id}-orders");
        let disputes_topic = format!("it-{id}-disputes");
        let dlq_topic = format!("it-{id}-dlq");
        let n = std::num::NonZeroU32::new(partitions).unwrap();
        for t in [&orders_topic, &disputes_topic, &dlq_topic] {
            assert!(kafka.ensure_topic(t, n, 1).await.unwrap());
        }
        // Migrations run at start-up; apply them now too, so tests may query
        // before the first app starts.
        let cfg = Config::from_map(&HashMap::from([(
            "DATABASE_URL".to_string(),
            db_url.clone(),
        )]))
        .unwrap();
        payhook::ops::migrate(&cfg).await.unwrap();
        let (db, conn) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
        tokio::spawn(conn);
        Self {
            partitions,
            db_name,
            db_url,
            orders_topic,
            disputes_topic,
            dlq_topic,
            kafka,
            db,
        }
    }

    /// The configuration an app of this test runs with.
    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        Config::from_map(&self.config_pairs(extra)).unwrap()
    }

    /// [`Self::config`] as variables, for a payhook child process.
    pub fn config_pairs(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", self.db_url.as_str()),
            ("DATABASE_POOL_SIZE", "4"),
            ("KAFKA_BROKERS", brokers().as_str()),
            ("KAFKA_ORDERS_TOPIC", self.orders_topic.as_str()),
            ("KAFKA_DISPUTES_TOPIC", self.disputes_topic.as_str()),
            ("KAFKA_DLQ_TOPIC", self.dlq_topic.as_str()),
            ("KAFKA_FETCH_MAX_WAIT", "100ms"),
            ("RETRY_BACKOFF_MAX", "1s"),
            ("SHUTDOWN_TIMEOUT", "10s"),
            // Tests that are about signatures switch it on with their secrets.
            ("WEBHOOK_VERIFY", "off"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            map.insert(k.to_string(), v.to_string());
        }
        map
    }

    pub async fn start(&self, extra: &[(&str, &str)]) -> TestApp {
        let app = Application::build(self.config(extra)).await.unwrap();
        let addr = app.local_addr();
        let admin = app.admin_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            addr,
            admin,
            shutdown,
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    /// Writes raw records straight to `topic` (no HTTP, no validation).
    pub async fn produce_raw(&self, topic: &str, records: Vec<(Option<&str>, Vec<u8>)>) {
        self.produce_raw_at(topic, records, chrono::Utc::now())
            .await;
    }

    /// [`Self::produce_raw`], with every record stamped `timestamp`.
    pub async fn produce_raw_at(
        &self,
        topic: &str,
        records: Vec<(Option<&str>, Vec<u8>)>,
        timestamp: chrono::DateTime<chrono::Utc>,
    ) {
        let records = records
            .into_iter()
            .map(|(key, value)| rskafka::record::Record {
                key: key.map(|k| k.as_bytes().to_vec()),
                value: Some(value),
                headers: Default::default(),
                timestamp,
            })
            .collect();
        self.produce_records(topic, records).await;
    }

    /// Writes whole records (headers and timestamp as given) to `topic`.
    pub async fn produce_records(&self, topic: &str, records: Vec<rskafka::record::Record>) {
        let (producer, lanes) = payhook::kafka::producer::Producer::start(
            &self.kafka,
            &[topic],
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
        // One at a time, so records of one key keep their order.
        for record in records {
            producer.publish(topic, record).await.unwrap();
        }
        drop(producer);
        lanes.drained().await;
    }

    /// The record at `offset` of `topic`'s `partition`.
    pub async fn record_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> rskafka::record::Record {
        let c = self.kafka.partition_client(topic, partition).await.unwrap();
        let (records, _) = c.fetch_records(offset, 1..1_000_000, 1_000).await.unwrap();
        records
            .into_iter()
            .find(|r| r.offset == offset)
            .unwrap_or_else(|| panic!("no record at {topic}/{partition}/{offset}"))
            .record
    }

    /// Latest offset of every partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for p in 0..self.partitions as i32 {
            let c = self.kafka.partition_client(topic, p).await.unwrap();
            out.push(c.get_offset(OffsetAt::Latest).await.unwrap());
        }
        out
    }

    /// Stored offsets of `topic` for `group`, per partition (0 if none).
    pub async fn stored_offsets(&self, group: &str, topic: &str) -> Vec<i64> {
        let mut out = vec![0; self.partitions as usize];
        for r in self
            .db
            .query(
                "SELECT partition, next_offset FROM consumer_offsets
                 WHERE consumer_group = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await
            .unwrap()
        {
            let p: i32 = r.get(0);
            out[p as usize] = r.get(1);
        }
        out
    }

    /// Waits until the consumers have applied everything in both topics.
    pub async fn wait_caught_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (group, topic) in [
            ("payhook-orders", &self.orders_topic),
            ("payhook-disputes", &self.disputes_topic),
        ] {
            let end = self.end_offsets(topic).await;
            loop {
                let stored = self.stored_offsets(group, topic).await;
                if stored == end {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "consumer of {topic} stuck at {stored:?}, log end {end:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).await.unwrap().get(0)
    }

    pub async fn cleanup(self) {
        let _ = self.kafka.delete_topic(&self.orders_topic).await;
        let _ = self.kafka.delete_topic(&self.disputes_topic).await;
        let _ = self.kafka.delete_topic(&self.dlq_topic).await;
        drop(self.db);
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .await
            .unwrap();
    }
}

/// A running payhook.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `ADMIN_ADDR`'s bound address, when set.
    pub admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<payhook::app::Stopped>>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Posts raw bytes with extra headers (content type included).
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.unwrap()
    }

    /// Posts a payment webhook; panics unless it is answered 202.
    pub async fn payment(&self, body: &Value) -> Uuid {
        let r = self.post("/webhooks/payments/orders", body).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["event_id"].as_str().unwrap().parse().unwrap()
    }

    /// Posts a chargeback webhook; panics unless it is answered 202.
    pub async fn chargeback(&self, body: &Value) -> Uuid {
        let r = self.post("/webhooks/payments/chargebacks", body).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["event_id"].as_str().unwrap().parse().unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            assert_eq!(t.await.unwrap(), payhook::app::Stopped::Cleanly);
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn payment(id: &str, order: &str, status: &str, at: &str) -> Value {
    json!({"provider_event_id": id, "order_id": order, "user_id": "usr_7", "status": status,
           "amount": 1999, "currency": "USD", "occurred_at": at})
}

pub fn chargeback(id: &str, order: &str, status: &str, at: &str) -> Value {
    json!({"provider_event_id": id, "order_id": order, "status": status, "reason": "fraudulent",
           "amount": 1999, "currency": "USD", "occurred_at": at})
}

/// `2026-01-01T10:00:00Z` plus `secs` seconds: a base well in the past, so
/// that offsets of weeks stay within `OCCURRED_AT_MAX_FUTURE` of today.
pub fn at(secs: i64) -> String {
    (chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z").unwrap()
        + chrono::Duration::seconds(secs))
    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Standard Webhooks signature entry, `v1,<base64>`, computed here with
/// the HMAC primitives directly rather than through payhook's verifier.
pub fn sign_standard(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).unwrap();
    hmac::Mac::update(&mut mac, format!("{id}.{ts}.").as_bytes());
    hmac::Mac::update(&mut mac, body);
    let tag = hmac::Mac::finalize(mac).into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// A Stripe `v1` signature (hex) over `"{ts}.{body}"`.
pub fn sign_stripe(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret.as_bytes()).unwrap();
    hmac::Mac::update(&mut mac, format!("{ts}.").as_bytes());
    hmac::Mac::update(&mut mac, body);
    hex::encode(hmac::Mac::finalize(mac).into_bytes())
}

/// The three Standard Webhooks headers.
pub fn standard_headers(id: &str, ts: i64, signature: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("webhook-id", id.into()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", signature.into()),
    ]
}

/// The `Stripe-Signature` header.
pub fn stripe_headers(value: String) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("stripe-signature", value),
    ]
}

// ---- in-process: the router with a fake publisher, no broker ----

/// The secrets of [`fake_state`]: Standard Webhooks on the payment endpoint,
/// Stripe on the chargeback endpoint.
pub const ORDERS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const STRIPE_SECRET: &str = "whsec_stripe_test_secret_0123456789";
/// The Adyen HMAC key of [`fake_state`]: the key of Adyen's published
/// example.
pub const ADYEN_DOC_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
/// [`fake_state`]'s body limit.
pub const MAX_BODY: usize = 4096;

/// Remembers every record it is handed and acknowledges it, or (`fail`)
/// answers as a broker that never acknowledges.
#[derive(Debug, Default)]
pub struct Recorder {
    pub records: std::sync::Mutex<Vec<(String, rskafka::record::Record)>>,
    fail: bool,
}

impl Publish for Recorder {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        record: rskafka::record::Record,
    ) -> futures::future::BoxFuture<'a, Result<Published, PublishError>> {
        Box::pin(async move {
            if self.fail {
                return Err(PublishError::Timeout(Duration::from_secs(5)));
            }
            let mut records = self.records.lock().unwrap();
            records.push((topic.to_owned(), record));
            Ok(Published {
                partition: 0,
                offset: records.len() as i64 - 1,
            })
        })
    }
}

/// A readiness probe for in-process tests: nothing is ever down.
#[derive(Debug)]
pub struct AlwaysReady;

impl payhook::http::routes::Readiness for AlwaysReady {
    fn down(&self) -> futures::future::BoxFuture<'_, Vec<(&'static str, String)>> {
        Box::pin(async { Vec::new() })
    }
}

/// An [`AppState`] whose publisher is a [`Recorder`].
pub fn fake_state(fail: bool) -> (AppState, Arc<Recorder>) {
    let recorder = Arc::new(Recorder {
        records: Default::default(),
        fail,
    });
    let verifier = |scheme, secret| {
        Verifier::new(
            scheme,
            vec![SigningKey::parse(scheme, secret).unwrap()],
            Duration::from_secs(300),
        )
        .unwrap()
    };
    use payhook::providers::Intake;
    let state = AppState {
        publisher: recorder.clone(),
        orders: Endpoint {
            topic: "orders".into(),
            intake: Some(Intake::Verify(verifier(Scheme::Standard, ORDERS_SECRET))),
        },
        chargebacks: Endpoint {
            topic: "disputes".into(),
            intake: Some(Intake::Verify(verifier(Scheme::Stripe, STRIPE_SECRET))),
        },
        max_body_bytes: MAX_BODY,
        request_timeout: Duration::from_secs(5),
        retry_after: Duration::from_secs(5),
        occurred_at_max_future: payhook::domain::types::DEFAULT_OCCURRED_AT_MAX_FUTURE,
        readiness: Arc::new(AlwaysReady),
        metrics: payhook::metrics::Metrics::new(),
        ops_on_public: true,
        signer: None,
        providers: payhook::providers::Endpoints {
            stripe: Some(payhook::providers::stripe::Stripe {
                intake: Intake::Verify(verifier(Scheme::Stripe, STRIPE_SECRET)),
                mapping: payhook::providers::stripe::StripeMapping {
                    order_id_key: "order_id".into(),
                    user_id_key: "user_id".into(),
                    // The fixtures are test-mode events.
                    livemode: false,
                    accounts: Vec::new(),
                },
            }),
            adyen: Some(payhook::providers::adyen::Adyen {
                intake: Intake::Verify(vec![
                    payhook::providers::adyen::HmacKey::parse(ADYEN_DOC_KEY).unwrap(),
                ]),
                mapping: payhook::providers::adyen::AdyenMapping {
                    user_id_key: "shopperReference".into(),
                    merchant_accounts: vec!["TestMerchant".into()],
                },
            }),
        },
    };
    (state, recorder)
}
