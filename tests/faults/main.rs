//! Fault-injection suite: real load through HTTP while things break, then
//! the books are checked.
//!
//! It runs its own private Kafka broker and PostgreSQL (ports 19092/19093 and
//! 15432, data under `.services/faults/`, started with `scripts/services`),
//! because it stops and starts them; other tests keep using the shared ones.
//! payhook runs as a child process (the real binary), so it can be killed.
//!
//! For every scenario: webhooks sent (attempts), answered 202, answered
//! otherwise, rows stored; and the assertions that matter:
//! - every 202'd `provider_event_id` is stored exactly once;
//! - every stored row was sent (answered 202, or a retry of one that was);
//! - every order ends in the state of its last event (order kept);
//! - the consumer caught up with the log (nothing left behind).
//!
//! Each scenario is its own test, so each can fail, and be run, alone
//! (`cargo test --test faults broker_stopped -- --nocapture`); they take the
//! private services in turn.
//!
//! Profiles: `PAYHOOK_FAULTS_PROFILE=short` (default, 1,000 webhooks per
//! scenario) or `full` (10,000). Run all with
//! `cargo test --release --test faults -- --nocapture --test-threads=1`.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use payhook::kafka::{
    Kafka,
    envelope::{Envelope, EventType},
    producer::{Producer, ProducerConfig},
};
use rskafka::client::partition::OffsetAt;
use serde_json::{Value, json, value::RawValue};
use tokio_postgres::NoTls;
use uuid::Uuid;

mod fleet;
mod leases;

const KAFKA_PORT: u16 = 19092;
const KAFKA_CONTROLLER_PORT: u16 = 19093;
const PG_PORT: u16 = 15432;
const PARTITIONS: u32 = 4;
const EVENTS_PER_ORDER: usize = 10;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn webhooks_per_scenario() -> usize {
    match std::env::var("PAYHOOK_FAULTS_PROFILE").as_deref() {
        Ok("full") => 10_000,
        _ => 1_000,
    }
}

/// `scripts/services <action> [service]` on the private instance.
fn services(action: &str, service: Option<&str>) {
    let mut cmd = Command::new(root().join("scripts/services"));
    cmd.arg(action);
    if let Some(s) = service {
        cmd.arg(s);
    }
    let status = cmd
        .env("PAYHOOK_SERVICES_DIR", root().join(".services/faults"))
        .env("PAYHOOK_KAFKA_PORT", KAFKA_PORT.to_string())
        .env(
            "PAYHOOK_KAFKA_CONTROLLER_PORT",
            KAFKA_CONTROLLER_PORT.to_string(),
        )
        .env("PAYHOOK_PG_PORT", PG_PORT.to_string())
        .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
        .stdin(Stdio::null())
        .status()
        .expect("cannot run scripts/services");
    assert!(
        status.success(),
        "scripts/services {action} {service:?} failed"
    );
}

fn brokers() -> String {
    format!("127.0.0.1:{KAFKA_PORT}")
}

fn admin_url() -> String {
    format!("postgres://postgres@127.0.0.1:{PG_PORT}/postgres")
}

/// One scenario's database and topics on the private instance.
struct Stage {
    name: &'static str,
    /// Partitions per topic.
    partitions: u32,
    id: String,
    db_url: String,
    orders_topic: String,
    disputes_topic: String,
    dlq_topic: String,
    port: u16,
}

impl Stage {
    async fn new(name: &'static str) -> Self {
        Self::with_partitions(name, PARTITIONS).await
    }

    async fn with_partitions(name: &'static str, partitions: u32) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_string();
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE faults_{id}"))
            .await
            .unwrap();
        let kafka = kafka().await;
        let stage = Self {
            name,
            partitions,
            db_url: format!("postgres://postgres@127.0.0.1:{PG_PORT}/faults_{id}"),
            orders_topic: format!("faults-{id}-orders"),
            disputes_topic: format!("faults-{id}-disputes"),
            dlq_topic: format!("faults-{id}-dlq"),
            port: free_port(),
            id,
        };
        for t in [&stage.orders_topic, &stage.disputes_topic, &stage.dlq_topic] {
            kafka
                .ensure_topic(t, NonZeroU32::new(partitions).unwrap(), 1)
                .await
                .unwrap();
        }
        stage.install_effect_log().await;
        stage
    }

