//! Configuration: read from the environment once, validated once.
//!
//! Every setting has a default that works on a developer machine with
//! `./scripts/services up`. A value that cannot be parsed stops start-up with
//! a message naming the variable and the form it expects; all problems are
//! reported together so one edit fixes them all.

use std::{
    collections::HashMap, fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration,
};

use crate::http::signature::{Scheme, SigningKey};

/// Everything payhook reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Largest webhook body accepted, in bytes (`HTTP_MAX_BODY_BYTES`).
    pub http_max_body_bytes: usize,
    /// Value of `Retry-After` on a 503 (`HTTP_RETRY_AFTER`).
    pub http_retry_after: Duration,
    /// How long a client may take to send its request headers
    /// (`HTTP_HEADER_TIMEOUT`); then the connection is closed.
    pub http_header_timeout: Duration,
    /// How long a client may take to send its request body
    /// (`HTTP_REQUEST_TIMEOUT`); then it is answered 408.
    pub http_request_timeout: Duration,
    /// Connections served at once (`HTTP_MAX_CONNECTIONS`); beyond it new
    /// connections wait in the kernel's backlog.
    pub http_max_connections: usize,

    /// Check webhook signatures (`WEBHOOK_VERIFY`, `on` unless set to
    /// `off`). Off is for local use only.
    pub webhook_verify: bool,
    /// How far a signature's timestamp may be from the local clock, either
    /// way (`WEBHOOK_TOLERANCE`).
    pub webhook_tolerance: Duration,
    /// Signature scheme and active secrets of the payment endpoint
    /// (`WEBHOOK_ORDERS_SCHEME`, `WEBHOOK_ORDERS_SECRETS`).
    pub webhook_orders: WebhookAuth,
    /// Signature scheme and active secrets of the chargeback endpoint
    /// (`WEBHOOK_CHARGEBACKS_SCHEME`, `WEBHOOK_CHARGEBACKS_SECRETS`).
    pub webhook_chargebacks: WebhookAuth,

    /// Postgres connection string (`DATABASE_URL`). Its `Debug` hides the
    /// password.
    pub database_url: DatabaseUrl,
    /// Connections in the pool (`DATABASE_POOL_SIZE`).
    pub database_pool_size: usize,
    /// Apply `sql/` migrations when `serve` starts (`RUN_MIGRATIONS`).
    pub run_migrations: bool,

    /// Bootstrap brokers, comma-separated `host:port` (`KAFKA_BROKERS`).
    pub kafka_brokers: Vec<String>,
    /// Topic for payment webhooks (`KAFKA_ORDERS_TOPIC`).
    pub orders_topic: String,
    /// Topic for chargeback webhooks (`KAFKA_DISPUTES_TOPIC`).
    pub disputes_topic: String,
    /// Consumer group that keys the stored offsets of the orders topic
    /// (`KAFKA_ORDERS_CONSUMER_GROUP`).
    pub orders_consumer_group: String,
    /// Consumer group that keys the stored offsets of the disputes topic
    /// (`KAFKA_DISPUTES_CONSUMER_GROUP`).
    pub disputes_consumer_group: String,
    /// Dead-letter topic for records that can never be applied
    /// (`KAFKA_DLQ_TOPIC`).
    pub dlq_topic: String,
    /// Partitions per topic for `payhook topics` (`KAFKA_PARTITIONS`).
    pub partitions: NonZeroU32,
    /// Replication factor for `payhook topics` (`KAFKA_REPLICATION_FACTOR`);
    /// `None` (the default) means 3, or the broker count if smaller.
    pub replication_factor: Option<i16>,
    /// How long a webhook may wait for the broker's acknowledgement before it
    /// is answered 503 (`KAFKA_PUBLISH_TIMEOUT`).
    pub publish_timeout: Duration,
    /// How long the producer waits for more records before sending a batch
    /// (`KAFKA_LINGER`).
    pub linger: Duration,
    /// Records that may wait per partition for the producer
    /// (`KAFKA_PRODUCER_QUEUE`); beyond it requests wait, then get a 503.
    pub producer_queue: usize,
    /// Upper bound for any single broker call (`KAFKA_REQUEST_TIMEOUT`).
    /// rskafka 0.6 has no request timeout of its own and retries forever.
    pub kafka_request_timeout: Duration,
    /// Bytes asked for per fetch (`KAFKA_FETCH_MAX_BYTES`).
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch open waiting for data
    /// (`KAFKA_FETCH_MAX_WAIT`).
    pub fetch_max_wait: Duration,

    /// Most records applied in one database transaction
    /// (`CONSUMER_MAX_BATCH`).
    pub consumer_max_batch: usize,
    /// Attempts after which a transient failure of one record counts as
    /// permanent and the record is dead-lettered (`CONSUMER_MAX_ATTEMPTS`);
    /// `None` (the default, `0`) retries without limit.
    pub consumer_max_attempts: Option<u32>,
    /// First pause after a failure (`RETRY_BACKOFF_MIN`).
    pub retry_backoff_min: Duration,
    /// Longest pause between retries (`RETRY_BACKOFF_MAX`).
    pub retry_backoff_max: Duration,

    /// How long a graceful shutdown may take (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,

    // --- Secured connections, durable topics, deadlines (issue 10) ---
    /// How payhook reaches Kafka: `KAFKA_SECURITY_PROTOCOL`,
    /// `KAFKA_SASL_*`, `KAFKA_TLS_*`.
    pub kafka_security: KafkaSecurity,
    /// How payhook reaches Postgres: `DATABASE_SSLMODE` (or `sslmode` in
    /// `DATABASE_URL`) and `DATABASE_TLS_CA_FILE`.
    pub database_tls: DatabaseTls,
    /// Server-side limit on one statement of payhook's sessions
    /// (`DATABASE_STATEMENT_TIMEOUT`). payhook's own client also gives up on a
    /// statement, transaction step or ping this long (plus one second) after
    /// it was sent: a database that stops answering without closing the
    /// connection is noticed within that time.
    pub database_statement_timeout: Duration,
    /// The server ends a session of payhook's that sits idle inside a
    /// transaction this long (`DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`).
    pub database_idle_in_transaction_timeout: Duration,
    /// Bound on making a database connection and on waiting for one from the
    /// pool (`DATABASE_CONNECT_TIMEOUT`).
    pub database_connect_timeout: Duration,
    /// TCP keepalive idle time on database connections
    /// (`DATABASE_KEEPALIVE`); probes then follow every second, and a peer
    /// that misses three is declared gone.
    pub database_keepalive: Duration,
    /// `min.insync.replicas` for `payhook topics` (`KAFKA_MIN_INSYNC_REPLICAS`);
    /// `None` (the default) means the replication factor minus one, at
    /// least 1.
    pub min_insync_replicas: Option<i16>,
    /// `retention.ms` of the dead-letter topic created by `payhook topics`
    /// (`KAFKA_DLQ_RETENTION`, default 365 days; `forever` for -1).
    pub dlq_retention: Option<Duration>,
    /// How long a partition may stall (records waiting, not applied) before
    /// someone acts (`KAFKA_MIN_RETENTION`). `serve` warns when a source
    /// topic deletes records sooner than this.
    pub min_retention: Duration,
}

