//! A database and topics of the bench's own, named by a UUID and removed
//! afterwards, and the workload: realistic webhook bodies over many orders.

use std::{collections::HashMap, num::NonZeroU32, time::Duration};

use deadpool_postgres::Pool;
use payhook::{
    config::Config,
    domain::orders::{PaymentEvent, PaymentWebhook, SourcePosition},
    kafka::{
        Kafka,
        envelope::{Envelope, EventType},
    },
};
use rskafka::record::Record;
use serde_json::value::RawValue;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Partitions per bench topic: payhook's default (`KAFKA_PARTITIONS`).
pub const PARTITIONS: u32 = 8;

/// Distinct orders the events are spread over.
pub const ORDERS: u64 = 50_000;

pub fn admin_url() -> String {
    std::env::var("PAYHOOK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn brokers() -> String {
    std::env::var("PAYHOOK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Whether the broker and the database answer; if not, says why.
pub async fn services_reachable() -> Result<(), String> {
    let pg = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(&admin_url(), NoTls),
    )
    .await;
    match pg {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("PostgreSQL at {}: {e}", admin_url())),
        Err(_) => return Err(format!("PostgreSQL at {}: no answer", admin_url())),
    }
    Kafka::connect(&[brokers()], Duration::from_secs(3))
        .await
        .map(|_| ())
        .map_err(|e| format!("Kafka at {}: {e}", brokers()))
}

/// One section's database and topics.
pub struct BenchEnv {
    pub db_name: String,
    pub db_url: String,
    pub orders_topic: String,
    pub disputes_topic: String,
    pub dlq_topic: String,
    pub kafka: Kafka,
}

impl BenchEnv {
    pub async fn new(section: &str) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("payhook_bench_{id}");
        let admin = admin().await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create the bench database");
        let db_url = match admin_url().rsplit_once('/') {
            Some((head, _)) => format!("{head}/{db_name}"),
            None => panic!("PAYHOOK_TEST_DATABASE_URL must end in /<database>"),
        };
        let kafka = Kafka::connect(&[brokers()], Duration::from_secs(20))
            .await
            .expect("connect to Kafka");
        let orders_topic = format!("bench-{section}-{id}-orders");
        let disputes_topic = format!("bench-{section}-{id}-disputes");
        let n = NonZeroU32::new(PARTITIONS).expect("non-zero");
        let dlq_topic = format!("bench-{section}-{id}-dlq");
        for t in [&orders_topic, &disputes_topic, &dlq_topic] {
            kafka.ensure_topic(t, n, 1).await.expect("create topic");
        }
        let env = Self {
            db_name,
            db_url,
            orders_topic,
            disputes_topic,
            dlq_topic,
            kafka,
        };
        payhook::ops::migrate(&env.config(&[]))
            .await
            .expect("migrate the bench database");
        env
    }

    /// payhook's configuration for this environment: the defaults, except
    /// the port (0) and the names.
    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let mut map: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", self.db_url.as_str()),
            ("KAFKA_BROKERS", brokers().as_str()),
            ("KAFKA_ORDERS_TOPIC", self.orders_topic.as_str()),
            ("KAFKA_DISPUTES_TOPIC", self.disputes_topic.as_str()),
            ("KAFKA_DLQ_TOPIC", self.dlq_topic.as_str()),
            ("WEBHOOK_ORDERS_SECRETS", crate::load::BENCH_SECRET),
            ("WEBHOOK_CHARGEBACKS_SECRETS", crate::load::BENCH_SECRET),
            ("SHUTDOWN_TIMEOUT", "10s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            map.insert(k.to_string(), v.to_string());
        }
        Config::from_map(&map).expect("valid bench configuration")
    }

    pub fn pool(&self, size: usize) -> Pool {
        payhook::db::pool(&self.db_url, size, Duration::from_secs(10)).expect("pool")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.db_url, NoTls)
            .await
            .expect("connect to the bench database");
        tokio::spawn(conn);
        c
    }

    /// Sum of the stored offsets of `group` on the orders topic.
    pub async fn stored_total(&self, db: &tokio_postgres::Client, group: &str) -> i64 {
        db.query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2",
            &[&group, &self.orders_topic],
        )
        .await
        .expect("read stored offsets")
        .get(0)
    }

    pub async fn cleanup(self) {
        let _ = self.kafka.delete_topic(&self.orders_topic).await;
        let _ = self.kafka.delete_topic(&self.disputes_topic).await;
        let _ = self.kafka.delete_topic(&self.dlq_topic).await;
        let admin = admin().await;
        if let Err(e) = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .await
        {
            eprintln!("could not drop {}: {e}", self.db_name);
        }
    }
}

