//! When each event's row was committed, for end-to-end latency (202 →
//! committed row); shared by the `e2e` and `users` sections.
//!
//! Why not `stored_at`: its `DEFAULT now()` is the time the consumer's
//! transaction *started*, before the row was even written, let alone
//! committed. Instead the bench database gets a statement-level trigger on
//! `payment_events` that calls `pg_notify` with the partition and offset
//! range each statement inserted. Postgres delivers a notification only
//! when the transaction that sent it commits, so the instant the bench's
//! listening connection receives it is a true "committed and visible" time
//! (late by the delivery, never early). After a run each event's partition
//! and offset are read back and matched to the notification that covered
//! them. The trigger is the bench's only addition to the schema; it adds
//! one small statement to each transaction.
//!
//! The ack instant is when the load generator received the 202: later than
//! payhook sent it by one loopback hop, which makes the figure a hair
//! smaller than the truth.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rskafka::client::partition::{OffsetAt, PartitionClient};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{
    env::{BenchEnv, PARTITIONS},
    report::histogram,
};

const TRIGGER: &str = "
CREATE FUNCTION bench_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('bench_committed', coalesce((
      SELECT string_agg(kafka_partition || ':' || lo || ':' || hi, ',')
      FROM (SELECT kafka_partition, min(kafka_offset) AS lo, max(kafka_offset) AS hi
            FROM new_rows GROUP BY kafka_partition) AS s), ''));
  RETURN NULL;
END $$;
CREATE TRIGGER bench_committed AFTER INSERT ON payment_events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_committed();
";

/// (partition, lowest offset, highest offset, when the commit was seen)
type Commit = (i32, i64, i64, Instant);

/// The trigger and the connection listening to it.
pub struct CommitLog {
    rx: mpsc::UnboundedReceiver<Commit>,
    /// Per partition: (lowest offset, highest offset, seen), by offset.
    seen: HashMap<i32, Vec<(i64, i64, Instant)>>,
    pump: JoinHandle<()>,
    _listener: tokio_postgres::Client,
}

/// End-to-end latencies of one run's acknowledged events.
pub struct Matched {
    /// 202 → commit, in microseconds.
    pub latency: Histogram<u64>,
    /// Acknowledged events with no row or no notification.
    pub missing: u64,
    /// Committed before the 202 reached the load generator (counted as 1 µs).
    pub early: u64,
}