/// A string that must never be printed: `Debug` and `Display` show
/// `<redacted>`. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `DATABASE_URL`: the connection string, which may hold a password. It
/// derefs to the full string for connecting; `Debug` and
/// [`DatabaseUrl::redacted`] show it without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// `scheme://user:password@host/...` with the password (and any
/// `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        // The authority ends at the first '/', '?' or '#' after the scheme;
        // its password sits between the first ':' and the last '@'.
        let end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..end].rfind('@').map(|i| rest + i) {
            if let Some(colon) = out[rest..at].find(':').map(|i| rest + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    // Key=value forms: `?password=...` in a URL, or `password=...` in a
    // key-value string.
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let start = i + "password=".len();
        let end = out[start..]
            .find(['&', ' ', '#'])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
}

/// `KAFKA_SECURITY_PROTOCOL`, in Kafka's own names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            "sasl_ssl" => Some(Self::SaslSsl),
            _ => None,
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Self::Plain),
            "SCRAM-SHA-256" => Some(Self::ScramSha256),
            "SCRAM-SHA-512" => Some(Self::ScramSha512),
            _ => None,
        }
    }

    /// The name the broker knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials (used when the protocol is `sasl_*`).
#[derive(Clone, Debug)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// Everything about how payhook reaches the brokers, beyond their addresses.
#[derive(Clone, Debug)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// Present exactly when `protocol` is `sasl_plaintext` or `sasl_ssl`.
    pub sasl: Option<SaslSettings>,
    /// PEM file of the CAs that may sign the brokers' certificates
    /// (`KAFKA_TLS_CA_FILE`); `None`: Mozilla's roots, compiled in.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain and private key, PEM, for mutual TLS
    /// (`KAFKA_TLS_CERT_FILE`, `KAFKA_TLS_KEY_FILE`; both or neither).
    pub tls_client_auth: Option<(PathBuf, PathBuf)>,
}

impl KafkaSecurity {
    /// Plaintext, no SASL: the local brokers of `./scripts/services`.
    pub fn plaintext() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            sasl: None,
            tls_ca_file: None,
            tls_client_auth: None,
        }
    }
}

/// `sslmode`, with the meanings libpq gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS, but the server's certificate is not checked: safe against a
    /// passive eavesdropper, not against an impostor.
    Require,
    /// TLS; the certificate must chain to a trusted CA and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Some(Self::Disable),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// How payhook reaches Postgres, beyond the URL.
