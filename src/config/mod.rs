//! Configuration: every setting declared once, read once, validated once.
//!
//! Each setting is one entry of the `settings!` table below: its field and
//! type, its environment variable, its default, a one-line meaning, and the
//! check that turns the text into the typed value. From that one entry come
//! the field, the command-line flag with its environment variable, default
//! and help text ([`cli`], shown by `payhook serve --help`), and the
//! validation. The settings table of `docs/configuration.md` ("All
//! settings") and `.env.example` are checked against [`SETTINGS`] by a test.
//!
//! The table is divided into sections, and each section becomes a struct of
//! its own: [`Config`] is `http`, `webhooks`, `database`, `kafka`,
//! `consumer` and `process`, and each module takes only the section it
//! needs (`Kafka::from_config(&cfg.kafka)`, `db::pool_from_config(&cfg.database, …)`).
//! Only the wiring (`app`, `ops`) holds the whole.
//!
//! A value that cannot be used stops start-up with a message naming the
//! variable and the form it expects; all problems are reported together so
//! one edit fixes them all. Secrets (webhook secrets, the password inside
//! `DATABASE_URL`) are never echoed.
//!
//! # Adding a setting
//!
//! Add one line to the table, in the section it belongs to:
//!
//! ```text
//! /// Longest wait for a Postgres connection from the pool
//! pool_timeout: Duration = DATABASE_POOL_TIMEOUT("5s") check::duration();
//! ```
//!
//! then use `cfg.database.pool_timeout`, and add the variable to the
//! settings table of `docs/configuration.md` and to `.env.example` (the test
//! says exactly what to add).
//! Checks that involve several settings go in `Config::check_together`.
//!
//! The `///` line is the help text (one line). A secret is marked after its
//! default, and is then never shown in errors, `--help` or `payhook config`,
//! and may be read from the file its `NAME_FILE` variable names ([`files`]):
//!
//! ```text
//! /// SASL password for the brokers
//! sasl_password: Option<String> = KAFKA_SASL_PASSWORD("", secret) check::optional(check::text("any text"));
//! ```
//!
//! (`password_in_url` shows a URL with its password masked.) The helpers in
//! [`check`] cover numbers in a range, durations, switches, names; a
//! one-off check is written in place, e.g. for an enum:
//! `Check { expected: "disable, prefer or require", parse: SslMode::parse }`.

pub mod check;
pub mod cli;
pub mod connection;
pub mod files;
pub mod keys;

use connection::url_sslmode;
pub use connection::{
    DatabaseTls, KafkaSecurity, SaslMechanism, SaslSettings, SecurityProtocol, SslMode,
    strip_sslmode,
};

use std::{
    collections::HashMap, fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration,
};

use keys::{EnvelopeKey, HmacKey, HmacKeyError, KeyError, Scheme, SigningKey};

/// Where a setting is shown in `--help`, and which commands show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Http,
    Webhook,
    Database,
    Kafka,
    Consumer,
    Process,
}

impl Section {
    /// The heading of this section in `--help`.
    pub fn heading(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Webhook => "Webhook signatures",
            Self::Database => "Postgres",
            Self::Kafka => "Kafka",
            Self::Consumer => "Consumer",
            Self::Process => "Process and logging",
        }
    }

    /// One bit per section, for [`cli::Settings`]' choice of sections.
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// How much of a setting's value may be shown in errors and `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrecy {
    /// Shown as given.
    Plain,
    /// Never shown.
    Secret,
    /// A URL whose password is never shown (`postgres://user:***@host/db`).
    PasswordInUrl,
}

impl Secrecy {
    /// `value` as it may appear in a message or a log.
    pub fn show(self, value: &str) -> String {
        match self {
            Self::Plain => value.to_owned(),
            Self::Secret if value.is_empty() => String::new(),
            Self::Secret => "<redacted>".to_owned(),
            Self::PasswordInUrl => mask_password(value),
        }
    }
}

/// `scheme://user:password@host/...` with the password replaced by `***`.
/// Anything that does not look like a URL with credentials is shown only
/// up to its scheme, in case the password sits somewhere unexpected.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<redacted: not a URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            // A password may also be passed as a query parameter.
            let tail = if tail.contains("password=") {
                "/<redacted>"
            } else {
                tail
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None if tail.contains("password=") => format!("{scheme}://{authority}/<redacted>"),
        None => url.to_owned(),
    }
}

/// A field's `Debug` text, as far as its secrecy lets it be shown.
struct Shown(Secrecy, String);

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Secrecy::Plain => f.write_str(&self.1),
            Secrecy::Secret => f.write_str("<redacted>"),
            Secrecy::PasswordInUrl => write!(f, "{:?}", mask_password(self.1.trim_matches('"'))),
        }
    }
}

/// One setting as `--help`, `docs/configuration.md` and `.env.example` show it.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The environment variable, e.g. `HTTP_ADDR`. The flag is the same in
    /// lower case with dashes: `--http-addr`.
    pub env: &'static str,
    /// The default, as text ("" when there is none).
    pub default: &'static str,
    /// One line: what it means.
    pub help: &'static str,
    pub section: Section,
    pub secrecy: Secrecy,
    /// For a secret, the variable naming a file to read it from instead:
    /// `KAFKA_SASL_PASSWORD_FILE` for `KAFKA_SASL_PASSWORD` (see [`files`]).
    pub file_env: Option<&'static str>,
}

impl Setting {
    /// `--http-addr` for `HTTP_ADDR`.
    pub fn flag(&self) -> String {
        self.env.to_ascii_lowercase().replace('_', "-")
    }

    /// The form a value must have, as errors state it.
    pub fn expected(&self) -> &'static str {
        expected_of(self.env)
    }

    /// The declared setting read from `var`, if there is one.
    pub fn named(var: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.env == var)
    }

    /// Where `var` (a setting, or a secret's `_FILE` variable) stands in
    /// the table.
    fn place(var: &str) -> Option<usize> {
        SETTINGS
            .iter()
            .position(|s| s.env == var || s.file_env == Some(var))
    }
}

