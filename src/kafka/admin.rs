//! payhook's own admin connection to a broker, for what rskafka 0.6 cannot
//! do: create topics **with** configuration entries (`min.insync.replicas`,
//! `retention.ms`), read a topic's configuration back (DescribeConfigs),
//! count the brokers, and read a topic's ID (Metadata v10+), which tells a
//! re-created topic from the one it replaced.
//!
//! Requests are encoded by the pure-Rust `kafka-protocol` crate (generated
//! from Kafka's message schemas); framing, TLS and SASL are done here, with
//! the same settings as the data connections ([`KafkaTransport`]). Fixed,
//! long-supported request versions are used (Kafka 2.4 and later, Kafka
//! 4.x included), so no version negotiation is needed. Every call is
//! bounded by the request timeout.

use std::{collections::HashMap, io::Cursor, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        CreateTopicsRequest, DescribeConfigsRequest, MetadataRequest, RequestHeader,
        ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest, TopicName,
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        describe_configs_request::DescribeConfigsResource,
        metadata_request::MetadataRequestTopic,
    },
    protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes},
};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use rskafka::client::SaslConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::connect::KafkaTransport;

/// A failed admin request. Carries the broker's error name and message,
/// never credentials.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach any bootstrap broker ({brokers}): {last}")]
    Unreachable { brokers: String, last: String },
    #[error("{what} did not finish within {}", humantime::format_duration(*.after))]
    Timeout { what: &'static str, after: Duration },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the broker answered {error}{}", .message.as_deref().filter(|m| !m.is_empty()).map(|m| format!(" ({m})")).unwrap_or_default())]
    Broker {
        what: &'static str,
        error: String,
        message: Option<String>,
    },
    #[error("SASL authentication failed: {0}")]
    Sasl(String),
    #[error("{what}: cannot encode or decode the message: {reason}")]
    Protocol { what: &'static str, reason: String },
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One authenticated connection to one broker.
pub struct Admin {
    stream: Box<dyn Stream>,
    correlation_id: i32,
    timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// What `DescribeConfigs` says about one topic: every configuration entry,
/// with its effective value (the broker's default where the topic sets
/// none). Sensitive entries have no value.
pub type TopicConfigs = HashMap<String, String>;

/// Whether a topic was made now or was already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Now,
    AlreadyExisted,
}

const CREATE_TOPICS_VERSION: i16 = 5;
const DESCRIBE_CONFIGS_VERSION: i16 = 1;
const METADATA_VERSION: i16 = 4;
/// The first Metadata version that carries topic IDs is 10; 12 is the one
/// Kafka 3.x and 4.x both serve with topic names and IDs.
const METADATA_TOPIC_ID_VERSION: i16 = 12;
const SASL_HANDSHAKE_VERSION: i16 = 1;
const SASL_AUTHENTICATE_VERSION: i16 = 1;
/// Kafka's resource type code for a topic.
const RESOURCE_TOPIC: i8 = 2;

impl Admin {
    /// Connects to the first bootstrap broker that answers, with TLS and
    /// SASL as configured.
    pub async fn connect(
        brokers: &[String],
        transport: &KafkaTransport,
        timeout: Duration,
    ) -> Result<Self, AdminError> {
        let mut last = String::from("no brokers configured");
        for broker in brokers {
            match tokio::time::timeout(timeout, Self::connect_one(broker, transport, timeout)).await
            {
                Ok(Ok(admin)) => return Ok(admin),
                // A refused login is final: another broker would refuse too.
                Ok(Err(e @ AdminError::Sasl(_))) => return Err(e),
                Ok(Err(e)) => last = format!("{broker}: {e}"),
                Err(_) => {
                    last = format!(
                        "{broker}: no answer within {}",
                        humantime::format_duration(timeout)
                    )
                }
            }
        }
        Err(AdminError::Unreachable {
            brokers: brokers.join(","),
            last,
        })
    }

    async fn connect_one(
        broker: &str,
        transport: &KafkaTransport,
        timeout: Duration,
    ) -> Result<Self, AdminError> {
        let tcp = TcpStream::connect(broker)
            .await
            .map_err(|source| AdminError::Io {
                what: "connecting",
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &transport.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        AdminError::Io {
                            what: "naming the broker for TLS",
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|source| AdminError::Io {
                        what: "TLS handshake",
                        source,
                    })?;
                Box::new(tls)
            }
        };
        let mut admin = Self {
            stream,
            correlation_id: 0,
            timeout,
        };
        if let Some(sasl) = &transport.sasl {
            admin.authenticate(sasl).await?;
        }
        Ok(admin)
    }

    /// SaslHandshake, then SaslAuthenticate until the mechanism is done.
    async fn authenticate(&mut self, sasl: &SaslConfig) -> Result<(), AdminError> {
        let (mechanism, creds) = match sasl {
            SaslConfig::Plain(c) => ("PLAIN", c),
            SaslConfig::ScramSha256(c) => ("SCRAM-SHA-256", c),
            SaslConfig::ScramSha512(c) => ("SCRAM-SHA-512", c),
            SaslConfig::Oauthbearer(_) => {
                return Err(AdminError::Sasl("OAUTHBEARER is not supported".into()));
            }
        };
        let handshake = self
            .call(
                "SASL handshake",
                SASL_HANDSHAKE_VERSION,
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism)),
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(AdminError::Sasl(format!(
                "the broker does not offer {mechanism} (it offers {})",
                offered.join(", ")
            )));
        }
        let config =
            SASLConfig::with_credentials(None, creds.username.clone(), creds.password.clone())
                .map_err(|e| AdminError::Sasl(e.to_string()))?;
        let mech =
            Mechname::parse(mechanism.as_bytes()).map_err(|e| AdminError::Sasl(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[mech])
            .map_err(|e| AdminError::Sasl(e.to_string()))?;
        let mut received: Option<Vec<u8>> = None;
        loop {
            let mut out = Cursor::new(Vec::new());
            let state = session
                .step(received.as_deref(), &mut out)
                .map_err(|e| AdminError::Sasl(e.to_string()))?;
            if state.has_sent_message() {
                let resp = self
                    .call(
                        "SASL authenticate",
                        SASL_AUTHENTICATE_VERSION,
                        &SaslAuthenticateRequest::default()
                            .with_auth_bytes(Bytes::from(out.into_inner())),
                    )
                    .await?;
                if resp.error_code != 0 {
                    return Err(AdminError::Sasl(
                        resp.error_message
                            .map(|m| m.as_str().to_owned())
                            .unwrap_or_else(|| error_name(resp.error_code)),
                    ));
                }
                received = Some(resp.auth_bytes.to_vec());
            }
            if state.is_finished() {
                return Ok(());
            }
        }
    }

    /// How many brokers the cluster has.
    pub async fn broker_count(&mut self) -> Result<usize, AdminError> {
        Ok(self.broker_addresses().await?.len())
    }

    /// Every broker of the cluster as its metadata names it (`host:port`):
    /// where rskafka will connect.
    pub async fn broker_addresses(&mut self) -> Result<Vec<String>, AdminError> {
        let resp = self
            .call(
                "reading the cluster's brokers",
                METADATA_VERSION,
                &MetadataRequest::default()
                    .with_topics(Some(Vec::new()))
                    .with_allow_auto_topic_creation(false),
            )
            .await?;
        Ok(resp
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect())
    }

    /// The smallest replica count over `topic`'s partitions, or `None` when
    /// the broker does not know the topic.
    pub async fn replication_factor(&mut self, topic: &str) -> Result<Option<i16>, AdminError> {
        let resp = self
            .call(
                "reading a topic's replicas",
                METADATA_VERSION,
                &MetadataRequest::default()
                    .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                        TopicName(StrBytes::from_string(topic.to_owned())),
                    ))]))
                    .with_allow_auto_topic_creation(false),
            )
            .await?;
        let Some(t) = resp.topics.into_iter().next() else {
            return Ok(None);
        };
        if t.error_code != 0 {
            return Ok(None);
        }
        Ok(t.partitions
            .iter()
            .map(|p| i16::try_from(p.replica_nodes.len()).unwrap_or(i16::MAX))
            .min())
    }

    /// The topic ID the broker has for `topic` (a new one each time a topic
    /// of that name is created), or `None` when it knows no such topic.
    pub async fn topic_id(&mut self, topic: &str) -> Result<Option<uuid::Uuid>, AdminError> {
        let resp = self
            .call(
                "reading a topic's ID",
                METADATA_TOPIC_ID_VERSION,
                &MetadataRequest::default()
                    .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                        TopicName(StrBytes::from_string(topic.to_owned())),
                    ))]))
                    .with_allow_auto_topic_creation(false),
            )
            .await?;
        let Some(t) = resp.topics.into_iter().next() else {
            return Ok(None);
        };
        match t.error_code {
            0 if !t.topic_id.is_nil() => Ok(Some(t.topic_id)),
            // UNKNOWN_TOPIC_OR_PARTITION, or a broker that has no ID for it.
            0 | 3 => Ok(None),
            code => Err(AdminError::Broker {
                what: "reading a topic's ID",
                error: error_name(code),
                message: None,
            }),
        }
    }

    /// Creates `topic` with these configuration entries, unless it exists.
    pub async fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, String)],
    ) -> Result<Created, AdminError> {
        let timeout_ms = i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX);
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(timeout_ms)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string((*k).to_owned()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    ),
            ]);
        let resp = self
            .call("creating a topic", CREATE_TOPICS_VERSION, &req)
            .await?;
        let result = resp.topics.into_iter().next().ok_or(AdminError::Protocol {
            what: "creating a topic",
            reason: "the answer names no topic".into(),
        })?;
        match result.error_code {
            0 => Ok(Created::Now),
            // TOPIC_ALREADY_EXISTS
            36 => Ok(Created::AlreadyExisted),
            code => Err(AdminError::Broker {
                what: "creating a topic",
                error: error_name(code),
                message: result.error_message.map(|m| m.as_str().to_owned()),
            }),
        }
    }

    /// Every configuration entry of `topic`, with its effective value.
    pub async fn describe_topic_configs(
        &mut self,
        topic: &str,
    ) -> Result<TopicConfigs, AdminError> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configuration_keys(None),
        ]);
        let resp = self
            .call(
                "reading a topic's configuration",
                DESCRIBE_CONFIGS_VERSION,
                &req,
            )
            .await?;
        let result = resp
            .results
            .into_iter()
            .next()
            .ok_or(AdminError::Protocol {
                what: "reading a topic's configuration",
                reason: "the answer names no topic".into(),
            })?;
        if result.error_code != 0 {
            return Err(AdminError::Broker {
                what: "reading a topic's configuration",
                error: error_name(result.error_code),
                message: result.error_message.map(|m| m.as_str().to_owned()),
            });
        }
        Ok(result
            .configs
            .into_iter()
            .filter_map(|c| Some((c.name.as_str().to_owned(), c.value?.as_str().to_owned())))
            .collect())
    }

    /// Sends one request and reads its answer, within the timeout.
    async fn call<R: Request>(
        &mut self,
        what: &'static str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, AdminError> {
        let after = self.timeout;
        match tokio::time::timeout(after, self.call_unbounded(what, version, req)).await {
            Ok(r) => r,
            Err(_) => Err(AdminError::Timeout { what, after }),
        }
    }

    async fn call_unbounded<R: Request>(
        &mut self,
        what: &'static str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, AdminError> {
        let proto = |e: anyhow::Error| AdminError::Protocol {
            what,
            reason: e.to_string(),
        };
        let io = |source| AdminError::Io { what, source };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("payhook-admin")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(proto)?;
        req.encode(&mut body, version).map_err(proto)?;
        let len = u32::try_from(body.len()).map_err(|_| AdminError::Protocol {
            what,
            reason: "request too large".into(),
        })?;
        self.stream
            .write_all(&len.to_be_bytes())
            .await
            .map_err(io)?;
        self.stream.write_all(&body).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;

        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        // Admin answers are small; refuse to allocate for garbage.
        if len > 64 << 20 {
            return Err(AdminError::Protocol {
                what,
                reason: format!(
                    "answer of {len} bytes (is this a Kafka listener of this protocol?)"
                ),
            });
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(proto)?;
        if header.correlation_id != self.correlation_id {
            return Err(AdminError::Protocol {
                what,
                reason: format!(
                    "answer to request {} while waiting for {}",
                    header.correlation_id, self.correlation_id
                ),
            });
        }
        R::Response::decode(&mut buf, version).map_err(proto)
    }
}

/// Why the brokers cannot be used with these settings, found by
/// connecting (TLS, SASL) and asking for metadata: `None` when that works.
/// An I/O failure gets a hint, since a listener of another protocol (TLS or
/// SASL where plaintext was tried, or the reverse) just closes the
/// connection.
pub async fn diagnose(
    brokers: &[String],
    transport: &KafkaTransport,
    timeout: Duration,
) -> Option<AdminError> {
    let probe = async {
        let mut admin = Admin::connect(brokers, transport, timeout).await?;
        admin.broker_count().await
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(AdminError::Io { what, source })) => Some(AdminError::Io {
            what,
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source} (does this listener expect another security protocol? \
                     check KAFKA_SECURITY_PROTOCOL and the port)"
                ),
            ),
        }),
        Ok(Err(e)) => Some(e),
        Err(_) => Some(AdminError::Timeout {
            what: "connecting and reading metadata",
            after: timeout,
        }),
    }
}

/// Kafka's name for an error code, e.g. `POLICY_VIOLATION`.
fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => "no error".into(),
    }
}