#[derive(Clone, Debug)]
pub struct DatabaseTls {
    pub mode: SslMode,
    /// PEM file of the CAs that may sign the server's certificate
    /// (`DATABASE_TLS_CA_FILE`); `None`: Mozilla's roots, compiled in.
    pub ca_file: Option<PathBuf>,
}

/// How one endpoint's webhooks are signed.
#[derive(Clone, Debug)]
pub struct WebhookAuth {
    pub scheme: Scheme,
    /// Every secret currently active; more than one during a rotation. Empty
    /// when none is configured (then `serve` refuses to start unless
    /// `WEBHOOK_VERIFY=off`).
    pub secrets: Vec<SigningKey>,
}

/// One variable that could not be used, and what was expected instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// All the variables that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<VarError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {}={:?}: expected {}", e.var, e.value, e.expected)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads from a map; for tests.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| map.get(k).cloned())
    }

    /// Reads every setting through `get`, collecting every problem.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            get: &get,
            errors: Vec::new(),
        };
        let cfg = Config {
            http_addr: r.parse(
                "HTTP_ADDR",
                "127.0.0.1:8080",
                "an address like 127.0.0.1:8080",
            ),
            http_max_body_bytes: r.parse_with(
                "HTTP_MAX_BODY_BYTES",
                "262144",
                "a size in bytes between 1024 and 16777216",
                |s| {
                    s.parse::<usize>()
                        .ok()
                        .filter(|n| (1024..=16 << 20).contains(n))
                },
            ),
            http_retry_after: r.duration("HTTP_RETRY_AFTER", "5s"),
            http_header_timeout: r.duration("HTTP_HEADER_TIMEOUT", "10s"),
            http_request_timeout: r.duration("HTTP_REQUEST_TIMEOUT", "30s"),
            http_max_connections: r.parse_with(
                "HTTP_MAX_CONNECTIONS",
                "1024",
                "a whole number between 1 and 100000",
                |s| {
                    s.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                },
            ),
            webhook_verify: r.parse_with("WEBHOOK_VERIFY", "on", "on or off", parse_bool),
            webhook_tolerance: r.parse_with(
                "WEBHOOK_TOLERANCE",
                "5m",
                "a duration between 1s and 1h, like 5m",
                |s| {
                    humantime::parse_duration(s).ok().filter(|d| {
                        (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(d)
                    })
                },
            ),
            webhook_orders: r.webhook_auth("WEBHOOK_ORDERS_SCHEME", "WEBHOOK_ORDERS_SECRETS"),
            webhook_chargebacks: r
                .webhook_auth("WEBHOOK_CHARGEBACKS_SCHEME", "WEBHOOK_CHARGEBACKS_SECRETS"),
            database_url: r.database_url(),
            database_pool_size: r.parse_with(
                "DATABASE_POOL_SIZE",
                "16",
                "a whole number between 1 and 1000",
                |s| s.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)),
            ),
            run_migrations: r.parse_with("RUN_MIGRATIONS", "true", "true or false", parse_bool),
            kafka_brokers: r.parse_with(
                "KAFKA_BROKERS",
                "127.0.0.1:9092",
                "comma-separated host:port pairs",
                |s| {
                    let list: Vec<String> = s
                        .split(',')
                        .map(str::trim)
                        .filter(|b| !b.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let valid = !list.is_empty()
                        && list.iter().all(|b| {
                            b.rsplit_once(':')
                                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                        });
                    valid.then_some(list)
                },
            ),
            orders_topic: r.name("KAFKA_ORDERS_TOPIC", "payments.orders"),
            disputes_topic: r.name("KAFKA_DISPUTES_TOPIC", "payments.disputes"),
            orders_consumer_group: r.name("KAFKA_ORDERS_CONSUMER_GROUP", "payhook-orders"),
            disputes_consumer_group: r.name("KAFKA_DISPUTES_CONSUMER_GROUP", "payhook-disputes"),
            dlq_topic: r.name("KAFKA_DLQ_TOPIC", "payments.dlq"),
            partitions: r.parse_with(
                "KAFKA_PARTITIONS",
                "8",
                "a whole number between 1 and 10000",
                |s| {
                    s.parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 10_000)
                        .and_then(NonZeroU32::new)
                },
            ),
            replication_factor: r.parse_with(
                "KAFKA_REPLICATION_FACTOR",
                "auto",
                "auto, or a whole number between 1 and 32",
                |s| parse_auto_or(s, 1..=32),
            ),
            publish_timeout: r.duration("KAFKA_PUBLISH_TIMEOUT", "5s"),
            linger: r.parse_with(
                "KAFKA_LINGER",
                "0ms",
                "a duration of at most 1s, like 0ms, 2ms",
                |s| {
                    humantime::parse_duration(s)
                        .ok()
                        .filter(|d| *d <= Duration::from_secs(1))
                },
            ),
            producer_queue: r.parse_with(
                "KAFKA_PRODUCER_QUEUE",
                "4096",
                "a whole number between 1 and 1000000",
                |s| {
                    s.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                },
            ),
            kafka_request_timeout: r.duration("KAFKA_REQUEST_TIMEOUT", "10s"),
            fetch_max_bytes: r.parse_with(
                "KAFKA_FETCH_MAX_BYTES",
                "4194304",
                "a size in bytes between 65536 and 104857600",
                |s| {
                    s.parse::<i32>()
                        .ok()
                        .filter(|n| (65_536..=100 << 20).contains(n))
                },
            ),
            fetch_max_wait: r.duration("KAFKA_FETCH_MAX_WAIT", "250ms"),
            consumer_max_batch: r.parse_with(
                "CONSUMER_MAX_BATCH",
                "2000",
                "a whole number between 1 and 100000",
                |s| {
                    s.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                },
            ),
            consumer_max_attempts: r.parse_with(
                "CONSUMER_MAX_ATTEMPTS",
                "0",
                "a whole number of attempts (0 = retry without limit)",
                |s| s.parse::<u32>().ok().map(|n| (n > 0).then_some(n)),
            ),
            retry_backoff_min: r.duration("RETRY_BACKOFF_MIN", "100ms"),
            retry_backoff_max: r.duration("RETRY_BACKOFF_MAX", "30s"),
            shutdown_timeout: r.duration("SHUTDOWN_TIMEOUT", "30s"),
            kafka_security: r.kafka_security(),
            database_tls: DatabaseTls {
                mode: SslMode::Disable,
                ca_file: r.optional_file("DATABASE_TLS_CA_FILE"),
            },
            database_statement_timeout: r.duration("DATABASE_STATEMENT_TIMEOUT", "10s"),
            database_idle_in_transaction_timeout: r
                .duration("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "60s"),
            database_connect_timeout: r.duration("DATABASE_CONNECT_TIMEOUT", "5s"),
            database_keepalive: r.duration("DATABASE_KEEPALIVE", "10s"),
            min_insync_replicas: r.parse_with(
                "KAFKA_MIN_INSYNC_REPLICAS",
                "auto",
                "auto, or a whole number between 1 and 32",
                |s| parse_auto_or(s, 1..=32),
            ),
            dlq_retention: r.parse_with(
                "KAFKA_DLQ_RETENTION",
                "365days",
                "a duration like 30days, or forever",
                |s| match s {
                    "forever" => Some(None),
                    _ => humantime::parse_duration(s)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .map(Some),
                },
            ),
            min_retention: r.duration("KAFKA_MIN_RETENTION", "7days"),
        };
        let mut cfg = cfg;
        cfg.database_tls.mode = r.sslmode(&cfg.database_url);
        if cfg.database_tls.ca_file.is_some() && cfg.database_tls.mode != SslMode::VerifyFull {
            r.errors.push(VarError {
                var: "DATABASE_TLS_CA_FILE",
                value: cfg
                    .database_tls
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                expected: "to be set only with DATABASE_SSLMODE=verify-full (the only mode that checks the server's certificate)",
            });
        }
        if let (Some(rf), Some(isr)) = (cfg.replication_factor, cfg.min_insync_replicas) {
            if isr > rf {
                r.errors.push(VarError {
                    var: "KAFKA_MIN_INSYNC_REPLICAS",
                    value: isr.to_string(),
                    expected: "at most KAFKA_REPLICATION_FACTOR (or every write would be refused)",
                });
            }
        }
        // Checks that involve more than one field.
        if cfg.retry_backoff_min > cfg.retry_backoff_max {
            r.errors.push(VarError {
                var: "RETRY_BACKOFF_MIN",
                value: humantime::format_duration(cfg.retry_backoff_min).to_string(),
                expected: "a duration no longer than RETRY_BACKOFF_MAX",
            });
        }
        if cfg.orders_topic == cfg.disputes_topic {
            r.errors.push(VarError {
                var: "KAFKA_DISPUTES_TOPIC",
                value: cfg.disputes_topic.clone(),
                expected: "a topic name different from KAFKA_ORDERS_TOPIC",
            });
        }
        if cfg.dlq_topic == cfg.orders_topic || cfg.dlq_topic == cfg.disputes_topic {
            r.errors.push(VarError {
                var: "KAFKA_DLQ_TOPIC",
                value: cfg.dlq_topic.clone(),
                expected: "a topic name different from the orders and disputes topics",
            });
        }
        if r.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(r.errors))
        }
    }
}

