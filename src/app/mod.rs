//! Wiring: build the pieces from a [`Config`], run them, stop them in order.
//!
//! `serve` = HTTP server + producer + one consumer per topic + the sweep of
//! disputes waiting for their payment + (with `PAYLOAD_RETENTION`) the job
//! that clears old provider payloads ([`retention`]). Shutdown order:
//! stop accepting and let in-flight requests finish (they get their true
//! answer), then let the producer send and answer what it has queued, then
//! let each partition consumer finish its current transaction.

pub mod readiness;
pub mod retention;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{Config, WebhookAuth},
    consume::{
        committer::Committers, config::ConsumerConfig, fleet, health::ConsumerHealth,
        sink::DeadLetters,
    },
    db::{self, DbError},
    http::{self, AppState, Endpoint},
    kafka::{
        Kafka, KafkaError,
        producer::{Producer, ProducerConfig, ProducerTasks},
        topics,
    },
    metrics::Metrics,
    providers::{Endpoints, Intake, intake, signature::Verifier},
};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka topics: {0}")]
    Topics(#[from] topics::Refused),
    #[error(
        "the database's encoding is {encoding}, not UTF8: Postgres would refuse webhooks \
         whose text that encoding cannot hold. Create the database with ENCODING 'UTF8'"
    )]
    DatabaseEncoding { encoding: String },
    #[error(
        "no webhook endpoint is on: an endpoint takes webhooks once its secrets are set \
         (WEBHOOK_ORDERS_SECRETS, WEBHOOK_CHARGEBACKS_SECRETS, STRIPE_WEBHOOK_SECRETS, \
         ADYEN_HMAC_KEYS); WEBHOOK_VERIFY=off takes unsigned webhooks on the others, for \
         local use only"
    )]
    NoEndpoint,
    #[error(
        "WEBHOOK_VERIFY=off makes {endpoints} take unsigned webhooks, and HTTP_ADDR {addr} is \
         not a loopback address: anyone who can reach it could post payment events. Set \
         those endpoints' secrets, listen on 127.0.0.1, or confirm this deliberately with \
         WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER=true"
    )]
    UnsignedOnPublicListener { addr: SocketAddr, endpoints: String },
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every step of the shutdown finished.
    Cleanly,
    /// `SHUTDOWN_TIMEOUT` ran out first. Nothing acknowledged is lost (the
    /// offsets of unfinished work were not stored), but work was cut short.
    TimedOut,
}

/// A built, not yet running, service.
#[derive(Debug)]
pub struct Application {
    cfg: Config,
    listener: TcpListener,
    state: Arc<AppState>,
    kafka: Kafka,
    pool: Pool,
    /// For dead letters (the HTTP side holds its own handle).
    producer: Producer,
    producer_tasks: ProducerTasks,
    health: ConsumerHealth,
    /// This process in the consumer fleet (`consumer_members`).
    member: uuid::Uuid,
    /// `ADMIN_ADDR`, when set.
    admin_listener: Option<TcpListener>,
    /// The dead-letter topic's `max.message.bytes`, as read at start-up.
    dead_letter_max_bytes: usize,
}

