//! Which partitions this process consumes, decided with the other payhook
//! processes through Postgres (rskafka has no consumer groups).
//!
//! Every `CONSUMER_LEASE_TTL / 4` this loop:
//! 1. heartbeats this process's member row (alive for one TTL);
//! 2. renews the leases it still holds ([`crate::db::leases::renew`]); a partition
//!    whose lease was taken over meanwhile (this process hung, or was cut
//!    off, longer than a TTL) is stopped here, and its next commit would be
//!    fenced anyway;
//! 3. for each consumed topic, reads the partition list from the broker
//!    (partitions added at runtime get a lease row and are shared like the
//!    others) and works out this process's fair share: ⌊P/N⌋ or ⌈P/N⌉ of
//!    the topic's P partitions among the N live members, dealt by member id
//!    and rotated per topic ([`crate::db::leases::fair_share`]). A lease on
//!    a partition the broker no longer lists is released and never counts
//!    toward a share;
//! 4. holding more than its share, it stops the extra partitions (each
//!    finishes its current transaction) and releases their leases at once;
//!    holding fewer, it acquires free or expired leases, and starts a
//!    partition loop ([`super::partition::PartitionLoop`], reading through
//!    [`super::log::KafkaLog`] and writing through [`super::sink::PgSink`])
//!    for each.
//!
//! Shares are sticky: a process keeps what it holds up to its share, so a
//! member joining or leaving moves only the partitions that must move. A
//! process that shuts down cleanly stops its partitions, releases every
//! lease and deletes its member row, so the others take over on their next
//! tick; one that dies or hangs loses its leases when they expire.

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::{
    committer::Committers,
    config::ConsumerConfig,
    events::PartitionEvents,
    health::ConsumerHealth,
    log::KafkaLog,
    partition::PartitionLoop,
    sink::{DeadLetters, PgSink},
};
use crate::{
    db::{
        DbError,
        leases::{self, Lease},
    },
    kafka::Kafka,
    metrics::Metrics,
};

/// The process-wide handles every partition consumer of this process uses.
#[derive(Clone, Debug)]
pub struct Context {
    /// This process, as the lease tables know it.
    pub member: Uuid,
    pub kafka: Kafka,
    pub pool: Pool,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    pub health: ConsumerHealth,
    /// Where runs of events are committed, combined with other partitions'
    /// ([`super::committer`]); [`Committers::none`] commits each alone.
    pub committers: Committers,
}

/// Consumes one partition, held under `lease`, until `stop` is cancelled
/// (it then finishes its current transaction) or the lease turns out to be
/// lost (a commit is fenced).
async fn consume_partition(
    ctx: Context,
    cfg: Arc<ConsumerConfig>,
    lease: Lease,
    stop: CancellationToken,
) {
    let partition = lease.partition;
    let epoch = lease.epoch;
    let events = PartitionEvents::new(&ctx.metrics, &ctx.health, &cfg.topic, partition);
    let log = KafkaLog::new(
        ctx.kafka.clone(),
        &cfg.topic,
        partition,
        cfg.fetch_max_wait.max(cfg.linger),
    );
    let sink = PgSink {
        pool: ctx.pool.clone(),
        member: ctx.member,
        lease,
        committers: ctx.committers.clone(),
        dead_letters: ctx.dead_letters.clone(),
        events: events.topic().clone(),
        db_deadline: cfg.db_deadline,
        publish_timeout: cfg.publish_timeout,
    };
    PartitionLoop::new(log, sink, cfg, partition, epoch, events, stop)
        .run()
        .await
}