    /// Migrates the stage's database, then adds a test-only log of every
    /// application of a payment record that committed: a `BEFORE INSERT`
    /// row trigger on `payment_events` fires for every row the consumer
    /// offers, including one that `ON CONFLICT DO NOTHING` then drops, and
    /// its insert into `test_effects` commits or rolls back with the
    /// consumer's transaction. A record applied twice (in two committed
    /// transactions) therefore shows as two rows for one Kafka offset, even
    /// though idempotency hides it in `payment_events`.
    async fn install_effect_log(&self) {
        let cfg = payhook::config::Config::from_map(&HashMap::from([(
            "DATABASE_URL".to_string(),
            self.db_url.clone(),
        )]))
        .unwrap();
        payhook::ops::migrate(&cfg).await.unwrap();
        self.db()
            .await
            .batch_execute(
                "CREATE TABLE test_effects (
                     kafka_partition   integer     NOT NULL,
                     kafka_offset      bigint      NOT NULL,
                     provider_event_id text        NOT NULL,
                     lease_epoch       bigint,
                     logged_at         timestamptz NOT NULL DEFAULT clock_timestamp()
                 );
                 CREATE FUNCTION test_log_effect() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     -- The consumer moved its offset (fenced by its lease) before
                     -- writing effects, in this transaction: its epoch is here.
                     INSERT INTO test_effects
                         (kafka_partition, kafka_offset, provider_event_id, lease_epoch)
                     SELECT NEW.kafka_partition, NEW.kafka_offset, NEW.provider_event_id,
                            (SELECT lease_epoch FROM consumer_offsets
                              WHERE consumer_group = 'payhook-orders'
                                AND topic = NEW.kafka_topic AND partition = NEW.kafka_partition);
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER test_log_effect BEFORE INSERT ON payment_events
                     FOR EACH ROW EXECUTE FUNCTION test_log_effect();",
            )
            .await
            .unwrap();
    }

    /// The orders topic as the model sees it: every record of every
    /// partition, in offset order, as `(partition, offset, provider_event_id,
    /// order_id, occurred_at)`; `None` for a record that is not a valid
    /// envelope.
    async fn read_log(&self) -> Vec<(i32, i64, Option<(String, String, String)>)> {
        let kafka = kafka().await;
        let mut out = Vec::new();
        for p in 0..self.partitions as i32 {
            let c = kafka.partition_client(&self.orders_topic, p).await.unwrap();
            let end = c.get_offset(OffsetAt::Latest).await.unwrap();
            let mut next = 0;
            while next < end {
                let (records, _) = c.fetch_records(next, 1..4_000_000, 1_000).await.unwrap();
                for r in records {
                    let parsed = Envelope::decode(r.record.value.as_deref())
                        .ok()
                        .and_then(|e| {
                            let v: Value = serde_json::from_str(e.payload.get()).ok()?;
                            let field = |f: &str| v[f].as_str().map(str::to_owned);
                            Some((
                                field("provider_event_id")?,
                                field("order_id")?,
                                field("occurred_at")?,
                            ))
                        });
                    out.push((p, r.offset, parsed));
                    next = r.offset + 1;
                }
            }
        }
        out
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HTTP_ADDR", format!("127.0.0.1:{}", self.port)),
            ("DATABASE_URL", self.db_url.clone()),
            ("DATABASE_POOL_SIZE", "8".into()),
            ("KAFKA_BROKERS", brokers()),
            ("KAFKA_ORDERS_TOPIC", self.orders_topic.clone()),
            ("KAFKA_DISPUTES_TOPIC", self.disputes_topic.clone()),
            ("KAFKA_DLQ_TOPIC", self.dlq_topic.clone()),
            ("KAFKA_PUBLISH_TIMEOUT", "2s".into()),
            ("KAFKA_REQUEST_TIMEOUT", "5s".into()),
            ("KAFKA_FETCH_MAX_WAIT", "100ms".into()),
            ("HTTP_RETRY_AFTER", "1s".into()),
            ("RETRY_BACKOFF_MIN", "50ms".into()),
            ("RETRY_BACKOFF_MAX", "1s".into()),
            ("SHUTDOWN_TIMEOUT", "20s".into()),
            ("WEBHOOK_VERIFY", "off".into()),
            ("RUST_LOG", "warn,payhook=info".into()),
        ]
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn db(&self) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.db_url, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    return c;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[{}] waiting for the database: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("database unreachable: {e}"),
            }
        }
    }

    /// Waits until the stored offsets of both topics reach the log end.
    async fn wait_caught_up(&self, timeout: Duration) {
        let kafka = kafka().await;
        let db = self.db().await;
        let deadline = Instant::now() + timeout;
        for (group, topic) in [
            ("payhook-orders", &self.orders_topic),
            ("payhook-disputes", &self.disputes_topic),
        ] {
            let mut end = Vec::new();
            for p in 0..self.partitions as i32 {
                let c = kafka.partition_client(topic, p).await.unwrap();
                end.push(c.get_offset(OffsetAt::Latest).await.unwrap());
            }
            loop {
                let mut stored = vec![0i64; self.partitions as usize];
                for r in db
                    .query(
                        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2",
                        &[&group, &topic],
                    )
                    .await
                    .unwrap()
                {
                    stored[r.get::<_, i32>(0) as usize] = r.get(1);
                }
                if stored == end {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "[{}] consumer of {topic} stuck at {stored:?}, log end {end:?}",
                    self.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Records in the orders topic not yet applied: log end minus stored
    /// offsets.
    async fn backlog(&self) -> i64 {
        let kafka = kafka().await;
        let db = self.db().await;
        let mut end = 0;
        for p in 0..self.partitions as i32 {
            let c = kafka.partition_client(&self.orders_topic, p).await.unwrap();
            end += c.get_offset(OffsetAt::Latest).await.unwrap();
        }
        let stored: i64 = db
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets WHERE topic = $1",
                &[&self.orders_topic],
            )
            .await
            .unwrap()
            .get(0);
        end - stored
    }

    /// Waits until at least `at_least` records wait to be applied.
    async fn wait_backlog(&self, at_least: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let b = self.backlog().await;
            if b >= at_least {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] the consumer never fell behind (backlog {b})",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn cleanup(&self) {
        let kafka = kafka().await;
        for t in [&self.orders_topic, &self.disputes_topic, &self.dlq_topic] {
            let _ = kafka.delete_topic(t).await;
        }
        let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS faults_{} WITH (FORCE)",
                self.id
            ))
            .await;
    }
}

