//! The partition loop's [`Log`] over rskafka: one partition's leader,
//! every call bounded in time, and rskafka's errors sorted into what the
//! loop decides on (out of range, unreadable, anything else).

use std::{ops::Range, time::Duration};

use rskafka::client::{
    error::{Error as RsError, ProtocolError, RequestError},
    partition::PartitionClient,
};

use super::partition::{FetchError, Fetched, Log};
use crate::kafka::{Kafka, KafkaError, bounded, log_bounds};

/// One partition of a topic, read through its leader.
pub struct KafkaLog {
    kafka: Kafka,
    topic: String,
    partition: i32,
    /// Connected once [`Log::connect`] succeeded.
    client: Option<PartitionClient>,
    /// The bound on one fetch: the request timeout plus the longest the
    /// broker may hold the fetch open.
    fetch_deadline: Duration,
}

impl KafkaLog {
    /// `longest_wait`: the longest a fetch may be held by the broker
    /// (`KAFKA_FETCH_MAX_WAIT` or `CONSUMER_LINGER`, whichever is longer).
    pub fn new(kafka: Kafka, topic: &str, partition: i32, longest_wait: Duration) -> Self {
        let fetch_deadline = kafka.request_timeout() + longest_wait;
        Self {
            kafka,
            topic: topic.to_owned(),
            partition,
            client: None,
            fetch_deadline,
        }
    }

    async fn client(&mut self) -> Result<&PartitionClient, KafkaError> {
        if self.client.is_none() {
            self.connect().await?;
        }
        Ok(self.client.as_ref().expect("connected just now"))
    }
}

impl Log for KafkaLog {
    async fn connect(&mut self) -> Result<(), KafkaError> {
        let client = self
            .kafka
            .partition_client(&self.topic, self.partition)
            .await?;
        self.client = Some(client);
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<(), KafkaError> {
        let kafka = self.kafka.reconnect().await?;
        let client = kafka.partition_client(&self.topic, self.partition).await?;
        self.kafka = kafka;
        self.client = Some(client);
        Ok(())
    }

    async fn fetch(
        &mut self,
        offset: i64,
        bytes: Range<i32>,
        max_wait_ms: i32,
    ) -> Result<Fetched, FetchError> {
        let deadline = self.fetch_deadline;
        let client = self.client().await?;
        let r = bounded(
            "fetching",
            deadline,
            client.fetch_records(offset, bytes, max_wait_ms),
        )
        .await;
        match r {
            Ok((records, high_watermark)) => Ok(Fetched {
                records,
                high_watermark,
            }),
            Err(e) => Err(classify(e)),
        }
    }

    async fn bounds(&mut self) -> Result<(i64, i64), KafkaError> {
        let t = self.kafka.request_timeout();
        log_bounds(self.client().await?, t).await
    }

    async fn topic_id(&mut self) -> Result<Option<uuid::Uuid>, KafkaError> {
        self.kafka.topic_id(&self.topic).await
    }
}

/// What a failed fetch means for the loop.
fn classify(e: KafkaError) -> FetchError {
    match &e {
        KafkaError::Client {
            source:
                RsError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                },
            ..
        } => FetchError::OutOfRange,
        // The data came, but cannot be decoded: a codec this build lacks,
        // or a corrupt batch.
        KafkaError::Client {
            source:
                RsError::Request(
                    inner @ (RequestError::ReadError(_) | RequestError::ReadVersionedError(_)),
                ),
            ..
        } => FetchError::Unreadable(inner.to_string()),
        _ => FetchError::Failed(e),
    }
}