impl Application {
    /// Checks that every endpoint can verify signatures (unless
    /// `WEBHOOK_VERIFY=off`), binds the listener, connects to Postgres and
    /// Kafka, applies migrations (unless disabled) and starts the producer.
    pub async fn build(cfg: Config) -> Result<Self, StartError> {
        // Decided first, before anything connects: an endpoint that cannot
        // verify must never serve unless unsigned intake was chosen.
        let intakes = intakes(&cfg)?;
        for w in exposure_warnings(&cfg) {
            warn!("{w}");
        }
        let pool = db::pool_from_config(&cfg.database, cfg.database.pool_size)?;
        // Everything the edge accepts must be storable, which it only is in
        // a UTF8 database.
        let encoding = db::server_encoding(&pool).await?;
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(StartError::DatabaseEncoding { encoding });
        }
        if cfg.database.run_migrations {
            let applied = db::migrations::run(&pool).await?;
            if !applied.is_empty() {
                info!(?applied, "migrations applied");
            }
        } else {
            db::ping(&pool).await?;
        }
        let kafka = Kafka::from_config(&cfg.kafka).await?;
        let metrics = Metrics::new();
        for (endpoint, unsigned) in intakes.on() {
            metrics.endpoint_unsigned(endpoint, unsigned);
        }
        // Durability, retention, compression and size limits of the three
        // topics: warnings are logged; a webhook size the broker would
        // refuse stops start-up.
        let checked = topics::check_at_startup(&cfg.kafka, cfg.http.max_body_bytes).await?;
        let dead_letter_max_bytes = checked
            .dlq_max_message_bytes
            .unwrap_or(crate::consume::dlq::DEFAULT_MAX_MESSAGE_BYTES);
        let (producer, producer_tasks) = Producer::start(
            &kafka,
            &[
                &cfg.kafka.orders_topic,
                &cfg.kafka.disputes_topic,
                &cfg.kafka.dlq_topic,
            ],
            ProducerConfig::from_config(&cfg.kafka).with_metrics(&metrics),
        )
        .await?;
        let listener =
            TcpListener::bind(cfg.http.addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: cfg.http.addr,
                    source,
                })?;
        let admin_listener = match cfg.http.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let member = uuid::Uuid::new_v4();
        let health = ConsumerHealth::new(cfg.consumer.stall_after, metrics.clone());
        let state = Arc::new(AppState {
            publisher: Arc::new(producer.clone()),
            readiness: Arc::new(readiness::ServiceProbe {
                kafka: kafka.clone(),
                pool: pool.clone(),
                topic: cfg.kafka.orders_topic.clone(),
                health: health.clone(),
                member,
            }),
            orders: Endpoint {
                topic: cfg.kafka.orders_topic.clone(),
                intake: intakes.orders.clone(),
            },
            chargebacks: Endpoint {
                topic: cfg.kafka.disputes_topic.clone(),
                intake: intakes.chargebacks.clone(),
            },
            max_body_bytes: cfg.http.max_body_bytes,
            request_timeout: cfg.http.request_timeout,
            retry_after: cfg.http.retry_after,
            occurred_at_max_future: cfg.http.occurred_at_max_future,
            metrics,
            ops_on_public: admin_listener.is_none(),
            signer: crate::kafka::signing::Signer::from_config(&cfg.kafka),
            providers: intakes.providers.clone(),
        });
        Ok(Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer,
            producer_tasks,
            health,
            member,
            admin_listener,
            dead_letter_max_bytes,
        })
    }

    /// This process's member id in the consumer fleet.
    pub fn member_id(&self) -> uuid::Uuid {
        self.member
    }

    /// The admin listener's address, when `ADMIN_ADDR` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (port 0 becomes a real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `shutdown` is cancelled, then stops in order within
    /// `SHUTDOWN_TIMEOUT`. Returns whether everything stopped in time.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Stopped {
        let Self {
            cfg,
            listener,
            state,
            kafka,
            pool,
            producer,
            producer_tasks,
            health,
            member,
            admin_listener,
            dead_letter_max_bytes,
        } = self;
        let metrics = state.metrics.clone();
        let consumers = CancellationToken::new();
        let mut consumer_tasks = tokio::task::JoinSet::new();
        // The consumer maps providers' payloads again, as the edge does.
        let remap: Arc<dyn crate::kafka::envelope::Remap> =
            Arc::new(crate::providers::Mappers::from_config(&cfg.webhooks));
        let consumer_configs = [
            (&cfg.kafka.orders_consumer_group, &cfg.kafka.orders_topic),
            (
                &cfg.kafka.disputes_consumer_group,
                &cfg.kafka.disputes_topic,
            ),
        ]
        .map(|(group, topic)| {
            ConsumerConfig::new(
                group,
                topic,
                &cfg.consumer,
                &cfg.kafka,
                &cfg.database,
                cfg.http.occurred_at_max_future,
            )
            .with_remap(remap.clone())
        })
        .to_vec();
        let shared = fleet::Context {
            member,
            kafka: kafka.clone(),
            pool: pool.clone(),
            dead_letters: DeadLetters {
                producer: producer.clone(),
                topic: cfg.kafka.dlq_topic.clone(),
                max_bytes: dead_letter_max_bytes,
            },
            metrics: metrics.clone(),
            health: health.clone(),
            committers: if cfg.consumer.enabled {
                Committers::start(&pool, member, &metrics, &consumer_configs)
            } else {
                Committers::none()
            },
        };
        if cfg.consumer.enabled {
            consumer_tasks.spawn(fleet::run(
                shared,
                consumer_configs,
                member_name(),
                cfg.consumer.lease_ttl,
                consumers.clone(),
            ));
            // Disputes whose payment never arrived are dead-lettered.
            consumer_tasks.spawn(
                crate::consume::waiting::Sweeper {
                    pool: pool.clone(),
                    publisher: Arc::new(producer.clone()),
                    dlq_topic: cfg.kafka.dlq_topic.clone(),
                    wait: cfg.consumer.dispute_payment_wait,
                    interval: cfg.consumer.dispute_sweep_interval,
                    // Longer than one publish may take, with room.
                    claim_for: cfg.kafka.publish_timeout * 2 + Duration::from_secs(5),
                    db_deadline: db::Session::from_config(&cfg.database).client_deadline(),
                    dead_letter_max_bytes,
                    events: crate::consume::events::WaitingEvents::new(&metrics),
                    signer: state.signer.clone(),
                }
                .run(consumers.clone()),
            );
            // Provider payloads past PAYLOAD_RETENTION are cleared.
            if let Some(older_than) = cfg.database.payload_retention {
                consumer_tasks.spawn(
                    retention::PayloadRetention {
                        pool: pool.clone(),
                        older_than,
                        interval: cfg.database.payload_retention_interval,
                        db_deadline: db::Session::from_config(&cfg.database).client_deadline(),
                        metrics: metrics.clone(),
                    }
                    .run(consumers.clone()),
                );
            }
        } else {
            // An ingest-only replica: it takes no leases, so the fleet's
            // consumers never count it as a member.
            drop((shared, consumer_configs));
            info!(
                "consumers disabled (CONSUMER_ENABLED=false): this process only accepts webhooks"
            );
        }
        // The partition gauges follow the consumers' health every second.
        consumer_tasks.spawn({
            let (health, stop) = (health.clone(), consumers.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
                    health.refresh_metrics();
                }
            }
        });
        // The consumers hold their own handles; this one must go, or the
        // producer would never drain at shutdown.
        drop(producer);
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "payhook serving");

        let grace = cfg.process.shutdown_timeout;
        let stop = async {
            // In-flight requests finish and get their true answer.
            let limits = http::Limits {
                header_timeout: cfg.http.header_timeout,
                max_connections: cfg.http.max_connections,
            };
            let admin = admin_listener.map(|l| {
                tokio::spawn(http::serve(
                    l,
                    Arc::clone(&state),
                    limits,
                    shutdown.clone(),
                    grace,
                    http::Surface::Admin,
                ))
            });
            http::serve(
                listener,
                state,
                limits,
                shutdown.clone(),
                grace,
                http::Surface::Public,
            )
            .await;
            if let Some(admin) = admin {
                let _ = admin.await;
            }
            // Each partition finishes its current transaction (or dead
            // letter) and stops.
            consumers.cancel();
            while consumer_tasks.join_next().await.is_some() {}
            info!("consumers stopped");
            // Every handler and consumer is gone, and with them every
            // producer handle: the lanes send what is queued, answer it, end.
            producer_tasks.drained().await;
            info!("producer drained");
        };
        // `serve` only returns after `shutdown`, so the deadline is counted
        // from the moment shutdown begins.
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = stop => {
                info!("payhook stopped");
                Stopped::Cleanly
            }
            _ = deadline => {
                warn!("shutdown took longer than {}; exiting", humantime::format_duration(grace));
                Stopped::TimedOut
            }
        }
    }
}

