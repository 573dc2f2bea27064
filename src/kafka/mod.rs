//! The Kafka wire: everything that talks to the brokers, and nothing that
//! knows Postgres or the providers.
//!
//! - [`Kafka`]: the rskafka client, with a deadline on every call.
//! - [`wire`]: payhook's own connection to a broker (the `kafka-protocol`
//!   crate; TLS and SASL), which [`admin`] and [`brokers`] talk over.
//! - [`brokers`]: one produce request per broker, carrying every partition
//!   with a batch waiting (rskafka sends one partition per request).
//! - [`admin`]: payhook's own admin connection (the `kafka-protocol` crate)
//!   for what rskafka cannot ask: topic configurations, broker counts, and
//!   the reason a connection was refused.
//! - [`envelope`]: the JSON envelope every webhook travels in, and its
//!   record form (a codec only).
//! - [`partitioner`]: Java-compatible murmur2, so every producer agrees on
//!   where an order's events go.
//! - [`producer`]: per-partition batching with a bound on queued records and
//!   a deadline on every publish.
//! - [`topics`]: what `payhook topics` creates and what `serve` checks about
//!   the topics it finds.
//!
//! Consuming (the partition loop, offsets in Postgres) is
//! [`crate::consume`]'s.
//!
//! rskafka 0.6 retries broker calls forever by default and has no request
//! timeout; [`Kafka`] builds its client with a bounded backoff and every call
//! here is wrapped in [`bounded`].
//!
//! With `KAFKA_SECURITY_PROTOCOL=ssl|sasl_ssl`, rskafka reaches the brokers
//! through a [`Tunnel`] (TLS on the pure-Rust graviola provider, started
//! with the [`Kafka`] and stopped when its last clone is dropped); rskafka
//! itself speaks plaintext Kafka and SASL into it.

pub mod admin;
pub mod brokers;
pub mod envelope;
pub mod partitioner;
pub mod producer;
pub mod signing;
pub mod topics;
pub mod wire;

use std::{future::Future, num::NonZeroU32, sync::Arc, time::Duration};

use crate::{
    config::KafkaSettings,
    connect::{
        self, ConnectError, KafkaTransport,
        tunnel::{BrokerLookup, Tunnel, TunnelError, TunnelSettings},
    },
};
use wire::WireError;

use rskafka::{
    BackoffConfig,
    client::{
        Client, ClientBuilder,
        controller::ControllerClient,
        error::{Error as RsError, ProtocolError},
        partition::{PartitionClient, UnknownTopicHandling},
    },
};

/// How often [`Kafka::wait_for_topic`] asks for metadata.
const TOPIC_POLL: Duration = Duration::from_millis(100);

/// A Kafka failure.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{what} did not finish within {}", humantime::format_duration(*.after))]
    Timeout { what: &'static str, after: Duration },
    #[error("{what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: RsError,
    },
    #[error("topic {topic} does not exist (`payhook topics` creates it)")]
    UnknownTopic { topic: String },
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("admin request: {0}")]
    Admin(#[from] WireError),
    #[error("{first}; connecting directly with KAFKA_SECURITY_PROTOCOL={protocol} says: {reason}")]
    Refused {
        first: Box<KafkaError>,
        reason: WireError,
        protocol: &'static str,
    },
    #[error("the broker refused the batch: {}{}", wire::error_name(*.code), .message.as_deref().filter(|m| !m.is_empty()).map(|m| format!(" ({m})")).unwrap_or_default())]
    Produce { code: i16, message: Option<String> },
    #[error("the producer's sender for a broker stopped before answering")]
    SenderStopped,
    #[error("{0}")]
    Tunnel(#[source] TunnelError),
    #[error("{first}; the TLS tunnel says: {reason}")]
    TunnelRefused {
        first: Box<KafkaError>,
        #[source]
        reason: Arc<TunnelError>,
    },
}

impl KafkaError {
    /// Whether the broker refused a produce for what its records are
    /// (too large, invalid, corrupt) or where they go (an invalid topic, or
    /// one this client may not write): sending them again gets the same
    /// answer. Timeouts, a leader moving, too few in-sync replicas are not
    /// refusals.
    pub fn refuses_record(&self) -> bool {
        // CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, INVALID_TOPIC_EXCEPTION,
        // RECORD_LIST_TOO_LARGE, TOPIC_AUTHORIZATION_FAILED, INVALID_RECORD.
        matches!(
            self,
            Self::Produce {
                code: 2 | 10 | 17 | 18 | 29 | 87,
                ..
            }
        )
    }
}

async fn build_client(
    brokers: &[String],
    request_timeout: Duration,
    transport: &KafkaTransport,
    tunnel: Option<&Tunnel>,
) -> Result<Client, KafkaError> {
    // rskafka's default backoff never gives up. Give its internal retries
    // a deadline a little under ours, so a call fails with the broker's
    // own error rather than a bare timeout when it can.
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(request_timeout.mul_f64(0.8)),
    };
    let mut builder = ClientBuilder::new(brokers.to_vec())
        .client_id("payhook")
        .backoff_config(backoff);
    if let Some(sasl) = &transport.sasl {
        builder = builder.sasl_config(sasl.clone());
    }
    if let Some(tunnel) = tunnel {
        builder = builder.socks5_proxy(tunnel.addr().to_string());
    }
    bounded(
        "connecting to the brokers",
        request_timeout,
        builder.build(),
    )
    .await
}

