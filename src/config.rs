//! Configuration: read from the environment once, validated once.
//!
//! Every setting has a default that works on a developer machine with
//! `./scripts/services up`. A value that cannot be parsed stops start-up with
//! a message naming the variable and the form it expects; all problems are
//! reported together so one edit fixes them all.

use std::{collections::HashMap, fmt, net::SocketAddr, num::NonZeroU32, time::Duration};

use crate::providers::{
    adyen::HmacKey,
    signature::{Scheme, SigningKey},
};

/// Everything payhook reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// A separate listener for `/metrics`, `/status` and the probes
    /// (`ADMIN_ADDR`); `None` serves them with the webhooks.
    pub admin_addr: Option<SocketAddr>,
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

    /// How far after its acceptance a webhook's `occurred_at` may be
    /// (`OCCURRED_AT_MAX_FUTURE`); later ones are refused with a 400, and the
    /// consumer dead-letters a record whose payload breaks it.
    pub occurred_at_max_future: Duration,

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

    /// Active Stripe endpoint secrets, comma-separated
    /// (`STRIPE_WEBHOOK_SECRETS`). Empty: `/webhooks/stripe` answers 404
    /// (unless `WEBHOOK_VERIFY=off`).
    pub stripe_secrets: Vec<SigningKey>,
    /// The Stripe `metadata` key holding the order id
    /// (`STRIPE_ORDER_ID_KEY`).
    pub stripe_order_id_key: String,
    /// The Stripe `metadata` key holding the user id (`STRIPE_USER_ID_KEY`).
    pub stripe_user_id_key: String,
    /// Active Adyen HMAC keys, hex, comma-separated (`ADYEN_HMAC_KEYS`).
    /// Empty: `/webhooks/adyen` answers 404 (unless `WEBHOOK_VERIFY=off`).
    pub adyen_hmac_keys: Vec<HmacKey>,
    /// The Adyen `additionalData` key holding the user id
    /// (`ADYEN_USER_ID_KEY`).
    pub adyen_user_id_key: String,
    /// How long a dispute waits for the payment it names before it is
    /// dead-lettered (`DISPUTE_PAYMENT_WAIT`).
    pub dispute_payment_wait: Duration,
    /// How often waiting disputes are checked for that
    /// (`DISPUTE_SWEEP_INTERVAL`).
    pub dispute_sweep_interval: Duration,

    /// Postgres connection string (`DATABASE_URL`).
    pub database_url: String,
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
    /// Replication factor for `payhook topics` (`KAFKA_REPLICATION_FACTOR`).
    pub replication_factor: i16,
    /// How long a webhook may wait for the broker's acknowledgement before it
    /// is answered 503 (`KAFKA_PUBLISH_TIMEOUT`).
    pub publish_timeout: Duration,
    /// How long the producer waits for more records before sending a batch
    /// (`KAFKA_LINGER`).
    pub linger: Duration,
    /// Records that may wait per partition for the producer
    /// (`KAFKA_PRODUCER_QUEUE`); beyond it requests wait, then get a 503.
    pub producer_queue: usize,
    /// How often the producer looks for partitions added to its topics
    /// (`KAFKA_METADATA_REFRESH`); consumers look on every lease renewal.
    pub kafka_metadata_refresh: Duration,
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
    /// How long a partition with lag may go without moving before it is
    /// reported stalled (`CONSUMER_STALL_AFTER`).
    pub consumer_stall_after: Duration,
    /// How long a partition lease lasts without renewal
    /// (`CONSUMER_LEASE_TTL`): a process that dies or hangs loses its
    /// partitions after this long. Leases are renewed every quarter of it.
    pub consumer_lease_ttl: Duration,
    /// First pause after a failure (`RETRY_BACKOFF_MIN`).
    pub retry_backoff_min: Duration,
    /// Longest pause between retries (`RETRY_BACKOFF_MAX`).
    pub retry_backoff_max: Duration,

    /// How long a graceful shutdown may take (`SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
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
            admin_addr: r.parse_with(
                "ADMIN_ADDR",
                "",
                "an address like 127.0.0.1:9090, or empty for none",
                |s| {
                    if s.is_empty() {
                        Some(None)
                    } else {
                        s.parse().ok().map(Some)
                    }
                },
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
            occurred_at_max_future: r.parse_with(
                "OCCURRED_AT_MAX_FUTURE",
                "1d",
                "a duration between 1m and 365d, like 1d",
                |s| {
                    humantime::parse_duration(s).ok().filter(|d| {
                        (Duration::from_secs(60)..=Duration::from_secs(365 * 86_400)).contains(d)
                    })
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
            stripe_secrets: r.secrets(
                "STRIPE_WEBHOOK_SECRETS",
                "comma-separated Stripe endpoint secrets, each of at least 16 characters, none empty",
                |s| SigningKey::parse_list(Scheme::Stripe, s).map_err(|e| e.to_string()),
            ),
            stripe_order_id_key: r.key_name("STRIPE_ORDER_ID_KEY", "order_id"),
            stripe_user_id_key: r.key_name("STRIPE_USER_ID_KEY", "user_id"),
            adyen_hmac_keys: r.secrets(
                "ADYEN_HMAC_KEYS",
                "comma-separated hex HMAC keys, each of at least 32 hex digits, none empty",
                |s| HmacKey::parse_list(s).map_err(|e| e.to_string()),
            ),
            adyen_user_id_key: r.key_name("ADYEN_USER_ID_KEY", "shopperReference"),
            dispute_payment_wait: r.duration("DISPUTE_PAYMENT_WAIT", "96h"),
            dispute_sweep_interval: r.duration("DISPUTE_SWEEP_INTERVAL", "1m"),
            database_url: r.parse_with(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/payhook",
                "a postgres:// URL",
                |s| {
                    let ok = (s.starts_with("postgres://") || s.starts_with("postgresql://"))
                        && s.parse::<tokio_postgres::Config>().is_ok();
                    ok.then(|| s.to_owned())
                },
            ),
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
                "1",
                "a whole number between 1 and 32",
                |s| s.parse::<i16>().ok().filter(|n| (1..=32).contains(n)),
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
            kafka_metadata_refresh: r.duration("KAFKA_METADATA_REFRESH", "30s"),
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
            consumer_stall_after: r.duration("CONSUMER_STALL_AFTER", "1m"),
            consumer_lease_ttl: r.duration("CONSUMER_LEASE_TTL", "10s"),
            retry_backoff_min: r.duration("RETRY_BACKOFF_MIN", "100ms"),
            retry_backoff_max: r.duration("RETRY_BACKOFF_MAX", "30s"),
            shutdown_timeout: r.duration("SHUTDOWN_TIMEOUT", "30s"),
        };
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

    /// A list of secrets; a refused one is reported without its value.
    fn secrets<T>(
        &mut self,
        var: &'static str,
        expected: &'static str,
        parse: impl Fn(&str) -> Result<Vec<T>, String>,
    ) -> Vec<T> {
        let raw = (self.get)(var).unwrap_or_default();
        parse(&raw).unwrap_or_else(|why| {
            self.errors.push(VarError {
                var,
                value: format!("<redacted: {why}>"),
                expected,
            });
            Vec::new()
        })
    }

    /// A key in a provider's metadata: 1 to 40 visible ASCII characters.
    fn key_name(&mut self, var: &'static str, default: &str) -> String {
        self.parse_with(
            var,
            default,
            "1 to 40 visible ASCII characters, like order_id",
            |s| {
                (!s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_graphic()))
                    .then(|| s.to_owned())
            },
        )
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
        assert_eq!(c.database_url, "postgres://postgres@127.0.0.1:5432/payhook");
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
    fn occurred_at_max_future_defaults_to_a_day_and_is_bounded() {
        assert_eq!(
            cfg(&[]).unwrap().occurred_at_max_future,
            Duration::from_secs(86_400)
        );
        let c = cfg(&[("OCCURRED_AT_MAX_FUTURE", "2h")]).unwrap();
        assert_eq!(c.occurred_at_max_future, Duration::from_secs(7200));
        for bad in ["0s", "30s", "400d", "soon"] {
            let e = cfg(&[("OCCURRED_AT_MAX_FUTURE", bad)]).unwrap_err();
            assert_eq!(e.0[0].var, "OCCURRED_AT_MAX_FUTURE", "{bad}");
        }
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
    fn provider_settings_have_defaults_and_secrets_are_never_echoed() {
        let c = cfg(&[]).unwrap();
        assert!(c.stripe_secrets.is_empty() && c.adyen_hmac_keys.is_empty());
        assert_eq!(
            (
                c.stripe_order_id_key.as_str(),
                c.stripe_user_id_key.as_str()
            ),
            ("order_id", "user_id")
        );
        assert_eq!(c.adyen_user_id_key, "shopperReference");
        assert_eq!(c.dispute_payment_wait, Duration::from_secs(96 * 3600));
        assert_eq!(c.dispute_sweep_interval, Duration::from_secs(60));
        let c = cfg(&[
            (
                "STRIPE_WEBHOOK_SECRETS",
                "whsec_stripe_test_secret_0123456789,whsec_stripe_rotated_secret_abcdef",
            ),
            (
                "ADYEN_HMAC_KEYS",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056",
            ),
            ("STRIPE_ORDER_ID_KEY", "payhook_order"),
            ("DISPUTE_PAYMENT_WAIT", "2s"),
        ])
        .unwrap();
        assert_eq!(c.stripe_secrets.len(), 2);
        assert_eq!(c.adyen_hmac_keys.len(), 1);
        assert_eq!(c.stripe_order_id_key, "payhook_order");
        assert_eq!(c.dispute_payment_wait, Duration::from_secs(2));
        let err = cfg(&[
            ("STRIPE_WEBHOOK_SECRETS", "short_secret_x"),
            (
                "ADYEN_HMAC_KEYS",
                "44782DEF547AAA06C910C43932B1EB0C71FC68D9ZZ",
            ),
            ("STRIPE_USER_ID_KEY", "has space"),
            ("DISPUTE_PAYMENT_WAIT", "0s"),
        ])
        .unwrap_err();
        let vars: Vec<&str> = err.0.iter().map(|e| e.var).collect();
        assert_eq!(
            vars,
            [
                "STRIPE_WEBHOOK_SECRETS",
                "STRIPE_USER_ID_KEY",
                "ADYEN_HMAC_KEYS",
                "DISPUTE_PAYMENT_WAIT"
            ]
        );
        let text = err.to_string();
        assert!(
            !text.contains("short_secret_x") && !text.contains("44782"),
            "{text}"
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
    fn brokers_list_is_split_and_trimmed() {
        let c = cfg(&[("KAFKA_BROKERS", "a:9092, b:9093 ,")]).unwrap();
        assert_eq!(c.kafka_brokers, ["a:9092", "b:9093"]);
    }
}