/// `auto` (then `None`) or a number in `range`.
fn parse_auto_or(s: &str, range: std::ops::RangeInclusive<i16>) -> Option<Option<i16>> {
    if s.eq_ignore_ascii_case("auto") {
        return Some(None);
    }
    s.parse::<i16>()
        .ok()
        .filter(|n| range.contains(n))
        .map(Some)
}

/// The `sslmode` parameter of a URL, if any.
fn url_sslmode(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "sslmode")
        .map(|(_, v)| v)
}

/// The URL without its `sslmode` parameter: payhook applies the mode itself
/// (tokio-postgres knows no `verify-full`).
pub fn strip_sslmode(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("sslmode="))
        .collect();
    if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Kafka's own rule for topic names, also used for consumer group names so
/// they stay readable in logs and SQL.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<VarError>,
}

impl Reader<'_> {
    fn parse_with<T>(
        &mut self,
        var: &'static str,
        default: &str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let raw = (self.get)(var);
        let value = raw.as_deref().map(str::trim).unwrap_or(default);
        match parse(value) {
            Some(v) => v,
            None => {
                self.errors.push(VarError {
                    var,
                    value: value.to_owned(),
                    expected,
                });
                // Fall back to the default so the remaining checks can run;
                // the error is reported and start-up stops.
                parse(default).expect("every default parses")
            }
        }
    }

    fn parse<T: std::str::FromStr>(
        &mut self,
        var: &'static str,
        default: &str,
        expected: &'static str,
    ) -> T {
        self.parse_with(var, default, expected, |s| s.parse().ok())
    }

    fn duration(&mut self, var: &'static str, default: &str) -> Duration {
        self.parse_with(
            var,
            default,
            "a duration like 250ms, 5s or 1m (more than zero)",
            |s| humantime::parse_duration(s).ok().filter(|d| !d.is_zero()),
        )
    }

    /// A scheme and its secrets. A refused secret list is reported without
    /// its value: it would put the secrets in the log.
    fn webhook_auth(&mut self, scheme_var: &'static str, secrets_var: &'static str) -> WebhookAuth {
        let scheme = self.parse_with(scheme_var, "standard", "standard or stripe", Scheme::parse);
        let raw = (self.get)(secrets_var).unwrap_or_default();
        let secrets = match SigningKey::parse_list(scheme, &raw) {
            Ok(keys) => keys,
            Err(e) => {
                self.errors.push(VarError {
                    var: secrets_var,
                    value: format!("<redacted: {e}>"),
                    expected: match scheme {
                        Scheme::Standard => {
                            "comma-separated whsec_<base64> secrets, each of at least 16 bytes, none empty"
                        }
                        Scheme::Stripe => {
                            "comma-separated secrets, each of at least 16 characters, none empty"
                        }
                    },
                });
                Vec::new()
            }
        };
        WebhookAuth { scheme, secrets }
    }

    /// `DATABASE_URL`. A refused URL is reported with its password hidden.
    fn database_url(&mut self) -> DatabaseUrl {
        const VAR: &str = "DATABASE_URL";
        let default = "postgres://postgres@127.0.0.1:5432/payhook";
        let raw = (self.get)(VAR);
        let value = raw.as_deref().map(str::trim).unwrap_or(default);
        let ok = (value.starts_with("postgres://") || value.starts_with("postgresql://"))
            && strip_sslmode(value)
                .parse::<tokio_postgres::Config>()
                .is_ok();
        if ok {
            DatabaseUrl::new(value)
        } else {
            self.errors.push(VarError {
                var: VAR,
                value: redact_url(value),
                expected: "a postgres:// URL",
            });
            DatabaseUrl::new(default)
        }
    }

    /// `DATABASE_SSLMODE`, else the URL's `sslmode`, else `disable`. When
    /// both are given they must agree.
    fn sslmode(&mut self, url: &str) -> SslMode {
        const EXPECTED: &str = "disable, require or verify-full";
        let from_url = url_sslmode(url);
        let url_mode = match from_url {
            Some(v) => match SslMode::parse(v) {
                Some(m) => Some(m),
                None => {
                    self.errors.push(VarError {
                        var: "DATABASE_URL",
                        value: format!("...sslmode={v}"),
                        expected: "sslmode=disable, require or verify-full (payhook supports these three)",
                    });
                    None
                }
            },
            None => None,
        };
        if (self.get)("DATABASE_SSLMODE").is_none() {
            return url_mode.unwrap_or(SslMode::Disable);
        }
        let mode = self.parse_with("DATABASE_SSLMODE", "disable", EXPECTED, SslMode::parse);
        if url_mode.is_some_and(|u| u != mode) {
            self.errors.push(VarError {
                var: "DATABASE_SSLMODE",
                value: mode.as_str().to_owned(),
                expected: "the same mode as sslmode in DATABASE_URL (or drop one of them)",
            });
        }
        mode
    }

    fn optional_file(&mut self, var: &'static str) -> Option<PathBuf> {
        let raw = (self.get)(var)?;
        let path = raw.trim();
        if path.is_empty() {
            return None;
        }
        if std::path::Path::new(path).is_file() {
            Some(PathBuf::from(path))
        } else {
            self.errors.push(VarError {
                var,
                value: path.to_owned(),
                expected: "the path of a readable PEM file",
            });
            None
        }
    }

    /// `KAFKA_SECURITY_PROTOCOL` and what it needs. The password is never
    /// echoed.
    fn kafka_security(&mut self) -> KafkaSecurity {
        let protocol = self.parse_with(
            "KAFKA_SECURITY_PROTOCOL",
            "plaintext",
            "plaintext, ssl, sasl_plaintext or sasl_ssl",
            SecurityProtocol::parse,
        );
        let mechanism = self.parse_with(
            "KAFKA_SASL_MECHANISM",
            "PLAIN",
            "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            SaslMechanism::parse,
        );
        let username = (self.get)("KAFKA_SASL_USERNAME").unwrap_or_default();
        let password = (self.get)("KAFKA_SASL_PASSWORD").unwrap_or_default();
        let sasl = if protocol.uses_sasl() {
            if username.trim().is_empty() {
                self.errors.push(VarError {
                    var: "KAFKA_SASL_USERNAME",
                    value: String::new(),
                    expected: "a user name (KAFKA_SECURITY_PROTOCOL is sasl_*)",
                });
            }
            if password.is_empty() {
                self.errors.push(VarError {
                    var: "KAFKA_SASL_PASSWORD",
                    value: String::new(),
                    expected: "a password (KAFKA_SECURITY_PROTOCOL is sasl_*)",
                });
            }
            Some(SaslSettings {
                mechanism,
                username: username.trim().to_owned(),
                password: Secret::new(password),
            })
        } else {
            None
        };
        let tls_ca_file = self.optional_file("KAFKA_TLS_CA_FILE");
        let cert = self.optional_file("KAFKA_TLS_CERT_FILE");
        let key = self.optional_file("KAFKA_TLS_KEY_FILE");
        let tls_client_auth = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                self.errors.push(VarError {
                    var: "KAFKA_TLS_KEY_FILE",
                    value: String::new(),
                    expected: "a private key file to go with KAFKA_TLS_CERT_FILE",
                });
                None
            }
            (None, Some(_)) => {
                self.errors.push(VarError {
                    var: "KAFKA_TLS_CERT_FILE",
                    value: String::new(),
                    expected: "a certificate file to go with KAFKA_TLS_KEY_FILE",
                });
                None
            }
        };
        if !protocol.uses_tls() && (tls_ca_file.is_some() || tls_client_auth.is_some()) {
            self.errors.push(VarError {
                var: "KAFKA_SECURITY_PROTOCOL",
                value: protocol.as_str().to_owned(),
                expected: "ssl or sasl_ssl when KAFKA_TLS_* files are set",
            });
        }
        KafkaSecurity {
            protocol,
            sasl,
            tls_ca_file,
            tls_client_auth,
        }
    }

    fn name(&mut self, var: &'static str, default: &str) -> String {
        self.parse_with(
            var,
            default,
            "1 to 249 characters of a-z, A-Z, 0-9, '.', '_' or '-'",
            |s| valid_name(s).then(|| s.to_owned()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_are_for_local_use() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            &*c.database_url,
            "postgres://postgres@127.0.0.1:5432/payhook"
        );
        assert_eq!(c.kafka_brokers, vec!["127.0.0.1:9092".to_string()]);
        assert_eq!(c.orders_topic, "payments.orders");
        assert_eq!(c.disputes_topic, "payments.disputes");
        assert_eq!(c.publish_timeout, Duration::from_secs(5));
        assert_eq!(c.linger, Duration::ZERO);
        assert!(c.run_migrations);
    }

    #[test]
    fn durations_are_humantime() {
        let c = cfg(&[
            ("KAFKA_PUBLISH_TIMEOUT", "250ms"),
            ("SHUTDOWN_TIMEOUT", "1m"),
        ])
        .unwrap();
        assert_eq!(c.publish_timeout, Duration::from_millis(250));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
    }

    #[test]
    fn every_bad_variable_is_named_with_the_expected_form() {
        let err = cfg(&[
            ("HTTP_ADDR", "localhost"),
            ("KAFKA_PUBLISH_TIMEOUT", "5 parsecs"),
            ("KAFKA_PARTITIONS", "0"),
            ("KAFKA_BROKERS", "nohost"),
            ("DATABASE_URL", "mysql://x"),
            ("RUN_MIGRATIONS", "perhaps"),
            ("KAFKA_ORDERS_TOPIC", "bad topic"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "HTTP_ADDR",
                "DATABASE_URL",
                "RUN_MIGRATIONS",
                "KAFKA_BROKERS",
                "KAFKA_ORDERS_TOPIC",
                "KAFKA_PARTITIONS",
                "KAFKA_PUBLISH_TIMEOUT",
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("KAFKA_PUBLISH_TIMEOUT=\"5 parsecs\": expected a duration like 250ms")
        );
        assert!(text.contains("HTTP_ADDR=\"localhost\": expected an address"));
    }

    #[test]
    fn zero_durations_and_crossed_backoffs_are_refused() {
        let err = cfg(&[("HTTP_RETRY_AFTER", "0s")]).unwrap_err();
        assert_eq!(err.0[0].var, "HTTP_RETRY_AFTER");
        let err = cfg(&[("RETRY_BACKOFF_MIN", "1m"), ("RETRY_BACKOFF_MAX", "1s")]).unwrap_err();
        assert_eq!(err.0[0].var, "RETRY_BACKOFF_MIN");
    }

    #[test]
    fn same_topic_twice_is_refused() {
        let err = cfg(&[("KAFKA_DISPUTES_TOPIC", "payments.orders")]).unwrap_err();
        assert_eq!(err.0[0].var, "KAFKA_DISPUTES_TOPIC");
    }

    #[test]
    fn http_limits_have_defaults_and_bounds() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_max_connections, 1024);
        let c = cfg(&[
            ("HTTP_REQUEST_TIMEOUT", "2s"),
            ("HTTP_MAX_CONNECTIONS", "8"),
        ])
        .unwrap();
        assert_eq!(c.http_request_timeout, Duration::from_secs(2));
        assert_eq!(c.http_max_connections, 8);
        let err = cfg(&[
            ("HTTP_HEADER_TIMEOUT", "0s"),
            ("HTTP_REQUEST_TIMEOUT", "soon"),
            ("HTTP_MAX_CONNECTIONS", "0"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "HTTP_HEADER_TIMEOUT",
                "HTTP_REQUEST_TIMEOUT",
                "HTTP_MAX_CONNECTIONS"
            ]
        );
    }

    #[test]
    fn webhook_verification_is_on_by_default_with_standard_scheme() {
        let c = cfg(&[]).unwrap();
        assert!(c.webhook_verify);
        assert_eq!(c.webhook_tolerance, Duration::from_secs(300));
        assert_eq!(c.webhook_orders.scheme, Scheme::Standard);
        assert_eq!(c.webhook_chargebacks.scheme, Scheme::Standard);
        assert!(c.webhook_orders.secrets.is_empty());
        let c = cfg(&[
            ("WEBHOOK_VERIFY", "off"),
            ("WEBHOOK_TOLERANCE", "90s"),
            ("WEBHOOK_CHARGEBACKS_SCHEME", "stripe"),
            (
                "WEBHOOK_ORDERS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_cGF5aG9vayByb3RhdGlvbiBrZXkgMjAyNi0xMQ==",
            ),
            ("WEBHOOK_CHARGEBACKS_SECRETS", "whsec_stripe_test_secret_0123456789"),
        ])
        .unwrap();
        assert!(!c.webhook_verify);
        assert_eq!(c.webhook_tolerance, Duration::from_secs(90));
        assert_eq!(c.webhook_orders.secrets.len(), 2);
        assert_eq!(c.webhook_chargebacks.scheme, Scheme::Stripe);
        assert_eq!(c.webhook_chargebacks.secrets.len(), 1);
    }

    #[test]
    fn bad_webhook_settings_are_named_and_secrets_never_echoed() {
        let err = cfg(&[
            ("WEBHOOK_VERIFY", "maybe"),
            ("WEBHOOK_TOLERANCE", "2h"),
            ("WEBHOOK_ORDERS_SCHEME", "hmac"),
            (
                "WEBHOOK_ORDERS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,",
            ),
            ("WEBHOOK_CHARGEBACKS_SCHEME", "stripe"),
            ("WEBHOOK_CHARGEBACKS_SECRETS", "tooshort-secret"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "WEBHOOK_VERIFY",
                "WEBHOOK_TOLERANCE",
                "WEBHOOK_ORDERS_SCHEME",
                "WEBHOOK_ORDERS_SECRETS",
                "WEBHOOK_CHARGEBACKS_SECRETS",
            ]
        );
        let text = err.to_string();
        assert!(!text.contains("MfKQ9r8G"), "{text}");
        assert!(!text.contains("tooshort"), "{text}");
        assert!(
            text.contains("WEBHOOK_ORDERS_SECRETS=\"<redacted: a secret is empty>\""),
            "{text}"
        );
        // A standard secret without its prefix is refused.
        let err =
            cfg(&[("WEBHOOK_ORDERS_SECRETS", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]).unwrap_err();
        assert_eq!(err.0[0].var, "WEBHOOK_ORDERS_SECRETS");
        assert!(err.0[0].expected.contains("whsec_"));
    }

    #[test]
    fn secured_connections_are_off_by_default() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.kafka_security.protocol, SecurityProtocol::Plaintext);
        assert!(c.kafka_security.sasl.is_none());
        assert_eq!(c.database_tls.mode, SslMode::Disable);
        assert_eq!(c.database_statement_timeout, Duration::from_secs(10));
        assert_eq!(
            c.database_idle_in_transaction_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(c.database_connect_timeout, Duration::from_secs(5));
        assert_eq!(c.database_keepalive, Duration::from_secs(10));
        assert_eq!(c.replication_factor, None);
        assert_eq!(c.min_insync_replicas, None);
        assert_eq!(c.dlq_retention, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(c.min_retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn sasl_settings_are_read_and_the_password_never_shown() {
        let c = cfg(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "hunter2-kafka"),
        ])
        .unwrap();
        assert_eq!(c.kafka_security.protocol, SecurityProtocol::SaslSsl);
        let sasl = c.kafka_security.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "svc");
        assert_eq!(sasl.password.expose(), "hunter2-kafka");
        assert!(!format!("{c:?}").contains("hunter2"));

        // sasl_* without credentials; a bad mechanism; a cert without key.
        let err = cfg(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ("KAFKA_TLS_CERT_FILE", "Cargo.toml"),
        ])
        .unwrap_err();
        let vars: Vec<_> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "KAFKA_SASL_MECHANISM",
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
                "KAFKA_TLS_KEY_FILE",
            ]
        );
        // TLS files with a protocol that does not use TLS.
        let err = cfg(&[("KAFKA_TLS_CA_FILE", "Cargo.toml")]).unwrap_err();
        assert_eq!(err.0[0].var, "KAFKA_SECURITY_PROTOCOL");
        // A wrong setting next to a password: the password is not echoed.
        let err = cfg(&[
            ("KAFKA_SECURITY_PROTOCOL", "sasl-plain"),
            ("KAFKA_SASL_PASSWORD", "hunter2-kafka"),
        ])
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn database_passwords_are_never_shown() {
        let c = cfg(&[("DATABASE_URL", "postgres://app:s3cr3t-pw@db:5432/payhook")]).unwrap();
        assert_eq!(&*c.database_url, "postgres://app:s3cr3t-pw@db:5432/payhook");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db:5432/payhook"),
            "{shown}"
        );
        // A refused URL is named without its password.
        let err = cfg(&[("DATABASE_URL", "postgres://app:s3cr3t-pw@db:notaport/x")]).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains("DATABASE_URL=\"postgres://app:***@db:notaport/x\""),
            "{text}"
        );
        assert_eq!(
            redact_url("postgresql://u:p%40ss@h/db?password=x&sslmode=require"),
            "postgresql://u:***@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn sslmode_comes_from_the_setting_or_the_url_and_they_must_agree() {
        let url = "postgres://u@h/db?sslmode=verify-full";
        let c = cfg(&[("DATABASE_URL", url)]).unwrap();
        assert_eq!(c.database_tls.mode, SslMode::VerifyFull);
        assert_eq!(strip_sslmode(url), "postgres://u@h/db");
        assert_eq!(
            strip_sslmode("postgres://u@h/db?sslmode=require&application_name=x"),
            "postgres://u@h/db?application_name=x"
        );
        let c = cfg(&[("DATABASE_SSLMODE", "require")]).unwrap();
        assert_eq!(c.database_tls.mode, SslMode::Require);
        let err = cfg(&[("DATABASE_URL", url), ("DATABASE_SSLMODE", "disable")]).unwrap_err();
        assert_eq!(err.0[0].var, "DATABASE_SSLMODE");
        let err = cfg(&[("DATABASE_URL", "postgres://u@h/db?sslmode=verify-ca")]).unwrap_err();
        assert_eq!(err.0[0].var, "DATABASE_URL");
        // A CA file only means something when the certificate is checked.
        let err = cfg(&[("DATABASE_TLS_CA_FILE", "Cargo.toml")]).unwrap_err();
        assert_eq!(err.0[0].var, "DATABASE_TLS_CA_FILE");
        let err = cfg(&[
            ("DATABASE_SSLMODE", "verify-full"),
            ("DATABASE_TLS_CA_FILE", "/nope.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.0[0].var, "DATABASE_TLS_CA_FILE");
    }

    #[test]
    fn replication_settings_are_auto_or_bounded() {
        let c = cfg(&[
            ("KAFKA_REPLICATION_FACTOR", "3"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("KAFKA_DLQ_RETENTION", "forever"),
        ])
        .unwrap();
        assert_eq!(c.replication_factor, Some(3));
        assert_eq!(c.min_insync_replicas, Some(2));
        assert_eq!(c.dlq_retention, None);
        let err = cfg(&[
            ("KAFKA_REPLICATION_FACTOR", "2"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "3"),
        ])
        .unwrap_err();
        assert_eq!(err.0[0].var, "KAFKA_MIN_INSYNC_REPLICAS");
    }

    #[test]
    fn brokers_list_is_split_and_trimmed() {
        let c = cfg(&[("KAFKA_BROKERS", "a:9092, b:9093 ,")]).unwrap();
        assert_eq!(c.kafka_brokers, ["a:9092", "b:9093"]);
    }
}