async fn kafka() -> Kafka {
    Kafka::connect(&[brokers()], Duration::from_secs(30))
        .await
        .expect("private broker unreachable")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// payhook as a child process.
struct Payhook {
    child: Option<Child>,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    port: u16,
}

impl Payhook {
    fn new(stage: &Stage) -> Self {
        let log = root().join(format!("target/faults/{}-{}.log", stage.name, stage.id));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        Self {
            child: None,
            env: stage.env(),
            log,
            port: stage.port,
        }
    }

    /// The `n`-th of several processes on one stage: its own port, log and
    /// host name (so `consumer_members.name` is `replica<n>:<pid>`).
    fn replica(stage: &Stage, n: usize) -> Self {
        let mut p = Self::new(stage);
        p.port = free_port();
        p.log = root().join(format!("target/faults/{}-{}-{n}.log", stage.name, stage.id));
        p.env.retain(|(k, _)| *k != "HTTP_ADDR");
        p.env.push(("HTTP_ADDR", format!("127.0.0.1:{}", p.port)));
        p.env.push(("HOSTNAME", format!("replica{n}")));
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn start(&mut self, _stage: &Stage) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_payhook"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start payhook");
        self.child = Some(child);
        // Ready when /healthz answers.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(self.url("/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "payhook exited at start-up ({status}); see {}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "payhook did not start; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "payhook did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Payhook {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Books {
    sent: AtomicU64,
    accepted_answers: AtomicU64,
    other_answers: AtomicU64,
    /// Every provider_event_id ever sent, and those answered 202.
    sent_ids: Mutex<HashSet<String>>,
    accepted_ids: Mutex<HashSet<String>>,
    progress: AtomicUsize,
    /// While set, a webhook that no replica accepted in one round (each
    /// replica tried once) is counted in `failed_rounds`.
    watch_failures: AtomicBool,
    failed_rounds: AtomicU64,
}

fn at(secs: usize) -> String {
    (chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z").unwrap()
        + chrono::Duration::seconds(secs as i64))
    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One event of an order. The facts an order pins (user, amount, currency)
/// are the same in each of its events: one that disagreed would be
/// dead-lettered by design.
fn payment(id: &str, order: &str, n: usize) -> Value {
    let status = ["pending", "succeeded", "failed", "refunded"][n % 4];
    json!({"provider_event_id": id, "order_id": order, "user_id": "usr_f", "status": status,
           "amount": 1999, "currency": "EUR", "occurred_at": at(n), "note": "fault suite"})
}

/// Sends `total` webhooks over `total / 10` orders, `concurrency` orders at a
/// time, each order's events one after another. Like a provider, a webhook
/// is re-sent until it is answered 202. Every 7th webhook is also sent a
/// second time after its 202 (a provider duplicate).
///
/// With several replicas (`urls`), each webhook starts on one of them (by its
/// id) and, when refused or unanswered, is tried on the next at once, as a
/// load balancer that retries on another upstream would.
async fn drive_load(
    id: &str,
    urls: Vec<String>,
    books: Arc<Books>,
    total: usize,
    concurrency: usize,
) {
    let pacing = Pacing {
        pause: Duration::ZERO,
        attempt_timeout: Duration::from_secs(10),
        stop: None,
    };
    drive_paced_load(id, urls, books, total, concurrency, pacing).await
}

/// How a load generator paces itself.
struct Pacing {
    /// After each webhook of a worker.
    pause: Duration,
    /// Each attempt's timeout; then the next replica is tried (a load
    /// balancer's upstream timeout).
    attempt_timeout: Duration,
    /// Ends the load after the orders under way (so every order is whole).
    stop: Option<Arc<AtomicBool>>,
}

/// [`drive_load`], paced.
async fn drive_paced_load(
    id: &str,
    urls: Vec<String>,
    books: Arc<Books>,
    total: usize,
    concurrency: usize,
    pacing: Pacing,
) {
    let Pacing {
        pause: pace,
        attempt_timeout,
        stop,
    } = pacing;
    let orders = total / EVENTS_PER_ORDER;
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .timeout(attempt_timeout)
        .build()
        .unwrap();
    let urls = Arc::new(urls);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, http, urls, books) = (next.clone(), http.clone(), urls.clone(), books.clone());
        let id = id.to_owned();
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    break;
                }
                let o = next.fetch_add(1, Ordering::Relaxed);
                if o >= orders {
                    break;
                }
                for n in 0..EVENTS_PER_ORDER {
                    let pid = format!("{id}-o{o}-e{n}");
                    let body = payment(&pid, &format!("ord_{o}"), n).to_string();
                    let copies = if (o * EVENTS_PER_ORDER + n) % 7 == 0 {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        send_until_accepted(&http, &urls, &pid, &body, &books).await;
                    }
                    books.progress.fetch_add(1, Ordering::Relaxed);
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

async fn send_until_accepted(
    http: &reqwest::Client,
    urls: &[String],
    pid: &str,
    body: &str,
    books: &Books,
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut pause = Duration::from_millis(50);
    let first = pid.bytes().map(usize::from).sum::<usize>();
    loop {
        for i in 0..urls.len() {
            let url = &urls[(first + i) % urls.len()];
            books.sent.fetch_add(1, Ordering::Relaxed);
            books.sent_ids.lock().unwrap().insert(pid.to_owned());
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 202 => {
                    books.accepted_answers.fetch_add(1, Ordering::Relaxed);
                    books.accepted_ids.lock().unwrap().insert(pid.to_owned());
                    return;
                }
                Ok(r) => {
                    assert!(
                        r.status() == 503,
                        "a valid webhook may only be refused with 503, got {}",
                        r.status()
                    );
                    books.other_answers.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    books.other_answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if books.watch_failures.load(Ordering::Relaxed) {
            books.failed_rounds.fetch_add(1, Ordering::Relaxed);
        }
        assert!(Instant::now() < deadline, "{pid} never accepted");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

async fn wait_progress(books: &Books, at_least: usize) {
    while books.progress.load(Ordering::Relaxed) < at_least {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the books against the database and prints the table row.
async fn audit(stage: &Stage, books: &Books, total: usize, started: Instant) {
    stage.wait_caught_up(Duration::from_secs(180)).await;
    let db = stage.db().await;
    let rows = db
        .query(
            "SELECT provider_event_id, count(*) FROM payment_events GROUP BY provider_event_id",
            &[],
        )
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let accepted = books.accepted_ids.lock().unwrap().clone();
    let sent = books.sent_ids.lock().unwrap().clone();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let twice = applied_twice(stage, &db).await;
    let unexplained: Vec<&String> = stored.keys().filter(|id| !sent.contains(*id)).collect();

    // Order kept: each order's row holds its last event.
    let orders = total / EVENTS_PER_ORDER;
    let last = format!("%-e{}", EVENTS_PER_ORDER - 1);
    let final_ok: i64 = db
        .query_one(
            "SELECT count(*) FROM orders WHERE last_provider_event_id LIKE $1",
            &[&last],
        )
        .await
        .unwrap()
        .get(0);

    println!(
        "| {:<18} | {:>7} | {:>7} | {:>9} | {:>8} | {:>6} | {:>4} | {:>5} | {:>6.1}s |",
        stage.name,
        books.sent.load(Ordering::Relaxed),
        books.accepted_answers.load(Ordering::Relaxed),
        books.other_answers.load(Ordering::Relaxed),
        accepted.len(),
        stored.len(),
        lost.len(),
        twice.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "[{}] 202'd but not stored: {:?}",
        stage.name,
        &lost[..lost.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "[{}] applied more than once, or not where the log says: {twice:?}",
        stage.name
    );
    assert!(
        unexplained.is_empty(),
        "[{}] stored but never sent: {unexplained:?}",
        stage.name
    );
    assert_eq!(
        accepted.len(),
        total,
        "[{}] every webhook was eventually accepted",
        stage.name
    );
    assert_eq!(
        final_ok, orders as i64,
        "[{}] orders not in the state of their last event",
        stage.name
    );
}

/// Replays the orders topic once, in offset order per partition, as the
/// model of what the consumer must have done, and compares it with what the
/// database says happened. Returns every disagreement:
/// - a Kafka record applied in more than one committed transaction
///   (`test_effects` has two rows for one offset);
/// - an event stored from another record than its first copy in the log
///   (the model keeps the first occurrence of each `provider_event_id`);
/// - an order not in the state of its greatest event (latest `occurred_at`;
///   the load gives each event of an order its own second).
async fn applied_twice(stage: &Stage, db: &tokio_postgres::Client) -> Vec<String> {
    let mut problems = Vec::new();
    for r in db
        .query(
            "SELECT kafka_partition, kafka_offset, count(*) FROM test_effects
             GROUP BY 1, 2 HAVING count(*) > 1",
            &[],
        )
        .await
        .unwrap()
    {
        let (p, o, n): (i32, i64, i64) = (r.get(0), r.get(1), r.get(2));
        problems.push(format!("record {p}/{o} applied {n} times"));
    }
    let mut first: HashMap<String, (i32, i64)> = HashMap::new();
    let mut latest: HashMap<String, (String, String)> = HashMap::new();
    for (p, o, parsed) in stage.read_log().await {
        let Some((id, order, at)) = parsed else {
            continue;
        };
        first.entry(id.clone()).or_insert((p, o));
        let slot = latest.entry(order).or_insert((at.clone(), id.clone()));
        if (at.clone(), id.clone()) > *slot {
            *slot = (at, id);
        }
    }
    let stored: HashMap<String, (i32, i64)> = db
        .query(
            "SELECT provider_event_id, kafka_partition, kafka_offset FROM payment_events",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for (id, at) in &stored {
        match first.get(id) {
            Some(f) if f == at => {}
            f => problems.push(format!(
                "{id} stored from {at:?}, the log's first copy is {f:?}"
            )),
        }
    }
    for r in db
        .query("SELECT order_id, last_provider_event_id FROM orders", &[])
        .await
        .unwrap()
    {
        let (order, id): (String, String) = (r.get(0), r.get(1));
        match latest.get(&order) {
            Some((_, want)) if *want == id => {}
            want => problems.push(format!("order {order} holds {id}, the model says {want:?}")),
        }
    }
    problems
}

fn header() {
    println!(
        "| {:<18} | {:>7} | {:>7} | {:>9} | {:>8} | {:>6} | {:>4} | {:>5} | {:>7} |",
        "scenario", "sent", "202", "other", "accepted", "stored", "lost", "twice", "time"
    );
}

/// The private services are shared by every scenario, and scenarios stop
/// and start them: they run one at a time, whatever `--test-threads` says.
static SERVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the private services for one scenario, bringing both up first (a
/// scenario that failed may have left one of them down), and prints the
/// table's header.
async fn services_for_one_scenario() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERVICES.lock().await;
    services("up", None);
    println!(
        "\nfault injection, {} webhooks per scenario",
        webhooks_per_scenario()
    );
    header();
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped() {
    let _services = services_for_one_scenario().await;
    scenario("broker stopped", Fault::StopBroker, webhooks_per_scenario()).await;
}

/// The broker stopped and started again while payhook speaks SASL_SSL to it
/// (SCRAM-SHA-512 over TLS, through payhook's tunnel): the private broker's
/// SASL_SSL listener, its own CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_over_sasl_ssl() {
    let _services = services_for_one_scenario().await;
    let tls_dir = root().join(".services/faults/tls");
    let sasl_ssl = [
        ("KAFKA_BROKERS", format!("127.0.0.1:{}", KAFKA_PORT + 4)),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("KAFKA_SASL_USERNAME", "payhook".into()),
        ("KAFKA_SASL_PASSWORD", "payhook-secret".into()),
        (
            "KAFKA_TLS_CA_FILE",
            tls_dir.join("ca.pem").display().to_string(),
        ),
    ];
    scenario_over(
        "broker, sasl_ssl",
        Fault::StopBroker,
        webhooks_per_scenario(),
        &sasl_ssl,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped() {
    let _services = services_for_one_scenario().await;
    scenario(
        "postgres stopped",
        Fault::StopDatabase,
        webhooks_per_scenario(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payhook_killed() {
    let _services = services_for_one_scenario().await;
    scenario("payhook SIGKILL", Fault::Kill, webhooks_per_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payhook_terminated() {
    let _services = services_for_one_scenario().await;
    scenario("payhook SIGTERM", Fault::Terminate, webhooks_per_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_among_good_ones() {
    let _services = services_for_one_scenario().await;
    poison_records_interleaved(webhooks_per_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_renewal_under_load_never_deadlocks() {
    let _services = services_for_one_scenario().await;
    leases::renewal_under_load().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_member_killed_hung_and_rolled() {
    let _services = services_for_one_scenario().await;
    fleet::fleet().await;
}

/// What breaks while the load runs.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Scenario 1: the broker is stopped for several seconds, then started.
    StopBroker,
    /// Scenario 2: Postgres is stopped during consumption, then started;
    /// `/readyz` stays 200 (intake needs only Kafka) and `/status` says the
    /// database is down meanwhile.
    StopDatabase,
    /// Scenario 3: payhook is killed with SIGKILL, then restarted.
    Kill,
    /// Scenario 4: payhook gets SIGTERM under load: it must exit 0 in time;
    /// then it is restarted.
    Terminate,
}

/// Runs the load, injects `fault` part-way through, and audits the books.
async fn scenario(name: &'static str, fault: Fault, total: usize) {
    scenario_over(name, fault, total, &[]).await;
}

/// [`scenario`] with payhook's settings changed by `settings` (how it
/// reaches the broker, for one).
async fn scenario_over(
    name: &'static str,
    fault: Fault,
    total: usize,
    settings: &[(&'static str, String)],
) {
    let stage = Stage::new(name).await;
    let mut app = Payhook::new(&stage);
    app.env
        .retain(|(k, _)| !settings.iter().any(|(s, _)| s == k));
    app.env.extend(settings.iter().cloned());
    if matches!(fault, Fault::Kill | Fault::Terminate) {
        // A slow consumer (a transaction per record), so that there is a
        // backlog to be interrupted.
        app.env.push(("CONSUMER_MAX_BATCH", "1".into()));
    }
    app.start(&stage).await;
    let books = Arc::new(Books::default());
    let started = Instant::now();
    let load = tokio::spawn({
        let b = books.clone();
        let urls = vec![stage.url("/webhooks/payments/orders")];
        let id = stage.id.clone();
        async move { drive_load(&id, urls, b, total, 32).await }
    });
    match fault {
        Fault::StopBroker => {
            wait_progress(&books, total / 3).await;
            services("down", Some("kafka"));
            tokio::time::sleep(Duration::from_secs(5)).await;
            services("up", Some("kafka"));
        }
        Fault::StopDatabase => {
            wait_progress(&books, total / 3).await;
            services("down", Some("postgres"));
            // Intake stays ready (Kafka holds the webhooks); the consumer
            // side says the database is gone.
            let r = reqwest::get(stage.url("/readyz")).await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = reqwest::get(stage.url("/status"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_ne!(v["database"], "ok", "{v}");
            tokio::time::sleep(Duration::from_secs(5)).await;
            services("up", Some("postgres"));
        }
        Fault::Kill => {
            wait_progress(&books, total / 2).await;
            // Kill only while the consumer is behind, so the kill lands in
            // the middle of consuming (one record per transaction here).
            let backlog = stage.wait_backlog(20).await;
            println!("[{name}] SIGKILL with {backlog} records not yet applied");
            app.signal("KILL");
            app.wait(Duration::from_secs(10)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            app.start(&stage).await;
        }
        Fault::Terminate => {
            wait_progress(&books, total / 2).await;
            let backlog = stage.wait_backlog(20).await;
            println!("[{name}] SIGTERM with {backlog} records not yet applied");
            app.signal("TERM");
            let status = app.wait(Duration::from_secs(25)).await;
            assert!(
                status.success(),
                "graceful shutdown must exit 0, got {status}"
            );
            app.start(&stage).await;
        }
    }
    load.await.unwrap();
    audit(&stage, &books, total, started).await;
    drop(app);
    stage.cleanup().await;
}

/// Scenario 5: poison records written straight to the topics, interleaved
/// with good ones. Every poison record must end in the dead-letter topic,
/// every good one in the database, per-order order kept.
async fn poison_records_interleaved(total: usize) {
    let stage = Stage::new("poison records").await;
    let kafka = kafka().await;
    let (producer, lanes) = Producer::start(
        &kafka,
        &[&stage.orders_topic, &stage.disputes_topic],
        ProducerConfig {
            linger: Duration::from_millis(1),
            queue_per_partition: 1024,
            publish_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(30),
            metrics: None,
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let orders = total / EVENTS_PER_ORDER;
    let mut poison = 0usize;
    let mut good = 0usize;
    // Orders concurrently, each order's records in sequence.
    let producer_ref = &producer;
    let results = futures::future::join_all((0..orders).map(|o| {
        let stage = &stage;
        async move {
            let mut p = 0;
            let mut g = 0;
            for n in 0..EVENTS_PER_ORDER {
                let key = format!("ord_{o}");
                let pid = format!("{}-o{o}-e{n}", stage.id);
                let body = payment(&pid, &key, n);
                let good_env = serde_json::to_vec(&Envelope::new(
                    EventType::OrderWebhook,
                    &key,
                    RawValue::from_string(body.to_string()).unwrap(),
                ))
                .unwrap();
                let (topic, value) = match (o + n) % 5 {
                    0 => (&stage.orders_topic, b"\x00\x01 not json".to_vec()),
                    1 => (
                        &stage.disputes_topic,
                        br#"{"event_id":"x","key":"k"}"#.to_vec(),
                    ),
                    2 if n % 2 == 0 => {
                        let mut v: Value = serde_json::from_slice(&good_env).unwrap();
                        v["type"] = json!("refund.webhook");
                        (&stage.orders_topic, serde_json::to_vec(&v).unwrap())
                    }
                    2 => {
                        let mut v: Value = serde_json::from_slice(&good_env).unwrap();
                        v["payload"]["amount"] = json!(-1);
                        (&stage.orders_topic, serde_json::to_vec(&v).unwrap())
                    }
                    _ => (&stage.orders_topic, good_env),
                };
                if (o + n) % 5 < 3 {
                    p += 1;
                } else {
                    g += 1;
                }
                let record = rskafka::record::Record {
                    key: Some(key.into_bytes()),
                    value: Some(value),
                    headers: Default::default(),
                    timestamp: chrono::Utc::now(),
                };
                producer_ref.publish(topic, record).await.unwrap();
            }
            (p, g)
        }
    }))
    .await;
    for (p, g) in results {
        poison += p;
        good += g;
    }
    drop(producer);
    lanes.drained().await;

    let mut app = Payhook::new(&stage);
    app.start(&stage).await;
    stage.wait_caught_up(Duration::from_secs(180)).await;
    let letters = payhook::consume::dlq::read_all(&kafka, &stage.dlq_topic)
        .await
        .unwrap();
    let db = stage.db().await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM payment_events", &[])
        .await
        .unwrap()
        .get(0);
    // Per order, rows in insertion order carry rising event numbers.
    let rows = db
        .query(
            "SELECT order_id, provider_event_id FROM payment_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut last_seen: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        let order: String = r.get(0);
        let pid: String = r.get(1);
        let n: usize = pid.rsplit("-e").next().unwrap().parse().unwrap();
        if let Some(prev) = last_seen.insert(order.clone(), n) {
            assert!(prev < n, "order {order}: event {n} applied after {prev}");
        }
    }
    println!(
        "| {:<18} | {:>7} | {:>7} | {:>9} | {:>8} | {:>6} | {:>4} | {:>5} | {:>6.1}s |",
        stage.name,
        poison + good,
        "-",
        format!("{poison} bad"),
        good,
        stored,
        good as i64 - stored,
        letters.len() as i64 - poison as i64,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stored, good as i64, "every good record stored");
    assert_eq!(
        letters.len(),
        poison,
        "every poison record dead-lettered, once"
    );
    for d in &letters {
        assert_eq!(d.error_class(), Some("permanent"));
        assert!(d.source_offset().is_some());
    }
    drop(app);
    stage.cleanup().await;
}
