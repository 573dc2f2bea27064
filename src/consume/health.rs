//! What each partition consumer is doing, for `/readyz` and the metrics.
//!
//! Every partition loop reports here when it starts, fetches, moves its
//! position, fails, stops or resumes. From that the registry tells, at any
//! moment, which partitions are **stalled** (they have lag and their
//! position has not moved for `CONSUMER_STALL_AFTER`) and which are
//! **stopped** (they wait for an operator: their offset fell out of the log,
//! or a batch is in a codec payhook cannot read), each with the offset it
//! is stuck on and why. [`ConsumerHealth::refresh_metrics`] copies that into
//! the `payhook_consumer_*` gauges.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::metrics::{Metrics, PartitionLabels};

/// The shared registry. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConsumerHealth {
    inner: Arc<Mutex<BTreeMap<(String, i32), State>>>,
    stall_after: Duration,
    metrics: Metrics,
}

#[derive(Clone, Debug)]
struct State {
    next_offset: i64,
    log_end: Option<i64>,
    /// When the position last moved, or the partition was last seen caught
    /// up: the stall clock starts here.
    since: Instant,
    /// The error of the last failed attempt, until an attempt succeeds.
    failing: Option<String>,
    /// Why the partition waits for an operator.
    stopped: Option<String>,
    /// Something an operator should know that does not stop it (records
    /// deleted before its first start).
    notice: Option<String>,
}

/// One partition, as `/readyz` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    /// The offset it is at (the next one to apply).
    pub offset: i64,
    /// Records behind the log end, as of the last fetch.
    pub lag: Option<i64>,
    /// Seconds since the position last moved while there was lag.
    pub stuck_for_s: u64,
    pub stalled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

impl ConsumerHealth {
    pub fn new(stall_after: Duration, metrics: Metrics) -> Self {
        Self {
            inner: Arc::default(),
            stall_after,
            metrics,
        }
    }

    fn with(&self, topic: &str, partition: i32, f: impl FnOnce(&mut State)) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let state = map
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| State {
                next_offset: 0,
                log_end: None,
                since: Instant::now(),
                failing: None,
                stopped: None,
                notice: None,
            });
        f(state);
    }

    /// The partition consumer starts at `next`.
    pub fn started(&self, topic: &str, partition: i32, next: i64) {
        self.with(topic, partition, |s| {
            s.next_offset = next;
            s.since = Instant::now();
        });
    }

    /// A fetch answered: the log ends at `log_end`.
    pub fn fetched(&self, topic: &str, partition: i32, log_end: i64) {
        self.with(topic, partition, |s| {
            s.log_end = Some(log_end);
            if log_end <= s.next_offset {
                // Caught up: nothing to be stuck on.
                s.since = Instant::now();
            }
        });
    }

    /// The position is now `next` (a commit).
    pub fn advanced(&self, topic: &str, partition: i32, next: i64) {
        self.with(topic, partition, |s| {
            if next != s.next_offset {
                s.since = Instant::now();
            }
            s.next_offset = next;
            s.failing = None;
        });
    }

    /// An attempt failed; the partition retries.
    pub fn failing(&self, topic: &str, partition: i32, error: String) {
        self.with(topic, partition, |s| s.failing = Some(error));
    }

    /// Worth knowing, without stopping anything (shown in `/status`).
    pub fn notice(&self, topic: &str, partition: i32, notice: String) {
        self.with(topic, partition, |s| s.notice = Some(notice));
    }

    /// The partition stopped and waits for an operator.
    pub fn stopped(&self, topic: &str, partition: i32, reason: String) {
        self.with(topic, partition, |s| s.stopped = Some(reason));
    }

    /// The partition goes on from `next` (after a stop).
    pub fn resumed(&self, topic: &str, partition: i32, next: i64) {
        self.with(topic, partition, |s| {
            s.stopped = None;
            s.failing = None;
            s.next_offset = next;
            s.since = Instant::now();
        });
    }

    /// The partition is no longer this process's (released, taken over):
    /// it leaves the report and its gauges.
    pub fn forget(&self, topic: &str, partition: i32) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(topic.to_owned(), partition));
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition,
        };
        let m = &self.metrics;
        for family in [
            &m.next_offset,
            &m.lag,
            &m.stalled,
            &m.stopped,
            &m.first_start_gap,
        ] {
            family.remove(&labels);
        }
    }

    /// Every partition, in topic and partition order.
    pub fn report(&self) -> Vec<PartitionReport> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((topic, partition), s)| {
                let lag = s.log_end.map(|end| (end - s.next_offset).max(0));
                let stuck = if lag.unwrap_or(0) > 0 || s.stopped.is_some() {
                    s.since.elapsed()
                } else {
                    Duration::ZERO
                };
                PartitionReport {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: s.next_offset,
                    lag,
                    stuck_for_s: stuck.as_secs(),
                    stalled: s.stopped.is_some() || stuck > self.stall_after,
                    stopped: s.stopped.clone(),
                    error: s.failing.clone(),
                    notice: s.notice.clone(),
                }
            })
            .collect()
    }

    /// Partitions that are stalled or stopped.
    pub fn unhealthy(&self) -> Vec<PartitionReport> {
        self.report().into_iter().filter(|r| r.stalled).collect()
    }

    /// Copies the registry into the gauges (called every second while the
    /// consumers run, so a partition sleeping in a long backoff is still
    /// reported as it stalls).
    pub fn refresh_metrics(&self) {
        for r in self.report() {
            let labels = PartitionLabels {
                topic: r.topic,
                partition: r.partition,
            };
            let m = &self.metrics;
            m.next_offset.get_or_create(&labels).set(r.offset);
            if let Some(lag) = r.lag {
                m.lag.get_or_create(&labels).set(lag);
            }
            m.stalled.get_or_create(&labels).set(i64::from(r.stalled));
            m.stopped
                .get_or_create(&labels)
                .set(i64::from(r.stopped.is_some()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_with_lag_that_does_not_move_is_stalled() {
        let h = ConsumerHealth::new(Duration::from_millis(30), Metrics::new());
        h.started("t", 0, 5);
        h.fetched("t", 0, 9);
        assert!(h.unhealthy().is_empty());
        std::thread::sleep(Duration::from_millis(50));
        let bad = h.unhealthy();
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].offset, bad[0].lag), (5, Some(4)));
        // Moving clears it.
        h.advanced("t", 0, 6);
        assert!(h.unhealthy().is_empty());
        // Caught up is never stalled, however long.
        h.advanced("t", 0, 9);
        h.fetched("t", 0, 9);
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.unhealthy().is_empty());
    }

    #[test]
    fn a_stopped_partition_is_reported_at_once_and_in_the_metrics() {
        let m = Metrics::new();
        let h = ConsumerHealth::new(Duration::from_secs(3600), m.clone());
        h.started("t", 1, 3);
        h.stopped("t", 1, "offset 3 is below the log start 7".into());
        let bad = h.unhealthy();
        assert_eq!(bad.len(), 1);
        assert!(bad[0].stopped.as_deref().unwrap().contains("log start"));
        h.refresh_metrics();
        let text = m.render();
        assert!(
            text.contains(r#"payhook_consumer_stopped{topic="t",partition="1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"payhook_consumer_stalled{topic="t",partition="1"} 1"#),
            "{text}"
        );
        h.resumed("t", 1, 7);
        h.refresh_metrics();
        assert!(h.unhealthy().is_empty());
        assert!(
            m.render()
                .contains(r#"payhook_consumer_stopped{topic="t",partition="1"} 0"#)
        );
    }
}