async fn admin() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&admin_url(), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    c
}

/// The order an event belongs to: spread over [`ORDERS`] orders.
pub fn order_of(n: u64) -> String {
    format!("ord_{:05}", order_number(n))
}

/// A multiplicative hash, so consecutive events hit unrelated orders.
fn order_number(n: u64) -> u64 {
    n.wrapping_mul(2_654_435_761) % ORDERS
}

/// A payment webhook body of about 400 bytes, as a provider would send it:
/// the fields payhook reads plus the usual extras it stores untouched.
pub fn payment_body(run: &str, n: u64) -> String {
    let statuses = ["pending", "succeeded", "failed", "refunded"];
    format!(
        concat!(
            r#"{{"provider_event_id":"evt_{run}_{n:09}","order_id":"{order}","user_id":"usr_{user:06}","#,
            r#""status":"{status}","amount":{amount},"currency":"EUR","occurred_at":"2026-11-26T{h:02}:{m:02}:{s:02}Z","#,
            r#""livemode":false,"description":"Order {order} at the web shop","#,
            r#""payment_method":{{"type":"card","brand":"visa","last4":"4242","exp_month":12,"exp_year":2029}},"#,
            r#""metadata":{{"cart_id":"cart_{n:09}","channel":"web","attempt":1}}}}"#
        ),
        run = run,
        n = n,
        order = order_of(n),
        // One user and one amount per order: a generic event's order is
        // pinned to its first event's user,
        user = order_number(n),
        status = statuses[(n % 4) as usize],
        // and to its first event's amount.
        amount = 500 + order_number(n),
        h = (n / 3600) % 24,
        m = (n / 60) % 60,
        s = n % 60,
    )
}

/// The Kafka record payhook would produce for event `n`.
pub fn payment_record(run: &str, n: u64) -> Record {
    let body = payment_body(run, n);
    let raw = RawValue::from_string(body).expect("valid JSON");
    Envelope::new(EventType::OrderWebhook, &order_of(n), raw).to_record()
}

/// The decoded event the consumer would apply for event `n`.
pub fn payment_event(run: &str, n: u64, topic: &str, partition: i32) -> PaymentEvent {
    let body = payment_body(run, n);
    let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    PaymentEvent {
        event_id: Uuid::now_v7(),
        webhook: PaymentWebhook::from_json(&json).expect("valid webhook"),
        payload: body,
        source: SourcePosition {
            topic: topic.to_owned(),
            partition,
            offset: i64::try_from(n).unwrap_or(i64::MAX),
        },
        origin: payhook::domain::types::Origin::generic(),
    }
}

/// A short unique tag for this run's event ids.
pub fn run_tag() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A free local address for a child process to listen on.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A separate `payhook serve` process on this environment, listening on
/// `http_addr`, with its production defaults (log level `info`, JSON logs
/// since stderr is not a terminal; the lines go nowhere) and the bench's
/// `PAYHOOK_BENCH_SET` overrides, then `extra` settings.
pub fn spawn_payhook(
    env: &BenchEnv,
    profile: &crate::Profile,
    http_addr: &str,
    extra: &[(&str, &str)],
) -> std::process::Child {
    use std::process::{Command, Stdio};
    // `PAYHOOK_BENCH_BIN`: another build of payhook (e.g. an older commit's,
    // for before/after figures from the same bench).
    let bin = std::env::var_os("PAYHOOK_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_payhook").into());
    Command::new(bin)
        .arg("serve")
        .env("HTTP_ADDR", http_addr)
        .env("DATABASE_URL", &env.db_url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_ORDERS_TOPIC", &env.orders_topic)
        .env("KAFKA_DISPUTES_TOPIC", &env.disputes_topic)
        .env("KAFKA_DLQ_TOPIC", &env.dlq_topic)
        .env("WEBHOOK_ORDERS_SECRETS", crate::load::BENCH_SECRET)
        .env("WEBHOOK_CHARGEBACKS_SECRETS", crate::load::BENCH_SECRET)
        .env_remove("RUST_LOG")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .envs(profile.payhook_overrides())
        .envs(extra.iter().copied())
        .spawn()
        .expect("start payhook")
}
