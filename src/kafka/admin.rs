//! payhook's own admin connection to a broker, for what rskafka 0.6 cannot
//! do: create topics **with** configuration entries (`min.insync.replicas`,
//! `retention.ms`), read a topic's configuration back (DescribeConfigs),
//! count the brokers, and read a topic's ID (Metadata v10+), which tells a
//! re-created topic from the one it replaced.
//!
//! Requests are encoded by the pure-Rust `kafka-protocol` crate (generated
//! from Kafka's message schemas) and travel over a [`Connection`] (framing,
//! TLS and SASL, the same settings as the data connections). Every call is
//! bounded by the request timeout.

use std::{collections::HashMap, time::Duration};

use kafka_protocol::{
    messages::{
        CreateTopicsRequest, DescribeConfigsRequest, MetadataRequest, MetadataResponse, TopicName,
        create_topics_request::{CreatableTopic, CreatableTopicConfig},
        describe_configs_request::DescribeConfigsResource,
        metadata_request::MetadataRequestTopic,
    },
    protocol::{Request, StrBytes},
};

use super::wire::{Connection, WireError, error_name};
use crate::connect::KafkaTransport;

/// One authenticated connection to one broker.
pub struct Admin {
    conn: Connection,
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

/// What [`Admin::leaders`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaders {
    /// Every broker by id, as `host:port`.
    pub brokers: HashMap<i32, String>,
    /// Each partition's leader, `None` while it has none.
    pub partitions: HashMap<i32, Option<i32>>,
}

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
/// Kafka's resource type code for a topic.
const RESOURCE_TOPIC: i8 = 2;

impl Admin {
    /// Connects to the first bootstrap broker that answers, with TLS and
    /// SASL as configured.
    pub async fn connect(
        brokers: &[String],
        transport: &KafkaTransport,
        timeout: Duration,
    ) -> Result<Self, WireError> {
        let mut last = String::from("no brokers configured");
        for broker in brokers {
            match tokio::time::timeout(
                timeout,
                Connection::open(broker, transport, timeout, "payhook-admin"),
            )
            .await
            {
                Ok(Ok(conn)) => return Ok(Self { conn }),
                // A refused login is final: another broker would refuse too.
                Ok(Err(e @ WireError::Sasl(_))) => return Err(e),
                Ok(Err(e)) => last = format!("{broker}: {e}"),
                Err(_) => {
                    last = format!(
                        "{broker}: no answer within {}",
                        humantime::format_duration(timeout)
                    )
                }
            }
        }
        Err(WireError::Unreachable {
            brokers: brokers.join(","),
            last,
        })
    }

    /// How many brokers the cluster has.
    pub async fn broker_count(&mut self) -> Result<usize, WireError> {
        Ok(self.broker_addresses().await?.len())
    }

    /// Every broker of the cluster as its metadata names it (`host:port`):
    /// where rskafka will connect.
    pub async fn broker_addresses(&mut self) -> Result<Vec<String>, WireError> {
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

    /// Where `topic`'s partitions are led: every broker of the cluster by
    /// id (`host:port`), and each partition's leader id (`None` while it
    /// has none). `None` when the broker does not know the topic.
    pub async fn leaders(&mut self, topic: &str) -> Result<Option<Leaders>, WireError> {
        let resp = self
            .topic_metadata("reading partition leaders", METADATA_VERSION, topic)
            .await?;
        let brokers = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let Some(t) = resp.topics.into_iter().next() else {
            return Ok(None);
        };
        if t.error_code != 0 {
            return Ok(None);
        }
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                )
            })
            .collect();
        Ok(Some(Leaders {
            brokers,
            partitions,
        }))
    }

    /// The smallest replica count over `topic`'s partitions, or `None` when
    /// the broker does not know the topic.
    pub async fn replication_factor(&mut self, topic: &str) -> Result<Option<i16>, WireError> {
        let resp = self
            .topic_metadata("reading a topic's replicas", METADATA_VERSION, topic)
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
    pub async fn topic_id(&mut self, topic: &str) -> Result<Option<uuid::Uuid>, WireError> {
        let resp = self
            .topic_metadata("reading a topic's ID", METADATA_TOPIC_ID_VERSION, topic)
            .await?;
        let Some(t) = resp.topics.into_iter().next() else {
            return Ok(None);
        };
        match t.error_code {
            0 if !t.topic_id.is_nil() => Ok(Some(t.topic_id)),
            // UNKNOWN_TOPIC_OR_PARTITION, or a broker that has no ID for it.
            0 | 3 => Ok(None),
            code => Err(WireError::Broker {
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
    ) -> Result<Created, WireError> {
        let timeout_ms = i32::try_from(self.conn.timeout().as_millis()).unwrap_or(i32::MAX);
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
        let result = resp.topics.into_iter().next().ok_or(WireError::Protocol {
            what: "creating a topic",
            reason: "the answer names no topic".into(),
        })?;
        match result.error_code {
            0 => Ok(Created::Now),
            // TOPIC_ALREADY_EXISTS
            36 => Ok(Created::AlreadyExisted),
            code => Err(WireError::Broker {
                what: "creating a topic",
                error: error_name(code),
                message: result.error_message.map(|m| m.as_str().to_owned()),
            }),
        }
    }

    /// Every configuration entry of `topic`, with its effective value.
    pub async fn describe_topic_configs(&mut self, topic: &str) -> Result<TopicConfigs, WireError> {
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
        let result = resp.results.into_iter().next().ok_or(WireError::Protocol {
            what: "reading a topic's configuration",
            reason: "the answer names no topic".into(),
        })?;
        if result.error_code != 0 {
            return Err(WireError::Broker {
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

    /// The cluster's metadata about one topic (never creating it).
    async fn topic_metadata(
        &mut self,
        what: &'static str,
        version: i16,
        topic: &str,
    ) -> Result<MetadataResponse, WireError> {
        self.call(
            what,
            version,
            &MetadataRequest::default()
                .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                    TopicName(StrBytes::from_string(topic.to_owned())),
                ))]))
                .with_allow_auto_topic_creation(false),
        )
        .await
    }

    async fn call<R: Request>(
        &mut self,
        what: &'static str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, WireError> {
        self.conn.call(what, version, req).await
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
) -> Option<WireError> {
    let probe = async {
        let mut admin = Admin::connect(brokers, transport, timeout).await?;
        admin.broker_count().await
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(WireError::Io { what, source })) => Some(WireError::Io {
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
        Err(_) => Some(WireError::Timeout {
            what: "connecting and reading metadata",
            after: timeout,
        }),
    }
}