/// How this process is named in `payhook status`: host and pid.
fn member_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "payhook".into());
    format!("{host}:{}", std::process::id())
}

/// Every webhook endpoint, as [`crate::providers::intake`] decides: with
/// secrets it verifies, without them it is off unless `WEBHOOK_VERIFY=off`
/// chose unsigned intake.
#[derive(Debug)]
struct Intakes {
    orders: Option<Intake<Verifier>>,
    chargebacks: Option<Intake<Verifier>>,
    providers: Endpoints,
}

impl Intakes {
    /// `(endpoint, unsigned)` of every endpoint that is on.
    fn on(&self) -> Vec<(&'static str, bool)> {
        let p = &self.providers;
        [
            ("orders", self.orders.as_ref().map(Intake::is_unsigned)),
            (
                "chargebacks",
                self.chargebacks.as_ref().map(Intake::is_unsigned),
            ),
            ("stripe", p.stripe.as_ref().map(|s| s.intake.is_unsigned())),
            ("adyen", p.adyen.as_ref().map(|a| a.intake.is_unsigned())),
        ]
        .into_iter()
        .filter_map(|(name, unsigned)| unsigned.map(|u| (name, u)))
        .collect()
    }
}

/// Decides every endpoint's intake, and refuses to start when none is on,
/// or when unsigned intake would face more than loopback without
/// `WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER=true`. Unsigned endpoints are said
/// loudly in the log.
fn intakes(cfg: &Config) -> Result<Intakes, StartError> {
    let webhooks = &cfg.webhooks;
    let unsigned = !webhooks.verify;
    let generic = |auth: &WebhookAuth| {
        intake(
            Verifier::new(auth.scheme, auth.secrets.clone(), webhooks.tolerance),
            unsigned,
        )
    };
    let all = Intakes {
        orders: generic(&webhooks.orders()),
        chargebacks: generic(&webhooks.chargebacks()),
        providers: Endpoints::from_config(webhooks),
    };
    let on = all.on();
    if on.is_empty() {
        return Err(StartError::NoEndpoint);
    }
    let open: Vec<&str> = on.iter().filter(|(_, u)| *u).map(|(n, _)| *n).collect();
    if !open.is_empty() {
        let addr = cfg.http.addr;
        if !addr.ip().is_loopback() && !webhooks.unsigned_on_public_listener {
            return Err(StartError::UnsignedOnPublicListener {
                addr,
                endpoints: open.join(", "),
            });
        }
        warn!(
            endpoints = %open.join(", "),
            "WEBHOOK_VERIFY=off: these endpoints have no secrets and take UNSIGNED webhooks; \
             anyone who can reach this port can post forged payment events to them. For local \
             use only, never in production"
        );
    }
    Ok(all)
}