/// A check: the form a value must have, and the parser that accepts it.
pub struct Check<F> {
    pub expected: &'static str,
    pub parse: F,
}

/// Declares the settings: see the module documentation.
macro_rules! settings {
    (@secrecy) => { Secrecy::Plain };
    (@secrecy secret) => { Secrecy::Secret };
    (@secrecy password_in_url) => { Secrecy::PasswordInUrl };
    // Every secret may also be read from a file (`NAME_FILE`).
    (@file $env:ident) => { None };
    (@file $env:ident $secrecy:ident) => { Some(concat!(stringify!($env), "_FILE")) };
    ($(
        #[doc = $section_doc:literal]
        $section:ident => $part:ident : $part_ty:ident {
            $(
                #[doc = $help:literal]
                $field:ident : $ty:ty = $env:ident ($default:literal $(, $secrecy:ident)?) $check:expr;
            )*
        }
    )*) => {
        $(
            #[doc = $section_doc]
            ///
            /// `Debug` shows secrets the way errors do: not at all.
            #[derive(Clone)]
            pub struct $part_ty {
                $(
                    #[doc = concat!($help, " (`", stringify!($env), "`, default `", $default, "`)")]
                    pub $field: $ty,
                )*
            }

            impl fmt::Debug for $part_ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.debug_struct(stringify!($part_ty))
                        $(
                            .field(
                                stringify!($field),
                                &Shown(settings!(@secrecy $($secrecy)?), format!("{:?}", self.$field)),
                            )
                        )*
                        .finish()
                }
            }
        )*

        /// Everything payhook reads from its environment (or its flags), one
        /// section per part of the service: each module takes only its own.
        #[derive(Clone, Debug)]
        pub struct Config {
            $(
                #[doc = $section_doc]
                pub $part: $part_ty,
            )*
        }

        /// Every setting, in the order `--help` shows them.
        pub static SETTINGS: &[Setting] = &[
            $($(
                Setting {
                    env: stringify!($env),
                    default: $default,
                    help: $help.trim_ascii(),
                    section: Section::$section,
                    secrecy: settings!(@secrecy $($secrecy)?),
                    file_env: settings!(@file $env $($secrecy)?),
                },
            )*)*
        ];

        /// The form each variable expects, from its check.
        fn expected_of(var: &str) -> &'static str {
            $($(
                if var == stringify!($env) {
                    let check = $check;
                    let _: &dyn Fn(&str) -> Option<$ty> = &check.parse;
                    return check.expected;
                }
            )*)*
            ""
        }

        impl Config {
            fn read_all(r: &mut Reader<'_>) -> Self {
                Config {
                    $(
                        $part: $part_ty {
                            $(
                                $field: r.read(
                                    stringify!($env),
                                    settings!(@file $env $($secrecy)?),
                                    $default,
                                    settings!(@secrecy $($secrecy)?),
                                    $check,
                                ),
                            )*
                        },
                    )*
                }
            }
        }
    };
}

