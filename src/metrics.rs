//! Metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! What an operator needs to trust the pipeline: how many webhooks were
//! answered and how, how long the broker took to acknowledge, how far each
//! partition's consumer is behind, and how many records were applied,
//! repeated, retried or dead-lettered, and which build is running
//! (`payhook_build_info{version,revision} 1`).
//!
//! `deploy/grafana/payhook.json` and `deploy/prometheus/alerts.yml` are
//! built on these names; a test (`tests/it/ops.rs`) fails if they refer to
//! a metric this module does not export.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    pub topic: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IgnoredLabels {
    pub provider: &'static str,
    /// The provider's event type (sanitized: `crate::providers::type_label`).
    pub event_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub provider: &'static str,
    /// Why the event is outside the endpoint's scope: `livemode`,
    /// `account` or `merchant_account`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// Every metric payhook keeps. Cheap to clone (all handles are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Webhooks answered, by endpoint and HTTP status.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Seconds from handing a record to the producer to the broker's ack.
    pub publish_seconds: Histogram,
    /// Of that, seconds a record waited in its partition's queue before the
    /// request carrying it was sent.
    pub producer_queue_seconds: Histogram,
    /// Of that, seconds of the produce request itself (the broker's round
    /// trip), once per request.
    pub producer_request_seconds: Histogram,
    /// Records per produce request.
    pub producer_batch_records: Histogram,
    pub producer_request_partitions: Histogram,
    /// Records handled by the consumer: `applied`, `duplicate`,
    /// `dead_lettered`.
    pub records: Family<RecordLabels, Counter>,
    /// Failed attempts to apply records (each one retried).
    pub retries: Family<RecordLabels, Counter>,
    /// Consumer transactions, by `outcome` (`commit` or `rollback`).
    pub transactions: Family<RecordLabels, Counter>,
    /// Next offset to apply, per partition.
    pub next_offset: Family<PartitionLabels, Gauge>,
    /// Records in the log not yet applied, per partition (high watermark
    /// minus next offset, as of the last fetch).
    pub lag: Family<PartitionLabels, Gauge>,
    /// 1 while a partition is stalled: it has lag and its position has not
    /// moved for `CONSUMER_STALL_AFTER`, or it is stopped (below).
    pub stalled: Family<PartitionLabels, Gauge>,
    /// 1 while a partition is stopped and waits for an operator (its offset
    /// fell out of the log, or a batch is in a codec payhook cannot read).
    pub stopped: Family<PartitionLabels, Gauge>,
    /// Records a never-consumed partition could not see at its first start
    /// (its log no longer began at 0), per partition.
    pub first_start_gap: Family<PartitionLabels, Gauge>,
    /// 1 for each webhook endpoint that takes unsigned webhooks, 0 for each
    /// that verifies (endpoints that are off are absent).
    pub webhook_endpoint_unsigned: Family<EndpointLabels, Gauge>,
    /// Provider events acknowledged but not mapped (unknown types), by
    /// provider and event type. Nothing is published for them.
    pub provider_events_ignored: Family<IgnoredLabels, Counter>,
    /// Provider events acknowledged from outside the endpoint's scope
    /// (another mode, connected account or merchant account), by provider
    /// and reason. Each is published and dead-lettered with the reason.
    pub provider_events_out_of_scope: Family<ScopeLabels, Counter>,
    /// Disputes waiting for their payment (`parked_disputes`), as of the
    /// last sweep.
    pub parked_disputes: Gauge,
    /// Seconds the oldest waiting dispute has waited, as of the last sweep.
    pub parked_dispute_oldest_seconds: Gauge,
    /// Disputes dead-lettered because their payment never arrived.
    pub parked_disputes_dead_lettered: Counter,
    /// Stored provider payloads cleared by `PAYLOAD_RETENTION`.
    pub payloads_cleared: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("payhook");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::version::VERSION,
                revision: crate::version::REVISION,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; its labels say which version and git revision is running",
            build_info,
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhooks answered, by endpoint and HTTP status",
            webhooks.clone(),
        );
        let publish_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "publish_seconds",
            "Time from handing a record to the producer to the broker's acknowledgement",
            publish_seconds.clone(),
        );
        let latency_buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            5.0,
        ];
        let producer_queue_seconds = Histogram::new(latency_buckets);
        registry.register(
            "producer_queue_seconds",
            "Time a record waited in its partition's queue before its produce request was sent",
            producer_queue_seconds.clone(),
        );
        let producer_request_seconds = Histogram::new(latency_buckets);
        registry.register(
            "producer_request_seconds",
            "Time from handing a partition's batch to its broker's sender to the broker's acknowledgement",
            producer_request_seconds.clone(),
        );
        let count_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
        let producer_batch_records = Histogram::new(count_buckets);
        registry.register(
            "producer_batch_records",
            "Records per partition batch (one partition's part of a produce request)",
            producer_batch_records.clone(),
        );
        let producer_request_partitions = Histogram::new(count_buckets);
        registry.register(
            "producer_request_partitions",
            "Partition batches per produce request (one request per broker carries every partition with records waiting)",
            producer_request_partitions.clone(),
        );
        let records = Family::<RecordLabels, Counter>::default();
        registry.register(
            "consumer_records",
            "Records handled by the consumer, by outcome",
            records.clone(),
        );
        let retries = Family::<RecordLabels, Counter>::default();
        registry.register(
            "consumer_retries",
            "Failed attempts to apply records, by error class; each is retried",
            retries.clone(),
        );
        let transactions = Family::<RecordLabels, Counter>::default();
        registry.register(
            "consumer_transactions",
            "Consumer transactions, by outcome (commit or rollback)",
            transactions.clone(),
        );
        let next_offset = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_next_offset",
            "Next offset to apply, per partition",
            next_offset.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records in the log not yet applied, per partition, as of the last fetch",
            lag.clone(),
        );
        let stalled = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_stalled",
            "1 while a partition has lag and has not advanced for CONSUMER_STALL_AFTER, or is stopped",
            stalled.clone(),
        );
        let stopped = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_stopped",
            "1 while a partition is stopped waiting for an operator (offset out of range, unreadable codec)",
            stopped.clone(),
        );
        let first_start_gap = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_first_start_gap_records",
            "Records deleted before payhook first read a partition (its log no longer began at 0 at the first start)",
            first_start_gap.clone(),
        );
        let webhook_endpoint_unsigned = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "webhook_endpoint_unsigned",
            "1 for each webhook endpoint that takes unsigned webhooks (WEBHOOK_VERIFY=off, no secrets), 0 for each that verifies",
            webhook_endpoint_unsigned.clone(),
        );
        let provider_events_ignored = Family::<IgnoredLabels, Counter>::default();
        registry.register(
            "provider_events_ignored",
            "Provider events acknowledged without effect (types payhook does not map), by provider and type",
            provider_events_ignored.clone(),
        );
        let provider_events_out_of_scope = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "provider_events_out_of_scope",
            "Provider events acknowledged but not applied because they come from outside the endpoint's scope (mode, account, merchant account), by provider and reason",
            provider_events_out_of_scope.clone(),
        );
        let parked_disputes = Gauge::default();
        registry.register(
            "parked_disputes",
            "Disputes waiting for the payment they name, as of the last sweep",
            parked_disputes.clone(),
        );
        let parked_dispute_oldest_seconds = Gauge::default();
        registry.register(
            "parked_dispute_oldest_seconds",
            "Seconds the oldest waiting dispute has waited, as of the last sweep",
            parked_dispute_oldest_seconds.clone(),
        );
        let parked_disputes_dead_lettered = Counter::default();
        registry.register(
            "parked_disputes_dead_lettered",
            "Disputes dead-lettered because their payment did not arrive within DISPUTE_PAYMENT_WAIT",
            parked_disputes_dead_lettered.clone(),
        );
        let payloads_cleared = Counter::default();
        registry.register(
            "payloads_cleared",
            "Stored provider payloads (payload, payload_raw of an event) cleared because they were older than PAYLOAD_RETENTION",
            payloads_cleared.clone(),
        );
        Self {
            registry: Arc::new(registry),
            payloads_cleared,
            first_start_gap,
            webhook_endpoint_unsigned,
            provider_events_ignored,
            provider_events_out_of_scope,
            parked_disputes,
            parked_dispute_oldest_seconds,
            parked_disputes_dead_lettered,
            webhooks,
            publish_seconds,
            producer_queue_seconds,
            producer_request_seconds,
            producer_batch_records,
            producer_request_partitions,
            records,
            retries,
            transactions,
            next_offset,
            lag,
            stalled,
            stopped,
        }
    }

    /// A consumer of `topic` started: its record and retry counters exist
    /// from now on, at 0, so rates and alerts see them before the first
    /// event (prometheus-client shows a labelled family only once it has a
    /// sample; the partition gauges come from `consume::health`).
    pub fn consumer_started(&self, topic: &str) {
        for outcome in ["applied", "duplicate", "dead_lettered"] {
            let _ = self.records.get_or_create(&RecordLabels {
                topic: topic.to_owned(),
                outcome,
            });
        }
        for outcome in ["transient", "permanent"] {
            let _ = self.retries.get_or_create(&RecordLabels {
                topic: topic.to_owned(),
                outcome,
            });
        }
    }

    /// Whether the webhook endpoint `endpoint` (on) takes unsigned webhooks.
    pub fn endpoint_unsigned(&self, endpoint: &'static str, unsigned: bool) {
        self.webhook_endpoint_unsigned
            .get_or_create(&EndpointLabels { endpoint })
            .set(i64::from(unsigned));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new();
        m.webhooks
            .get_or_create(&WebhookLabels {
                endpoint: "orders",
                status: 202,
            })
            .inc_by(3);
        m.lag
            .get_or_create(&PartitionLabels {
                topic: "t".into(),
                partition: 1,
            })
            .set(42);
        let text = m.render();
        assert!(
            text.contains(r#"payhook_webhooks_total{endpoint="orders",status="202"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"payhook_consumer_lag{topic="t",partition="1"} 42"#),
            "{text}"
        );
        let build = format!(
            r#"payhook_build_info{{version="{}",revision="{}"}} 1"#,
            crate::version::VERSION,
            crate::version::REVISION
        );
        assert!(text.contains(&build), "{text}");
    }

    #[test]
    fn a_started_consumer_shows_its_counters_at_zero() {
        // prometheus-client leaves a labelled family out of the exposition
        // (no HELP, no TYPE) until it has a sample...
        let m = Metrics::new();
        assert!(!m.render().contains("# TYPE payhook_consumer_records "));
        // ...so the consumer creates its counters when it starts.
        m.consumer_started("t");
        let text = m.render();
        for line in [
            r#"payhook_consumer_records_total{topic="t",outcome="applied"} 0"#,
            r#"payhook_consumer_records_total{topic="t",outcome="dead_lettered"} 0"#,
            r#"payhook_consumer_retries_total{topic="t",outcome="transient"} 0"#,
            r#"payhook_consumer_retries_total{topic="t",outcome="permanent"} 0"#,
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }
}