/// The first offset still in a partition's log and the offset after its
/// last record, each read with the deadline `t`.
pub async fn log_bounds(
    client: &rskafka::client::partition::PartitionClient,
    t: Duration,
) -> Result<(i64, i64), KafkaError> {
    use rskafka::client::partition::OffsetAt;
    let earliest = bounded(
        "reading the earliest offset",
        t,
        client.get_offset(OffsetAt::Earliest),
    )
    .await?;
    let latest = bounded(
        "reading the latest offset",
        t,
        client.get_offset(OffsetAt::Latest),
    )
    .await?;
    Ok((earliest, latest))
}

/// The SHA-256 of a record's key, value and timestamp: what the consumer
/// remembers of the last record it handled, to recognise it when it reads
/// the log again (a log whose history changed holds another record, or
/// none, at that offset). Headers are left out: payhook's own records
/// repeat the value's event id in them.
pub fn record_digest(r: &rskafka::record::Record) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [r.key.as_deref(), r.value.as_deref()] {
        match part {
            Some(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
            None => h.update([0]),
        }
    }
    h.update(r.timestamp.timestamp_millis().to_be_bytes());
    h.finalize().into()
}

/// Runs a broker call with a deadline. rskafka keeps retrying internally
/// until its own backoff deadline; this is the hard stop.
pub async fn bounded<T>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, RsError>>,
) -> Result<T, KafkaError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KafkaError::Client { what, source }),
        Err(_) => Err(KafkaError::Timeout { what, after }),
    }
}

/// Starts the TLS tunnel for `transport`, or `None` when it has no TLS.
/// The tunnel learns the brokers the metadata names from payhook's admin
/// connection, which does its own TLS.
async fn start_tunnel(
    brokers: &[String],
    request_timeout: Duration,
    transport: &KafkaTransport,
) -> Result<Option<Arc<Tunnel>>, KafkaError> {
    let Some(tls) = &transport.tls else {
        return Ok(None);
    };
    let lookup: BrokerLookup = {
        let brokers = brokers.to_vec();
        let transport = transport.clone();
        Arc::new(move || {
            let brokers = brokers.clone();
            let transport = transport.clone();
            Box::pin(async move {
                let mut admin =
                    admin::Admin::connect(&brokers, &transport, request_timeout).await?;
                Ok(admin.broker_addresses().await?)
            })
        })
    };
    let tunnel = Tunnel::start(TunnelSettings {
        bootstrap: brokers.to_vec(),
        tls: Arc::clone(tls),
        // Half the request timeout for dialling and half for the handshake,
        // so the tunnel's own reason arrives before the caller gives up.
        timeout: request_timeout / 2,
        brokers: lookup,
    })
    .await
    .map_err(KafkaError::Tunnel)?;
    Ok(Some(Arc::new(tunnel)))
}