impl CommitLog {
    /// Installs the trigger in `env`'s database and starts listening.
    pub async fn start(env: &BenchEnv, db: &tokio_postgres::Client) -> Self {
        db.batch_execute(TRIGGER)
            .await
            .expect("install the trigger");
        // The listening connection: its messages are read by hand.
        let (listener, mut conn) = tokio_postgres::connect(&env.db_url, NoTls)
            .await
            .expect("connect");
        let (tx, rx) = mpsc::unbounded_channel::<Commit>();
        let pump = tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(msg) = stream.next().await {
                let Ok(AsyncMessage::Notification(n)) = msg else {
                    continue;
                };
                let at = Instant::now();
                for part in n.payload().split(',').filter(|s| !s.is_empty()) {
                    let mut f = part.split(':').map(|v| v.parse::<i64>().unwrap_or(-1));
                    let (Some(p), Some(lo), Some(hi)) = (f.next(), f.next(), f.next()) else {
                        continue;
                    };
                    let _ = tx.send((p as i32, lo, hi, at));
                }
            }
        });
        listener
            .batch_execute("LISTEN bench_committed")
            .await
            .expect("listen");
        Self {
            rx,
            seen: HashMap::new(),
            pump,
            _listener: listener,
        }
    }

    /// Matches the acknowledged events of run `run` ((event number, ack
    /// instant)) to the commits seen so far. Call it once the consumer has
    /// applied them (see [`LogEnd::wait_applied`]).
    pub async fn end_to_end(
        &mut self,
        db: &tokio_postgres::Client,
        run: &str,
        acks: &[(u64, Instant)],
    ) -> Matched {
        // Notifications still on their way from the last commits.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok((p, lo, hi, at)) = self.rx.try_recv() {
            self.seen.entry(p).or_default().push((lo, hi, at));
        }
        for v in self.seen.values_mut() {
            v.sort_unstable_by_key(|c| c.0);
        }
        let prefix = format!("evt_{run}_");
        let rows = db
            .query(
                "SELECT provider_event_id, kafka_partition, kafka_offset FROM payment_events
                  WHERE starts_with(provider_event_id, $1)",
                &[&prefix],
            )
            .await
            .expect("read back");
        let mut where_is: HashMap<u64, (i32, i64)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let id: &str = r.get(0);
            if let Some(n) = id.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()) {
                where_is.insert(n, (r.get(1), r.get(2)));
            }
        }
        let mut m = Matched {
            latency: histogram(),
            missing: 0,
            early: 0,
        };
        for (n, acked) in acks {
            let Some(&(p, off)) = where_is.get(n) else {
                m.missing += 1;
                continue;
            };
            let seen = self.seen.get(&p).and_then(|v| {
                // The last range starting at or before `off`.
                let i = v.partition_point(|c| c.0 <= off).checked_sub(1)?;
                let (_, hi, at) = v[i];
                (off <= hi).then_some(at)
            });
            match seen {
                Some(at) if at >= *acked => {
                    let _ = m.latency.record((at - *acked).as_micros().max(1) as u64);
                }
                Some(_) => {
                    m.early += 1;
                    let _ = m.latency.record(1);
                }
                None => {
                    m.missing += 1;
                    if std::env::var_os("PAYHOOK_BENCH_DEBUG").is_some() && m.missing < 6 {
                        let v = self.seen.get(&p).cloned().unwrap_or_default();
                        let i = v.partition_point(|c| c.0 <= off);
                        let near: Vec<_> = v[i.saturating_sub(3)..(i + 2).min(v.len())]
                            .iter()
                            .map(|c| (c.0, c.1))
                            .collect();
                        eprintln!("unmatched p{p} off {off}: ranges near {near:?}");
                    }
                }
            }
        }
        m
    }

    pub fn stop(self) {
        self.pump.abort();
    }
}

/// The orders topic's log end and how far the consumer group has applied
/// it (`consumer_offsets`, as [`BenchEnv::stored_total`] reads).
pub struct LogEnd {
    partitions: Vec<PartitionClient>,
    group: String,
}

impl LogEnd {
    pub async fn new(env: &BenchEnv) -> Self {
        let mut partitions = Vec::new();
        for p in 0..PARTITIONS as i32 {
            partitions.push(
                env.kafka
                    .partition_client(&env.orders_topic, p)
                    .await
                    .expect("partition client"),
            );
        }
        Self {
            partitions,
            group: env.config(&[]).kafka.orders_consumer_group,
        }
    }

    /// Sum over the partitions of the next offset to be written.
    pub async fn total(&self) -> i64 {
        let mut total = 0;
        for c in &self.partitions {
            total += c.get_offset(OffsetAt::Latest).await.expect("end offset");
        }
        total
    }

    /// Records in the log not yet applied: log end − stored next offsets.
    /// The stored offsets are read first, so the figure is never below the
    /// true lag (nor below zero).
    pub async fn lag(&self, env: &BenchEnv, db: &tokio_postgres::Client) -> i64 {
        let stored = env.stored_total(db, &self.group).await;
        self.total().await - stored
    }

    /// Waits (at most `limit`) until the consumer has applied everything in
    /// the log now; how long that took, or `None` if it did not.
    pub async fn wait_applied(
        &self,
        env: &BenchEnv,
        db: &tokio_postgres::Client,
        limit: Duration,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        let end = self.total().await;
        while env.stored_total(db, &self.group).await < end {
            if t0.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(t0.elapsed())
    }
}