/// A partition consumer this process runs.
struct Running {
    epoch: i64,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

type Key = (String, String, i32);

fn key(l: &Lease) -> Key {
    (l.group.clone(), l.topic.clone(), l.partition)
}

/// Runs the assignment loop for `consumers` (one per consumer group and
/// topic) until `shutdown`, then stops every partition (after its current
/// transaction) and hands all leases back.
pub async fn run(
    ctx: Context,
    consumers: Vec<ConsumerConfig>,
    name: String,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let consumers: Vec<Arc<ConsumerConfig>> = consumers.into_iter().map(Arc::new).collect();
    let mut running: HashMap<Key, Running> = HashMap::new();
    let mut tick = tokio::time::interval((ttl / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(member = %ctx.member, %name, ttl = %humantime::format_duration(ttl), "joining the consumer fleet");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Bounded: a database that hangs must not hold the loop (its leases
        // then expire, and its partitions' commits are fenced).
        let round = step(&ctx, &consumers, &name, ttl, &mut running, &shutdown);
        match tokio::time::timeout(ttl, round).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(member = %ctx.member, error = %e, "partition assignment failed; retrying")
            }
            Err(_) => warn!(member = %ctx.member, "partition assignment timed out; retrying"),
        }
    }
    // Clean exit: partitions stop between transactions, then the leases go.
    for r in running.values() {
        r.stop.cancel();
    }
    for (k, r) in running.drain() {
        let _ = r.handle.await;
        ctx.health.forget(&k.1, k.2);
    }
    let left = async {
        let conn = ctx.pool.get().await.map_err(DbError::from)?;
        leases::leave(&**conn, ctx.member).await
    };
    match tokio::time::timeout(Duration::from_secs(5), left).await {
        Ok(Ok(())) => info!(member = %ctx.member, "left the consumer fleet; leases released"),
        Ok(Err(e)) => warn!(error = %e, "could not release the leases; they expire in one TTL"),
        Err(_) => warn!("releasing the leases timed out; they expire in one TTL"),
    }
}

/// One round of heartbeat, renewal and rebalancing.
async fn step(
    ctx: &Context,
    consumers: &[Arc<ConsumerConfig>],
    name: &str,
    ttl: Duration,
    running: &mut HashMap<Key, Running>,
    shutdown: &CancellationToken,
) -> Result<(), DbError> {
    let conn = ctx.pool.get().await?;
    let me = ctx.member;
    leases::heartbeat(&**conn, me, name, ttl).await?;
    let members = leases::live_members(&**conn).await?;
    let Some(rank) = members.iter().position(|m| *m == me) else {
        return Ok(());
    };
    let mut held = leases::renew(&**conn, me, ttl).await?;

    // Partitions whose lease is gone (or at another epoch) stop now.
    running.retain(|k, r| {
        let still = held
            .iter()
            .any(|l| key(l) == *k && l.epoch == r.epoch && !r.handle.is_finished());
        if !still {
            r.stop.cancel();
            ctx.health.forget(&k.1, k.2);
        }
        still
    });

    for (i, cfg) in consumers.iter().enumerate() {
        let partitions = match ctx.kafka.partitions(&cfg.topic).await {
            Ok(p) => p,
            Err(e) => {
                warn!(topic = %cfg.topic, error = %e, "cannot list partitions; keeping the current assignment");
                continue;
            }
        };
        leases::ensure_partitions(&**conn, &cfg.group, &cfg.topic, &partitions).await?;
        let share = leases::fair_share(partitions.len(), members.len(), rank, i);
        // A lease on a partition the broker no longer lists (the topic was
        // re-created with fewer partitions) is stopped and handed back at
        // once: it must never count toward this member's share, or a real
        // partition could stay unowned while every member is "at its share".
        let gone: Vec<Lease> = held
            .iter()
            .filter(|l| {
                l.group == cfg.group && l.topic == cfg.topic && !partitions.contains(&l.partition)
            })
            .cloned()
            .collect();
        if !gone.is_empty() {
            for l in &gone {
                if let Some(r) = running.remove(&key(l)) {
                    r.stop.cancel();
                    let _ = r.handle.await;
                }
                ctx.health.forget(&l.topic, l.partition);
            }
            let parts: Vec<i32> = gone.iter().map(|l| l.partition).collect();
            leases::release(&**conn, me, &cfg.group, &cfg.topic, &parts).await?;
            held.retain(|l| !gone.contains(l));
            warn!(topic = %cfg.topic, partitions = ?parts,
                  "released leases on partitions the broker no longer lists");
        }
        let mut mine: Vec<Lease> = held
            .iter()
            .filter(|l| l.group == cfg.group && l.topic == cfg.topic)
            .cloned()
            .collect();
        if mine.len() > share {
            // Give back the highest-numbered extras, each after its current
            // transaction.
            mine.sort_by_key(|l| std::cmp::Reverse(l.partition));
            let extra: Vec<Lease> = mine.drain(..mine.len() - share).collect();
            for l in &extra {
                if let Some(r) = running.remove(&key(l)) {
                    r.stop.cancel();
                    let _ = r.handle.await;
                }
                ctx.health.forget(&l.topic, l.partition);
            }
            let parts: Vec<i32> = extra.iter().map(|l| l.partition).collect();
            leases::release(&**conn, me, &cfg.group, &cfg.topic, &parts).await?;
            held.retain(|l| !extra.contains(l));
            info!(topic = %cfg.topic, partitions = ?parts, share, members = members.len(),
                  "released partitions to rebalance");
        } else if mine.len() < share {
            let want = (share - mine.len()) as i64;
            let got = leases::acquire(&**conn, me, &cfg.group, &cfg.topic, &partitions, want, ttl)
                .await?;
            if !got.is_empty() {
                let parts: Vec<(i32, i64)> = got.iter().map(|l| (l.partition, l.epoch)).collect();
                info!(topic = %cfg.topic, partitions_and_epochs = ?parts, share,
                      members = members.len(), "acquired partitions");
            }
            held.extend(got);
        }
    }

    // Every held lease has its consumer.
    for lease in held {
        let k = key(&lease);
        if running.contains_key(&k) {
            continue;
        }
        let Some(cfg) = consumers
            .iter()
            .find(|c| c.group == lease.group && c.topic == lease.topic)
        else {
            continue;
        };
        let stop = shutdown.child_token();
        let epoch = lease.epoch;
        let handle = tokio::spawn(consume_partition(
            ctx.clone(),
            Arc::clone(cfg),
            lease,
            stop.clone(),
        ));
        running.insert(
            k,
            Running {
                epoch,
                stop,
                handle,
            },
        );
    }
    Ok(())
}