/// What this configuration leaves open that an operator should know of:
/// the operators' endpoints on a public listener, and topics whose writers
/// the consumer takes on trust.
fn exposure_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let addr = cfg.http.addr;
    if cfg.http.admin_addr.is_none() && !addr.ip().is_loopback() {
        out.push(format!(
            "HTTP_ADDR {addr} is not loopback and ADMIN_ADDR is unset: /metrics, /status and \
             /readyz's detail (broker errors, stalled partitions) are served to whoever can \
             reach the webhooks; set ADMIN_ADDR to give them a listener of their own"
        ));
    }
    if cfg.kafka.signing_keys.is_empty() {
        out.push(
            "ENVELOPE_SIGNING_KEYS is unset: the consumer applies whatever anyone with write \
             access to the topics writes there (docs/threat-model.md)"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn an_open_listener_and_unsigned_topics_are_warned_of() {
        let key = format!("k:{}", "s".repeat(32));
        let w = exposure_warnings(&cfg(&[("HTTP_ADDR", "0.0.0.0:8080")]));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("ADMIN_ADDR is unset"), "{w:?}");
        assert!(w[1].contains("ENVELOPE_SIGNING_KEYS is unset"), "{w:?}");
        assert!(
            exposure_warnings(&cfg(&[
                ("HTTP_ADDR", "0.0.0.0:8080"),
                ("ADMIN_ADDR", "0.0.0.0:9090"),
                ("ENVELOPE_SIGNING_KEYS", &key),
            ]))
            .is_empty()
        );
        assert!(
            exposure_warnings(&cfg(&[
                ("HTTP_ADDR", "127.0.0.1:8080"),
                ("ENVELOPE_SIGNING_KEYS", &key)
            ]))
            .is_empty()
        );
    }

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map).unwrap()
    }

    const STD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STRIPE: &str = "whsec_stripe_test_secret_0123456789";

    fn on(pairs: &[(&str, &str)]) -> Result<Vec<(&'static str, bool)>, StartError> {
        intakes(&cfg(pairs)).map(|i| i.on())
    }

    #[test]
    fn an_endpoint_with_secrets_always_verifies_and_one_without_is_off() {
        // Stripe only, verification on (the default): Stripe verifies, the
        // others are off.
        assert_eq!(
            on(&[("STRIPE_WEBHOOK_SECRETS", STRIPE)]).unwrap(),
            [("stripe", false)]
        );
        // Adyen only.
        let adyen = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
        assert_eq!(
            on(&[
                ("ADYEN_HMAC_KEYS", adyen),
                ("ADYEN_MERCHANT_ACCOUNTS", "Shop")
            ])
            .unwrap(),
            [("adyen", false)]
        );
        // WEBHOOK_VERIFY=off does not switch a configured endpoint's
        // verification off; it takes the others unsigned.
        assert_eq!(
            on(&[
                ("STRIPE_WEBHOOK_SECRETS", STRIPE),
                ("WEBHOOK_VERIFY", "off")
            ])
            .unwrap(),
            [
                ("orders", true),
                ("chargebacks", true),
                ("stripe", false),
                ("adyen", true)
            ]
        );
        let all = on(&[
            ("WEBHOOK_ORDERS_SECRETS", STD),
            ("WEBHOOK_CHARGEBACKS_SCHEME", "stripe"),
            ("WEBHOOK_CHARGEBACKS_SECRETS", STRIPE),
            ("WEBHOOK_VERIFY", "off"),
        ])
        .unwrap();
        assert_eq!(all[..2], [("orders", false), ("chargebacks", false)]);
        let i = intakes(&cfg(&[("WEBHOOK_ORDERS_SECRETS", STD)])).unwrap();
        assert_eq!(
            i.orders.unwrap().keys().unwrap().scheme(),
            crate::providers::signature::Scheme::Standard
        );
        assert!(i.chargebacks.is_none());
    }

    #[test]
    fn no_endpoint_on_and_unsigned_intake_beyond_loopback_refuse_to_start() {
        assert!(matches!(on(&[]), Err(StartError::NoEndpoint)));
        let e = on(&[("WEBHOOK_VERIFY", "off"), ("HTTP_ADDR", "0.0.0.0:8080")]).unwrap_err();
        assert!(
            matches!(&e, StartError::UnsignedOnPublicListener { endpoints, .. }
                if endpoints == "orders, chargebacks, stripe, adyen"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER"),
            "{e}"
        );
        // With every endpoint signed, any address is fine.
        assert!(
            on(&[
                ("STRIPE_WEBHOOK_SECRETS", STRIPE),
                ("HTTP_ADDR", "0.0.0.0:8080")
            ])
            .is_ok()
        );
        // Confirmed deliberately.
        assert!(
            on(&[
                ("WEBHOOK_VERIFY", "off"),
                ("HTTP_ADDR", "0.0.0.0:8080"),
                ("WEBHOOK_UNSIGNED_ON_PUBLIC_LISTENER", "true")
            ])
            .is_ok()
        );
        assert!(on(&[("WEBHOOK_VERIFY", "off"), ("HTTP_ADDR", "[::1]:8080")]).is_ok());
    }
}