/// A connected Kafka client with the request timeout that bounds its calls.
///
/// It remembers how it was made (brokers, SASL, TLS and its tunnel), so
/// [`Kafka::reconnect`] can build a fresh client on new connections when
/// the old ones stop working. The tunnel stops when the last clone is
/// dropped: keep the `Kafka` while using a
/// [`partition_client`](Self::partition_client) it gave.
#[derive(Clone)]
pub struct Kafka {
    client: Arc<Client>,
    request_timeout: Duration,
    brokers: Arc<[String]>,
    transport: KafkaTransport,
    tunnel: Option<Arc<Tunnel>>,
}

// Hand-written: rskafka's client and SASL settings would print the SASL
// password.
impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("request_timeout", &self.request_timeout)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Kafka {
    /// Connects in plaintext to the bootstrap brokers and reads the
    /// cluster's metadata (local brokers, tests).
    pub async fn connect(
        brokers: &[String],
        request_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        Self::connect_with(brokers, request_timeout, KafkaTransport::plaintext()).await
    }

    /// Connects with `KAFKA_SECURITY_PROTOCOL` and the other settings of
    /// `kafka` (SASL, TLS; see [`crate::connect`]).
    ///
    /// rskafka retries a refused login or handshake until its deadline and
    /// then reports a bare timeout; when connecting fails, payhook's own
    /// admin connection tries once more to find the reason (a refused
    /// password, an untrusted certificate, a listener that expects another
    /// protocol) and reports it.
    pub async fn from_config(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        let transport = connect::kafka_security(&kafka.security())?;
        let tunnel = start_tunnel(&kafka.brokers, kafka.request_timeout, &transport).await?;
        match Self::connect_via(
            &kafka.brokers,
            kafka.request_timeout,
            transport.clone(),
            tunnel.clone(),
        )
        .await
        {
            Ok(k) => Ok(k),
            Err(e) => {
                // The tunnel names the broker and the TLS reason.
                if let Some(reason) = tunnel.and_then(|t| t.last_failure()) {
                    return Err(KafkaError::TunnelRefused {
                        first: Box::new(e),
                        reason,
                    });
                }
                let reason =
                    admin::diagnose(&kafka.brokers, &transport, kafka.request_timeout).await;
                Err(match reason {
                    Some(reason) => KafkaError::Refused {
                        first: Box::new(e),
                        reason,
                        protocol: kafka.security_protocol.as_str(),
                    },
                    None => e,
                })
            }
        }
    }

    /// Connects with the given SASL and TLS settings.
    pub async fn connect_with(
        brokers: &[String],
        request_timeout: Duration,
        transport: KafkaTransport,
    ) -> Result<Self, KafkaError> {
        let tunnel = start_tunnel(brokers, request_timeout, &transport).await?;
        Self::connect_via(brokers, request_timeout, transport, tunnel).await
    }

    async fn connect_via(
        brokers: &[String],
        request_timeout: Duration,
        transport: KafkaTransport,
        tunnel: Option<Arc<Tunnel>>,
    ) -> Result<Self, KafkaError> {
        let client = build_client(brokers, request_timeout, &transport, tunnel.as_deref()).await?;
        Ok(Self {
            client: Arc::new(client),
            request_timeout,
            brokers: brokers.into(),
            transport,
            tunnel,
        })
    }

    /// A new client with the same settings, on new connections.
    ///
    /// rskafka keeps a broker connection (and each partition client keeps
    /// its leader's) until an error closes it; a connection to a broker that
    /// stopped answering without closing it stays "open" and every call on
    /// it times out. After a few such failures in a row, a caller that owns
    /// a partition should call this and take a new
    /// [`partition_client`](Self::partition_client) from the returned value
    /// instead of retrying on the old one.
    pub async fn reconnect(&self) -> Result<Self, KafkaError> {
        Self::connect_via(
            &self.brokers,
            self.request_timeout,
            self.transport.clone(),
            self.tunnel.clone(),
        )
        .await
    }

    /// The producer's view of the cluster: one sender per broker on
    /// payhook's own connections (same brokers, TLS and SASL), each
    /// request bounded by `timeout`. Its senders hold `alive`.
    pub fn brokers(
        &self,
        timeout: Duration,
        linger: Duration,
        metrics: Option<crate::metrics::Metrics>,
        alive: tokio::sync::mpsc::Sender<()>,
    ) -> brokers::Brokers {
        brokers::Brokers::new(
            Arc::clone(&self.brokers),
            self.transport.clone(),
            timeout,
            linger,
            metrics,
            alive,
        )
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The partition ids of `topic`, in order.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, KafkaError> {
        let topics = bounded(
            "listing topics",
            self.request_timeout,
            self.client.list_topics(),
        )
        .await?;
        let mut parts = topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.into_iter().collect::<Vec<_>>())
            .ok_or_else(|| KafkaError::UnknownTopic {
                topic: topic.to_owned(),
            })?;
        parts.sort_unstable();
        Ok(parts)
    }

    /// The partition ids of `topic` once the broker's metadata lists it
    /// with at least `min_partitions` partitions, polling for at most
    /// `within`. A topic reaches the metadata a moment after its creation
    /// is acknowledged; this is how `payhook topics` and start-up wait for
    /// it. After `within`, the last error (usually
    /// [`KafkaError::UnknownTopic`]).
    pub async fn wait_for_topic(
        &self,
        topic: &str,
        min_partitions: usize,
        within: Duration,
    ) -> Result<Vec<i32>, KafkaError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = match self.partitions(topic).await {
                Ok(p) if p.len() >= min_partitions.max(1) => return Ok(p),
                Ok(p) => KafkaError::UnknownTopic {
                    topic: format!(
                        "{topic} (only {} of {min_partitions} partitions are known yet)",
                        p.len()
                    ),
                },
                Err(e) => e,
            };
            let retry = matches!(e, KafkaError::UnknownTopic { .. });
            if !retry || tokio::time::Instant::now() + TOPIC_POLL > deadline {
                return Err(e);
            }
            tokio::time::sleep(TOPIC_POLL).await;
        }
    }

    /// A client bound to one partition's leader (its own connection).
    pub async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionClient, KafkaError> {
        bounded(
            "connecting to the partition leader",
            self.request_timeout,
            self.client
                .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry),
        )
        .await
    }

    /// The topic ID the brokers have for `topic` now, asked on payhook's own
    /// admin connection (rskafka's metadata carries no IDs). `None` when the
    /// topic does not exist.
    pub async fn topic_id(&self, topic: &str) -> Result<Option<uuid::Uuid>, KafkaError> {
        let mut admin =
            admin::Admin::connect(&self.brokers, &self.transport, self.request_timeout).await?;
        Ok(admin.topic_id(topic).await?)
    }

    /// The controller client, and the broker-side timeout for admin calls.
    fn controller(&self) -> Result<(ControllerClient, i32), KafkaError> {
        let controller = self
            .client
            .controller_client()
            .map_err(|source| KafkaError::Client {
                what: "finding the controller",
                source,
            })?;
        let timeout_ms = i32::try_from(self.request_timeout.as_millis()).unwrap_or(i32::MAX);
        Ok((controller, timeout_ms))
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    /// Returns whether it was created.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: NonZeroU32,
        replication_factor: i16,
    ) -> Result<bool, KafkaError> {
        let (controller, timeout_ms) = self.controller()?;
        let partitions = i32::try_from(partitions.get()).unwrap_or(i32::MAX);
        match bounded(
            "creating a topic",
            self.request_timeout,
            controller.create_topic(topic, partitions, replication_factor, timeout_ms),
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(KafkaError::Client {
                source:
                    RsError::ServerError {
                        protocol_error: ProtocolError::TopicAlreadyExists,
                        ..
                    },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic (tests and benches clean up after themselves).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), KafkaError> {
        let (controller, timeout_ms) = self.controller()?;
        bounded(
            "deleting a topic",
            self.request_timeout,
            controller.delete_topic(topic, timeout_ms),
        )
        .await
    }
}