settings! {
    /// The HTTP listeners and the edge's limits.
    Http => http: HttpSettings {
        /// Address the HTTP server listens on
        addr: SocketAddr = HTTP_ADDR("127.0.0.1:8080") check::from_str("an address like 127.0.0.1:8080");
        /// A separate listener for /metrics, /status and the probes' detail (the public /readyz then says its status word only); empty serves them with the webhooks
        admin_addr: Option<SocketAddr> = ADMIN_ADDR("")
            check::optional(check::from_str("an address like 127.0.0.1:9090, or empty for none"));
        /// Largest webhook body accepted, in bytes (413 beyond)
        max_body_bytes: usize = HTTP_MAX_BODY_BYTES("262144")
            check::whole(1024..=16 << 20, "a size in bytes between 1024 and 16777216");
        /// Retry-After sent with a 503
        retry_after: Duration = HTTP_RETRY_AFTER("5s") check::duration();
        /// Time a client has to send its request headers, then the connection is closed
        header_timeout: Duration = HTTP_HEADER_TIMEOUT("10s") check::duration();
        /// Time a client has to send its request body, then 408
        request_timeout: Duration = HTTP_REQUEST_TIMEOUT("30s") check::duration();
        /// Connections served at once; more wait to be accepted
        max_connections: usize = HTTP_MAX_CONNECTIONS("1024")
            check::whole(1..=100_000, "a whole number between 1 and 100000");
        /// How far after its arrival a webhook's occurred_at may be (400 beyond)
        occurred_at_max_future: Duration = OCCURRED_AT_MAX_FUTURE("1d")
            check::duration_within(Duration::from_secs(60)..=Duration::from_secs(365 * 86_400), "a duration between 1m and 365d, like 1d");
    }
    /// How each webhook endpoint verifies what it receives, and the providers' field names.
    Webhook => webhooks: WebhookSettings {
        /// on: an endpoint without secrets is off (404); off: it takes UNSIGNED webhooks (local use only). An endpoint with secrets always verifies
        verify: bool = WEBHOOK_VERIFY("on") check::switch("on or off");
        /// Confirms WEBHOOK_VERIFY=off on a non-loopback HTTP_ADDR (anyone who reaches it can post payment events)
        unsigned_on_public_listener: bool = WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER("false") check::switch("true or false");
        /// Allowed skew of a signature's timestamp from this server's clock, either way
        tolerance: Duration = WEBHOOK_TOLERANCE("5m")
            check::duration_within(Duration::from_secs(1)..=Duration::from_secs(3600), "a duration between 1s and 1h, like 5m");
        /// Signature scheme of the payment endpoint: standard or stripe
        orders_scheme: Scheme = WEBHOOK_ORDERS_SCHEME("standard") check::scheme();
        /// Active secrets of the payment endpoint, comma-separated; none: /webhooks/payments/orders is off (404) unless WEBHOOK_VERIFY=off
        orders_secrets: Secrets = WEBHOOK_ORDERS_SECRETS("", secret) check::secrets();
        /// Signature scheme of the chargeback endpoint: standard or stripe
        chargebacks_scheme: Scheme = WEBHOOK_CHARGEBACKS_SCHEME("standard") check::scheme();
        /// Active secrets of the chargeback endpoint, comma-separated; none: /webhooks/payments/chargebacks is off (404) unless WEBHOOK_VERIFY=off
        chargebacks_secrets: Secrets = WEBHOOK_CHARGEBACKS_SECRETS("", secret) check::secrets();
        /// Stripe endpoint secrets, comma-separated; none: /webhooks/stripe is off (404) unless WEBHOOK_VERIFY=off
        stripe_secrets: Secrets = STRIPE_WEBHOOK_SECRETS("", secret) check::secrets();
        /// The Stripe metadata key holding the order id
        stripe_order_id_key: String = STRIPE_ORDER_ID_KEY("order_id") check::metadata_key();
        /// The Stripe metadata key holding the user id
        stripe_user_id_key: String = STRIPE_USER_ID_KEY("user_id") check::metadata_key();
        /// Which Stripe events are applied: live or test (the other mode's are acknowledged and dead-lettered)
        stripe_livemode: bool = STRIPE_LIVEMODE("live") check::stripe_mode();
        /// Connected accounts (acct_...) whose Stripe events are applied, comma-separated; empty: platform events only
        stripe_accounts: Vec<String> = STRIPE_ACCOUNTS("") check::accounts("comma-separated Stripe account ids like acct_1Nv0FGQ9RKHgCVdK");
        /// Adyen HMAC keys (hex), comma-separated; none: /webhooks/adyen is off (404) unless WEBHOOK_VERIFY=off
        adyen_hmac_keys: Secrets = ADYEN_HMAC_KEYS("", secret) check::secrets();
        /// The Adyen additionalData key holding the user id
        adyen_user_id_key: String = ADYEN_USER_ID_KEY("shopperReference") check::metadata_key();
        /// Adyen merchant accounts whose notifications are applied, comma-separated (required with ADYEN_HMAC_KEYS)
        adyen_merchant_accounts: Vec<String> = ADYEN_MERCHANT_ACCOUNTS("") check::accounts("comma-separated Adyen merchant account codes like ShopEU");
    }
    /// How payhook reaches Postgres and bounds its sessions.
    Database => database: DatabaseSettings {
        /// Postgres connection URL; the database must be UTF8 (its password is never shown)
        url: String = DATABASE_URL("postgres://postgres@127.0.0.1:5432/payhook", password_in_url)
            check::postgres_url();
        /// Connections in the Postgres pool
        pool_size: usize = DATABASE_POOL_SIZE("16")
            check::whole(1..=1000, "a whole number between 1 and 1000");
        /// Apply the sql/ migrations when serve starts
        run_migrations: bool = RUN_MIGRATIONS("true") check::switch("true or false");
        /// TLS to Postgres: disable, require or verify-full; empty takes sslmode from DATABASE_URL, else disable
        sslmode: Option<SslMode> = DATABASE_SSLMODE("")
            check::optional(Check { expected: "disable, require or verify-full", parse: SslMode::parse });
        /// PEM file of the CAs that may sign the server's certificate (verify-full); empty: Mozilla's roots
        tls_ca_file: Option<PathBuf> = DATABASE_TLS_CA_FILE("") check::optional(check::pem_file());
        /// Server-side statement_timeout of payhook's sessions; the client gives up one second later
        statement_timeout: Duration = DATABASE_STATEMENT_TIMEOUT("10s") check::duration();
        /// Server-side idle_in_transaction_session_timeout (longer than KAFKA_PUBLISH_TIMEOUT: a dead letter is published inside a transaction)
        idle_in_transaction_timeout: Duration = DATABASE_IDLE_IN_TRANSACTION_TIMEOUT("10s") check::duration();
        /// Bound on making a database connection and on waiting for one from the pool
        connect_timeout: Duration = DATABASE_CONNECT_TIMEOUT("5s") check::duration();
        /// TCP keepalive idle time on database connections (then 1s probes, 3 misses)
        keepalive: Duration = DATABASE_KEEPALIVE("10s") check::duration();
        /// Clear the provider's stored payload (payload, payload_raw) of events stored longer ago than this; off: keep them
        payload_retention: Option<Duration> = PAYLOAD_RETENTION("off") check::duration_or_off();
        /// How often stored payloads older than PAYLOAD_RETENTION are cleared
        payload_retention_interval: Duration = PAYLOAD_RETENTION_INTERVAL("1h") check::duration();
    }
    /// The brokers, the topics, and how payhook produces and fetches.
    Kafka => kafka: KafkaSettings {
        /// Bootstrap brokers, comma-separated host:port
        brokers: Vec<String> = KAFKA_BROKERS("127.0.0.1:9092") check::brokers();
        /// Topic of payment webhooks
        orders_topic: String = KAFKA_ORDERS_TOPIC("payments.orders") check::name();
        /// Topic of chargeback webhooks
        disputes_topic: String = KAFKA_DISPUTES_TOPIC("payments.disputes") check::name();
        /// Consumer group that keys the stored offsets of the orders topic
        orders_consumer_group: String = KAFKA_ORDERS_CONSUMER_GROUP("payhook-orders") check::name();
        /// Consumer group that keys the stored offsets of the disputes topic
        disputes_consumer_group: String = KAFKA_DISPUTES_CONSUMER_GROUP("payhook-disputes") check::name();
        /// Dead-letter topic for records that can never be applied
        dlq_topic: String = KAFKA_DLQ_TOPIC("payments.dlq") check::name();
        /// Partitions per topic, for payhook topics
        partitions: NonZeroU32 = KAFKA_PARTITIONS("8") check::partitions();
        /// Replication factor, for payhook topics; auto: 3, or the broker count if smaller
        replication_factor: Option<i16> = KAFKA_REPLICATION_FACTOR("auto") check::auto_or(1..=32);
        /// min.insync.replicas, for payhook topics; auto: the replication factor minus one, at least 1
        min_insync_replicas: Option<i16> = KAFKA_MIN_INSYNC_REPLICAS("auto") check::auto_or(1..=32);
        /// retention.ms of the dead-letter topic payhook topics creates (forever: kept forever)
        dlq_retention: Option<Duration> = KAFKA_DLQ_RETENTION("365days") check::duration_or_forever();
        /// serve warns when a source topic deletes records sooner than this (time to fix a stalled partition)
        min_retention: Duration = KAFKA_MIN_RETENTION("7days") check::duration();
        /// How payhook reaches the brokers: plaintext, ssl, sasl_plaintext or sasl_ssl (TLS through payhook's in-process tunnel)
        security_protocol: SecurityProtocol = KAFKA_SECURITY_PROTOCOL("plaintext")
            Check { expected: "plaintext, ssl, sasl_plaintext or sasl_ssl", parse: SecurityProtocol::parse };
        /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
        sasl_mechanism: SaslMechanism = KAFKA_SASL_MECHANISM("PLAIN")
            Check { expected: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", parse: SaslMechanism::parse };
        /// SASL user name (required with sasl_*)
        sasl_username: Option<String> = KAFKA_SASL_USERNAME("") check::optional(check::text("a user name"));
        /// SASL password (required with sasl_*; never shown)
        sasl_password: Option<String> = KAFKA_SASL_PASSWORD("", secret) check::optional(check::text("any text"));
        /// PEM file of the CAs that may sign the brokers' certificates; empty: Mozilla's roots
        tls_ca_file: Option<PathBuf> = KAFKA_TLS_CA_FILE("") check::optional(check::pem_file());
        /// Client certificate chain (PEM) for mutual TLS, with KAFKA_TLS_KEY_FILE
        tls_cert_file: Option<PathBuf> = KAFKA_TLS_CERT_FILE("") check::optional(check::pem_file());
        /// Client private key (PEM, PKCS#8) for mutual TLS, with KAFKA_TLS_CERT_FILE
        tls_key_file: Option<PathBuf> = KAFKA_TLS_KEY_FILE("") check::optional(check::pem_file());
        /// Keys that sign every record payhook publishes and that the consumer verifies, comma-separated id:secret (the first signs, every one listed verifies); empty: records are neither signed nor verified
        signing_keys: Vec<EnvelopeKey> = ENVELOPE_SIGNING_KEYS("", secret) check::envelope_keys();
        /// Longest wait for the broker's acknowledgement before a webhook gets 503
        publish_timeout: Duration = KAFKA_PUBLISH_TIMEOUT("5s") check::duration();
        /// How long a broker's sender waits for other partitions' batches before sending a produce request (it stops waiting while waits gather nothing; 0ms: never)
        linger: Duration = KAFKA_LINGER("0ms")
            check::duration_within(Duration::ZERO..=Duration::from_secs(1), "a duration of at most 1s, like 0ms, 2ms");
        /// Records queued per partition before callers wait (then 503)
        producer_queue: usize = KAFKA_PRODUCER_QUEUE("4096")
            check::whole(1..=1_000_000, "a whole number between 1 and 1000000");
        /// How often the producer looks for partitions added to its topics (consumers look on every lease renewal)
        metadata_refresh: Duration = KAFKA_METADATA_REFRESH("30s") check::duration();
        /// Hard deadline on any single broker call
        request_timeout: Duration = KAFKA_REQUEST_TIMEOUT("10s") check::duration();
        /// Bytes asked for per fetch
        fetch_max_bytes: i32 = KAFKA_FETCH_MAX_BYTES("4194304")
            check::whole(65_536..=100 << 20, "a size in bytes between 65536 and 104857600");
        /// How long the broker may hold a fetch open waiting for data
        fetch_max_wait: Duration = KAFKA_FETCH_MAX_WAIT("250ms") check::duration();
        /// Bytes a busy partition's fetch waits for (at most CONSUMER_LINGER) before it returns
        fetch_min_bytes: i32 = KAFKA_FETCH_MIN_BYTES("262144")
            check::whole(1..=100 << 20, "a size in bytes between 1 and 104857600, at most KAFKA_FETCH_MAX_BYTES");
    }
    /// The partition consumers, the fleet, and the disputes that wait for their payment.
    Consumer => consumer: ConsumerSettings {
        /// Run the consumers in this process (false: an ingest-only replica that only accepts and publishes webhooks)
        enabled: bool = CONSUMER_ENABLED("true") check::switch("true or false");
        /// How long a busy partition waits for more records, so they are applied in one transaction (0: apply each fetch at once)
        linger: Duration = CONSUMER_LINGER("20ms")
            check::duration_within(Duration::ZERO..=Duration::from_secs(10), "a duration of at most 10s, like 0ms, 20ms");
        /// Most records applied in one database transaction
        max_batch: usize = CONSUMER_MAX_BATCH("2000")
            check::whole(1..=100_000, "a whole number between 1 and 100000");
        /// Where a partition never consumed starts when its log no longer begins at 0: earliest (reported) or stop
        first_start: FirstStart = CONSUMER_FIRST_START("earliest")
            Check { expected: "earliest or stop", parse: FirstStart::parse };
        /// Transient failures of one record before it is dead-lettered (0 = retry without limit)
        max_attempts: Option<u32> = CONSUMER_MAX_ATTEMPTS("0") check::attempts();
        /// How long a partition with lag may go without moving before it is reported stalled
        stall_after: Duration = CONSUMER_STALL_AFTER("1m") check::duration();
        /// How long a partition lease lasts without renewal (renewed every quarter of it)
        lease_ttl: Duration = CONSUMER_LEASE_TTL("10s") check::duration();
        /// How long a dispute waits for the payment it names before it is dead-lettered
        dispute_payment_wait: Duration = DISPUTE_PAYMENT_WAIT("96h") check::duration();
        /// How often waiting disputes are counted and the expired ones dead-lettered
        dispute_sweep_interval: Duration = DISPUTE_SWEEP_INTERVAL("1m") check::duration();
        /// First pause after a failure (exponential backoff with jitter)
        retry_backoff_min: Duration = RETRY_BACKOFF_MIN("100ms") check::duration();
        /// Longest pause between retries
        retry_backoff_max: Duration = RETRY_BACKOFF_MAX("30s") check::duration();
    }
    /// Shutdown and logging.
    Process => process: ProcessSettings {
        /// Graceful shutdown limit (exit 1 if exceeded)
        shutdown_timeout: Duration = SHUTDOWN_TIMEOUT("30s") check::duration();
        /// Log filter, tracing-subscriber EnvFilter syntax
        log_filter: String = RUST_LOG("info,rskafka=warn,tokio_postgres=warn") check::log_filter();
        /// Log format: json, text, or auto (text when stderr is a terminal, JSON otherwise)
        log_format: LogFormat = LOG_FORMAT("auto") check::log_format();
    }
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

/// `CONSUMER_FIRST_START`: what a partition never consumed does when its
/// log no longer starts at offset 0 (retention deleted records before
/// payhook first read them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// Start at the first record still in the log, and report the deleted
    /// range (log line, metric, `/status`).
    Earliest,
    /// Stop, report, and wait for an operator's `payhook offsets reset`.
    Stop,
}

impl FirstStart {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "earliest" => Some(Self::Earliest),
            "stop" => Some(Self::Stop),
            _ => None,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines (colored only on a terminal).
    Text,
}

/// A list of webhook secrets, as configured. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(String);

impl Secrets {
    /// The keys, as `scheme` reads them.
    pub fn keys(&self, scheme: Scheme) -> Result<Vec<SigningKey>, KeyError> {
        SigningKey::parse_list(scheme, &self.0)
    }

    /// The keys as Adyen HMAC keys (hex).
    pub fn adyen_keys(&self) -> Result<Vec<HmacKey>, HmacKeyError> {
        HmacKey::parse_list(&self.0)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
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
    /// The value, as far as it may be shown (secrets are redacted).
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

    /// Reads every setting through `get`, collecting every problem. A
    /// variable `get` does not know takes its default; a secret may instead
    /// be read from the file its `_FILE` variable names ([`files`]).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            get: &get,
            errors: Vec::new(),
        };
        let cfg = Config::read_all(&mut r);
        cfg.check_together(&mut r.errors);
        if r.errors.is_empty() {
            Ok(cfg)
        } else {
            // In the order of the table, whichever check found them.
            r.errors.sort_by_key(|e| Setting::place(e.var));
            Err(ConfigError(r.errors))
        }
    }

    /// Checks that involve more than one setting.
    fn check_together(&self, errors: &mut Vec<VarError>) {
        if self.consumer.retry_backoff_min > self.consumer.retry_backoff_max {
            errors.push(VarError {
                var: "RETRY_BACKOFF_MIN",
                value: humantime::format_duration(self.consumer.retry_backoff_min).to_string(),
                expected: "a duration no longer than RETRY_BACKOFF_MAX",
            });
        }
        if self.kafka.fetch_min_bytes > self.kafka.fetch_max_bytes {
            errors.push(VarError {
                var: "KAFKA_FETCH_MIN_BYTES",
                value: self.kafka.fetch_min_bytes.to_string(),
                expected: "a size in bytes between 1 and 104857600, at most KAFKA_FETCH_MAX_BYTES",
            });
        }
        if self.kafka.orders_topic == self.kafka.disputes_topic {
            errors.push(VarError {
                var: "KAFKA_DISPUTES_TOPIC",
                value: self.kafka.disputes_topic.clone(),
                expected: "a topic name different from KAFKA_ORDERS_TOPIC",
            });
        }
        if self.kafka.dlq_topic == self.kafka.orders_topic
            || self.kafka.dlq_topic == self.kafka.disputes_topic
        {
            errors.push(VarError {
                var: "KAFKA_DLQ_TOPIC",
                value: self.kafka.dlq_topic.clone(),
                expected: "a topic name different from the orders and disputes topics",
            });
        }
        self.check_security(errors);
        // Secrets are read the way their endpoint's scheme reads them. The
        // refusal names the reason, never the value.
        if let Err(e) = self.webhooks.stripe_secrets.keys(Scheme::Stripe) {
            errors.push(VarError {
                var: "STRIPE_WEBHOOK_SECRETS",
                value: format!("<redacted: {e}>"),
                expected: "comma-separated Stripe endpoint secrets, each of at least 16 characters, none empty",
            });
        }
        if let Err(e) = self.webhooks.adyen_hmac_keys.adyen_keys() {
            errors.push(VarError {
                var: "ADYEN_HMAC_KEYS",
                value: format!("<redacted: {e}>"),
                expected: "comma-separated hex HMAC keys, each of at least 32 hex digits, none empty",
            });
        }
        // An Adyen HMAC key is per webhook, and a webhook can cover a whole
        // company account: which merchant accounts may move orders is said
        // explicitly, never assumed.
        if !self.webhooks.adyen_hmac_keys.0.trim().is_empty()
            && self.webhooks.adyen_merchant_accounts.is_empty()
        {
            errors.push(VarError {
                var: "ADYEN_MERCHANT_ACCOUNTS",
                value: String::new(),
                expected: "the merchant account codes whose notifications are applied (ADYEN_HMAC_KEYS is set)",
            });
        }
        for (var, scheme, secrets) in [
            (
                "WEBHOOK_ORDERS_SECRETS",
                self.webhooks.orders_scheme,
                &self.webhooks.orders_secrets,
            ),
            (
                "WEBHOOK_CHARGEBACKS_SECRETS",
                self.webhooks.chargebacks_scheme,
                &self.webhooks.chargebacks_secrets,
            ),
        ] {
            if let Err(e) = secrets.keys(scheme) {
                errors.push(VarError {
                    var,
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
            }
        }
    }
}

impl KafkaSettings {
    /// How payhook reaches the brokers, from the `KAFKA_SECURITY_PROTOCOL`,
    /// `KAFKA_SASL_*` and `KAFKA_TLS_*` settings (checked together in
    /// `check_together`).
    pub fn security(&self) -> KafkaSecurity {
        let sasl = self.security_protocol.uses_sasl().then(|| SaslSettings {
            mechanism: self.sasl_mechanism,
            username: self.sasl_username.clone().unwrap_or_default(),
            password: Secret::new(self.sasl_password.clone().unwrap_or_default()),
        });
        KafkaSecurity {
            protocol: self.security_protocol,
            sasl,
            tls_ca_file: self.tls_ca_file.clone(),
            tls_client_auth: self.tls_cert_file.clone().zip(self.tls_key_file.clone()),
        }
    }
}

impl DatabaseSettings {
    /// How payhook reaches Postgres: `DATABASE_SSLMODE`, else the URL's
    /// `sslmode`, else `disable` (the two must agree when both are given).
    pub fn tls(&self) -> DatabaseTls {
        let from_url = url_sslmode(&self.url).and_then(SslMode::parse);
        DatabaseTls {
            mode: self.sslmode.or(from_url).unwrap_or(SslMode::Disable),
            ca_file: self.tls_ca_file.clone(),
        }
    }
}

impl WebhookSettings {
    /// Scheme and keys of the payment endpoint.
    pub fn orders(&self) -> WebhookAuth {
        auth(self.orders_scheme, &self.orders_secrets)
    }

    /// Scheme and keys of the chargeback endpoint.
    pub fn chargebacks(&self) -> WebhookAuth {
        auth(self.chargebacks_scheme, &self.chargebacks_secrets)
    }

    /// The Stripe endpoint's active secrets (none if unreadable: see
    /// [`auth`]).
    pub fn stripe_keys(&self) -> Vec<SigningKey> {
        self.stripe_secrets.keys(Scheme::Stripe).unwrap_or_default()
    }

    /// The Adyen endpoint's active HMAC keys (none if unreadable).
    pub fn adyen_keys(&self) -> Vec<HmacKey> {
        self.adyen_hmac_keys.adyen_keys().unwrap_or_default()
    }
}

impl Config {
    /// The connection settings that only make sense together.
    fn check_security(&self, errors: &mut Vec<VarError>) {
        let mut refuse = |var, value: String, expected| {
            errors.push(VarError {
                var,
                value,
                expected,
            })
        };
        if let Some(v) = url_sslmode(&self.database.url) {
            match SslMode::parse(v) {
                None => refuse(
                    "DATABASE_URL",
                    format!("...sslmode={v}"),
                    "sslmode=disable, require or verify-full (payhook supports these three)",
                ),
                Some(u) if self.database.sslmode.is_some_and(|m| m != u) => refuse(
                    "DATABASE_SSLMODE",
                    self.database.sslmode.map_or("", |m| m.as_str()).to_owned(),
                    "the same mode as sslmode in DATABASE_URL (or drop one of them)",
                ),
                Some(_) => {}
            }
        }
        let protocol = self.kafka.security_protocol;
        if protocol.uses_sasl() {
            if self
                .kafka
                .sasl_username
                .as_deref()
                .is_none_or(str::is_empty)
            {
                refuse(
                    "KAFKA_SASL_USERNAME",
                    String::new(),
                    "a user name (KAFKA_SECURITY_PROTOCOL is sasl_*)",
                );
            }
            if self
                .kafka
                .sasl_password
                .as_deref()
                .is_none_or(str::is_empty)
            {
                refuse(
                    "KAFKA_SASL_PASSWORD",
                    String::new(),
                    "a password (KAFKA_SECURITY_PROTOCOL is sasl_*)",
                );
            }
        }
        match (&self.kafka.tls_cert_file, &self.kafka.tls_key_file) {
            (Some(_), None) => refuse(
                "KAFKA_TLS_KEY_FILE",
                String::new(),
                "a private key file to go with KAFKA_TLS_CERT_FILE",
            ),
            (None, Some(_)) => refuse(
                "KAFKA_TLS_CERT_FILE",
                String::new(),
                "a certificate file to go with KAFKA_TLS_KEY_FILE",
            ),
            _ => {}
        }
        let tls_files = self.kafka.tls_ca_file.is_some()
            || self.kafka.tls_cert_file.is_some()
            || self.kafka.tls_key_file.is_some();
        if !protocol.uses_tls() && tls_files {
            refuse(
                "KAFKA_SECURITY_PROTOCOL",
                protocol.as_str().to_owned(),
                "ssl or sasl_ssl when KAFKA_TLS_* files are set",
            );
        }
        // A dead letter is published inside its fenced transaction: a
        // session ended for idling meanwhile would roll back every dead
        // letter of a slow broker, and the record would stall.
        if self.database.idle_in_transaction_timeout <= self.kafka.publish_timeout {
            refuse(
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
                humantime::format_duration(self.database.idle_in_transaction_timeout).to_string(),
                "a duration longer than KAFKA_PUBLISH_TIMEOUT (a dead letter is published inside a transaction)",
            );
        }
        if let (Some(rf), Some(min)) = (
            self.kafka.replication_factor,
            self.kafka.min_insync_replicas,
        ) {
            if min > rf {
                refuse(
                    "KAFKA_MIN_INSYNC_REPLICAS",
                    min.to_string(),
                    "at most KAFKA_REPLICATION_FACTOR",
                );
            }
        }
    }
}

/// Validated with the rest of the configuration; a list changed since then
/// and no longer readable counts as no secret, so verification refuses to
/// start rather than accept anything.
fn auth(scheme: Scheme, secrets: &Secrets) -> WebhookAuth {
    WebhookAuth {
        scheme,
        secrets: secrets.keys(scheme).unwrap_or_default(),
    }
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<VarError>,
}

impl Reader<'_> {
    fn read<T>(
        &mut self,
        var: &'static str,
        file_var: Option<&'static str>,
        default: &str,
        secrecy: Secrecy,
        check: Check<impl Fn(&str) -> Option<T>>,
    ) -> T {
        let raw = files::given(self.get, var, file_var).unwrap_or_else(|e| {
            // Reported; the default stands in so the other checks run.
            self.errors.push(e);
            None
        });
        let value = raw.as_deref().map(str::trim).unwrap_or(default);
        match (check.parse)(value) {
            Some(v) => v,
            None => {
                self.errors.push(VarError {
                    var,
                    value: secrecy.show(value),
                    expected: check.expected,
                });
                // Fall back to the default so the remaining checks can run;
                // the error is reported and start-up stops. A test reads the
                // whole table with no variable set.
                (check.parse)(default).expect("every default passes its check")
            }
        }
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
    fn a_transaction_may_idle_longer_than_a_dead_letter_publish() {
        let e = cfg(&[
            ("KAFKA_PUBLISH_TIMEOUT", "10s"),
            ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "10s"),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].var, "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT");
        assert!(e.0[0].expected.contains("KAFKA_PUBLISH_TIMEOUT"), "{e}");
        assert!(
            cfg(&[
                ("KAFKA_PUBLISH_TIMEOUT", "2s"),
                ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "3s")
            ])
            .is_ok()
        );
    }

    #[test]
    fn defaults_are_for_local_use() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.database.url, "postgres://postgres@127.0.0.1:5432/payhook");
        assert_eq!(c.kafka.brokers, vec!["127.0.0.1:9092".to_string()]);
        assert_eq!(c.kafka.orders_topic, "payments.orders");
        assert_eq!(c.kafka.disputes_topic, "payments.disputes");
        assert_eq!(c.kafka.publish_timeout, Duration::from_secs(5));
        assert_eq!(c.kafka.linger, Duration::ZERO);
        assert!(c.database.run_migrations);
    }

    #[test]
    fn occurred_at_max_future_defaults_to_a_day_and_is_bounded() {
        assert_eq!(
            cfg(&[]).unwrap().http.occurred_at_max_future,
            Duration::from_secs(86_400)
        );
        let c = cfg(&[("OCCURRED_AT_MAX_FUTURE", "2h")]).unwrap();
        assert_eq!(c.http.occurred_at_max_future, Duration::from_secs(7200));
        for bad in ["0s", "30s", "400d", "soon"] {
            let e = cfg(&[("OCCURRED_AT_MAX_FUTURE", bad)]).unwrap_err();
            assert_eq!(e.0[0].var, "OCCURRED_AT_MAX_FUTURE", "{bad}");
        }
    }

    #[test]
    fn payload_retention_is_off_by_default_and_at_least_a_minute() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.database.payload_retention, None);
        assert_eq!(
            c.database.payload_retention_interval,
            Duration::from_secs(3600)
        );
        let c = cfg(&[
            ("PAYLOAD_RETENTION", "90days"),
            ("PAYLOAD_RETENTION_INTERVAL", "5m"),
        ])
        .unwrap();
        assert_eq!(
            c.database.payload_retention,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(
            c.database.payload_retention_interval,
            Duration::from_secs(300)
        );
        assert_eq!(
            cfg(&[("PAYLOAD_RETENTION", "OFF")])
                .unwrap()
                .database
                .payload_retention,
            None
        );
        for bad in ["30s", "0s", "forever", "soon"] {
            let e = cfg(&[("PAYLOAD_RETENTION", bad)]).unwrap_err();
            assert_eq!(e.0[0].var, "PAYLOAD_RETENTION", "{bad}");
        }
    }

    #[test]
    fn admin_addr_is_optional() {
        assert_eq!(cfg(&[]).unwrap().http.admin_addr, None);
        let c = cfg(&[("ADMIN_ADDR", "127.0.0.1:9090")]).unwrap();
        assert_eq!(c.http.admin_addr, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            cfg(&[("ADMIN_ADDR", "nowhere")]).unwrap_err().0[0].var,
            "ADMIN_ADDR"
        );
    }

    #[test]
    fn durations_are_humantime() {
        let c = cfg(&[
            ("KAFKA_PUBLISH_TIMEOUT", "250ms"),
            ("SHUTDOWN_TIMEOUT", "1m"),
        ])
        .unwrap();
        assert_eq!(c.kafka.publish_timeout, Duration::from_millis(250));
        assert_eq!(c.process.shutdown_timeout, Duration::from_secs(60));
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
        assert_eq!(c.http.request_timeout, Duration::from_secs(30));
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.max_connections, 1024);
        let c = cfg(&[
            ("HTTP_REQUEST_TIMEOUT", "2s"),
            ("HTTP_MAX_CONNECTIONS", "8"),
        ])
        .unwrap();
        assert_eq!(c.http.request_timeout, Duration::from_secs(2));
        assert_eq!(c.http.max_connections, 8);
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
        assert!(c.webhooks.verify);
        assert_eq!(c.webhooks.tolerance, Duration::from_secs(300));
        assert_eq!(c.webhooks.orders().scheme, Scheme::Standard);
        assert_eq!(c.webhooks.chargebacks().scheme, Scheme::Standard);
        assert!(c.webhooks.orders().secrets.is_empty());
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
        assert!(!c.webhooks.verify);
        assert_eq!(c.webhooks.tolerance, Duration::from_secs(90));
        assert_eq!(c.webhooks.orders().secrets.len(), 2);
        assert_eq!(c.webhooks.chargebacks().scheme, Scheme::Stripe);
        assert_eq!(c.webhooks.chargebacks().secrets.len(), 1);
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
    fn passwords_are_masked_wherever_they_sit() {
        assert_eq!(
            mask_password("postgres://app:pw@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(mask_password("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            mask_password("postgres://db/x?user=a&password=pw"),
            "postgres://db/<redacted>"
        );
        assert_eq!(
            mask_password("host=db password=pw"),
            "<redacted: not a URL>"
        );
    }

    #[test]
    fn debug_output_keeps_secrets_out() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://app:hunter2pw@db:5432/payhook"),
            (
                "WEBHOOK_ORDERS_SECRETS",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2pw"), "{shown}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db:5432/payhook"),
            "{shown}"
        );
        assert!(
            shown.contains("HttpSettings { addr: 127.0.0.1:8080"),
            "{shown}"
        );
    }

    #[test]
    fn optional_checks_take_empty_as_unset() {
        let c = check::optional(check::whole(1..=9, "a digit"));
        assert_eq!((c.parse)(""), Some(None));
        assert_eq!((c.parse)("7"), Some(Some(7)));
        assert_eq!((c.parse)("70"), None);
        assert_eq!(c.expected, "a digit");
    }

    #[test]
    fn every_setting_is_declared_once_with_a_help_line_and_an_expected_form() {
        let mut seen = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(seen.insert(s.env), "{} declared twice", s.env);
            assert!(!s.help.is_empty() && !s.help.contains('\n'), "{}", s.env);
            assert!(!s.expected().is_empty(), "{}", s.env);
        }
    }

    #[test]
    fn brokers_list_is_split_and_trimmed() {
        let c = cfg(&[("KAFKA_BROKERS", "a:9092, b:9093 ,")]).unwrap();
        assert_eq!(c.kafka.brokers, ["a:9092", "b:9093"]);
    }

    #[test]
    fn provider_settings_have_defaults_and_secrets_are_never_echoed() {
        let c = cfg(&[]).unwrap();
        assert!(c.webhooks.stripe_keys().is_empty() && c.webhooks.adyen_keys().is_empty());
        assert_eq!(
            (
                c.webhooks.stripe_order_id_key.as_str(),
                c.webhooks.stripe_user_id_key.as_str()
            ),
            ("order_id", "user_id")
        );
        assert_eq!(c.webhooks.adyen_user_id_key, "shopperReference");
        // Live events only, platform events only, by default.
        assert!(c.webhooks.stripe_livemode);
        assert!(c.webhooks.stripe_accounts.is_empty());
        assert_eq!(
            c.consumer.dispute_payment_wait,
            Duration::from_secs(96 * 3600)
        );
        assert_eq!(c.consumer.dispute_sweep_interval, Duration::from_secs(60));
        let c = cfg(&[
            (
                "STRIPE_WEBHOOK_SECRETS",
                "whsec_stripe_test_secret_0123456789,whsec_stripe_rotated_secret_abcdef",
            ),
            (
                "ADYEN_HMAC_KEYS",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
            ),
            ("ADYEN_MERCHANT_ACCOUNTS", "ShopEU, ShopUS"),
            ("STRIPE_ORDER_ID_KEY", "payhook_order"),
            ("STRIPE_LIVEMODE", "test"),
            ("STRIPE_ACCOUNTS", "acct_1Nv0FGQ9RKHgCVdK"),
            ("DISPUTE_PAYMENT_WAIT", "2s"),
        ])
        .unwrap();
        assert_eq!(c.webhooks.adyen_merchant_accounts, ["ShopEU", "ShopUS"]);
        assert!(!c.webhooks.stripe_livemode);
        assert_eq!(c.webhooks.stripe_accounts, ["acct_1Nv0FGQ9RKHgCVdK"]);
        assert_eq!(c.webhooks.stripe_keys().len(), 2);
        assert_eq!(c.webhooks.adyen_keys().len(), 1);
        assert_eq!(c.webhooks.stripe_order_id_key, "payhook_order");
        assert_eq!(c.consumer.dispute_payment_wait, Duration::from_secs(2));
        let err = cfg(&[
            ("STRIPE_WEBHOOK_SECRETS", "short_secret_x"),
            (
                "ADYEN_HMAC_KEYS",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9ZZ",
            ),
            ("STRIPE_USER_ID_KEY", "has space"),
            ("STRIPE_LIVEMODE", "true"),
            ("STRIPE_ACCOUNTS", "acct_1,,acct_2"),
            ("DISPUTE_PAYMENT_WAIT", "0s"),
        ])
        .unwrap_err();
        let mut vars: Vec<&str> = err.0.iter().map(|e| e.var).collect();
        vars.sort_unstable();
        assert_eq!(
            vars,
            [
                "ADYEN_HMAC_KEYS",
                "ADYEN_MERCHANT_ACCOUNTS",
                "DISPUTE_PAYMENT_WAIT",
                "STRIPE_ACCOUNTS",
                "STRIPE_LIVEMODE",
                "STRIPE_USER_ID_KEY",
                "STRIPE_WEBHOOK_SECRETS",
            ]
        );
        let text = err.to_string();
        assert!(
            !text.contains("short_secret_x") && !text.contains("44782"),
            "{text}"
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("stripe_test") && !shown.contains("44782"),
            "{shown}"
        );
    }
}
