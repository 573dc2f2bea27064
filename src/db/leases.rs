//! Partition ownership, stored in Postgres: members, leases and their
//! epochs (schema: `sql/0003_partition_leases.sql`).
//!
//! What each row means:
//! - a `consumer_members` row is a running payhook process; it is alive
//!   while `expires_at` (pushed forward by [`heartbeat`]) is in the future;
//! - a `partition_leases` row says which member owns one partition of one
//!   consumer group's topic, until when, and at which **epoch**; the epoch
//!   grows by one each time the partition changes hands ([`acquire`]), and
//!   is the fencing token every commit must present;
//! - a `partition_lease_history` row records one epoch: owner, when it was
//!   acquired, and until when it was valid (renewals move it forward, a
//!   release sets it to the release time).
//!
//! Which statement does what:
//! - [`acquire`] takes free or expired leases (`owner IS NULL OR expires_at
//!   < now()`), `FOR UPDATE SKIP LOCKED` so it never waits for a lease in
//!   use, and bumps their epoch;
//! - [`renew`] pushes `expires_at` forward on every lease this member still
//!   owns and returns them: a lease taken over meanwhile is simply absent;
//! - [`release`] and [`leave`] hand leases back at once (clean shutdown,
//!   rebalancing), so the next owner need not wait for expiry.
//!
//! Lock order: every statement that locks several lease rows locks them in
//! one order, by `(consumer_group, topic, partition)`: [`renew`],
//! [`release`] and [`leave`] select their rows `ORDER BY … FOR UPDATE`
//! before updating them, and a transaction that fences several partitions
//! ([`crate::consume::unit::commit_combined`]) fences them in that order.
//! Two of them therefore never wait on each other in a cycle (a renewal
//! that updated rows in heap order while a shared transaction held some of
//! them `FOR SHARE` could deadlock, 40P01). [`acquire`] skips locked rows
//! and waits for none.
//!
//! Why a stale owner cannot write: the commit of every effect transaction
//! ([`super::offsets::advance`]) requires a lease row with this member,
//! this epoch and `expires_at > now()`, and share-locks it. A takeover must
//! update that row, so it waits for a transaction already past that check
//! to end; once the takeover is done the epoch differs and every later
//! commit of the old owner matches nothing and rolls back. All times are the
//! database's clock, so the processes' clocks do not matter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// One partition held by this member, at an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub epoch: i64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn leases(rows: Vec<tokio_postgres::Row>) -> Vec<Lease> {
    let mut out: Vec<Lease> = rows
        .iter()
        .map(|r| Lease {
            group: r.get(0),
            topic: r.get(1),
            partition: r.get(2),
            epoch: r.get(3),
        })
        .collect();
    out.sort();
    out
}

/// Registers the member or keeps it alive for `ttl`.
pub async fn heartbeat(
    db: &impl GenericClient,
    member: Uuid,
    name: &str,
    ttl: Duration,
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO consumer_members (member_id, name, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         ON CONFLICT (member_id) DO UPDATE
            SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at",
        &[&member, &name, &secs(ttl)],
    )
    .await?;
    Ok(())
}

/// Live members, in member id order (the order shares are dealt in).
pub async fn live_members(db: &impl GenericClient) -> Result<Vec<Uuid>, DbError> {
    let rows = db
        .query(
            "SELECT member_id FROM consumer_members WHERE expires_at > now() ORDER BY member_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Makes sure every partition of the topic has a lease row (partitions
/// added at runtime get theirs here).
pub async fn ensure_partitions(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO partition_leases (consumer_group, topic, partition)
         SELECT $1, $2, p FROM unnest($3::int4[]) AS p
         ON CONFLICT DO NOTHING",
        &[&group, &topic, &partitions],
    )
    .await?;
    Ok(())
}

/// Pushes every lease this member still owns `ttl` into the future and
/// returns them.
pub async fn renew(
    db: &impl GenericClient,
    member: Uuid,
    ttl: Duration,
) -> Result<Vec<Lease>, DbError> {
    let rows = db
        .query(
            "WITH mine AS (
                 SELECT consumer_group, topic, partition FROM partition_leases
                  WHERE owner = $1
                  ORDER BY consumer_group, topic, partition
                    FOR UPDATE
             ), r AS (
                 UPDATE partition_leases l
                    SET expires_at = now() + make_interval(secs => $2)
                   FROM mine
                  WHERE l.consumer_group = mine.consumer_group AND l.topic = mine.topic
                    AND l.partition = mine.partition AND l.owner = $1
                 RETURNING l.consumer_group, l.topic, l.partition, l.epoch, l.expires_at
             ), h AS (
                 UPDATE partition_lease_history h SET valid_until = r.expires_at
                   FROM r
                  WHERE h.consumer_group = r.consumer_group AND h.topic = r.topic
                    AND h.partition = r.partition AND h.epoch = r.epoch
             )
             SELECT consumer_group, topic, partition, epoch FROM r",
            &[&member, &secs(ttl)],
        )
        .await?;
    Ok(leases(rows))
}

/// Takes up to `max` free or expired leases of the topic's `partitions`
/// (the ones the broker lists now), bumping their epoch.
pub async fn acquire(
    db: &impl GenericClient,
    member: Uuid,
    group: &str,
    topic: &str,
    partitions: &[i32],
    max: i64,
    ttl: Duration,
) -> Result<Vec<Lease>, DbError> {
    if max <= 0 {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "WITH free AS (
                 SELECT consumer_group, topic, partition FROM partition_leases
                  WHERE consumer_group = $2 AND topic = $3 AND partition = ANY($6)
                    AND (owner IS NULL OR expires_at < now())
                  ORDER BY partition
                  LIMIT $4
                    FOR UPDATE SKIP LOCKED
             ), a AS (
                 UPDATE partition_leases l
                    SET owner = $1, epoch = l.epoch + 1, acquired_at = now(),
                        expires_at = now() + make_interval(secs => $5)
                   FROM free
                  WHERE l.consumer_group = free.consumer_group AND l.topic = free.topic
                    AND l.partition = free.partition
                    AND (l.owner IS NULL OR l.expires_at < now())
                 RETURNING l.consumer_group, l.topic, l.partition, l.epoch,
                           l.acquired_at, l.expires_at
             ), h AS (
                 INSERT INTO partition_lease_history
                        (consumer_group, topic, partition, epoch, owner, acquired_at, valid_until)
                 SELECT consumer_group, topic, partition, epoch, $1, acquired_at, expires_at FROM a
             )
             SELECT consumer_group, topic, partition, epoch FROM a",
            &[&member, &group, &topic, &max, &secs(ttl), &partitions],
        )
        .await?;
    Ok(leases(rows))
}

/// Hands the given partitions of the topic back at once.
pub async fn release(
    db: &impl GenericClient,
    member: Uuid,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<u64, DbError> {
    Ok(db
        .execute(
            "WITH mine AS (
                 SELECT consumer_group, topic, partition FROM partition_leases
                  WHERE owner = $1 AND consumer_group = $2 AND topic = $3
                    AND partition = ANY($4)
                  ORDER BY consumer_group, topic, partition
                    FOR UPDATE
             ), r AS (
                 UPDATE partition_leases l SET owner = NULL, expires_at = now()
                   FROM mine
                  WHERE l.consumer_group = mine.consumer_group AND l.topic = mine.topic
                    AND l.partition = mine.partition AND l.owner = $1
                 RETURNING l.consumer_group, l.topic, l.partition, l.epoch
             )
             UPDATE partition_lease_history h SET valid_until = now()
               FROM r
              WHERE h.consumer_group = r.consumer_group AND h.topic = r.topic
                AND h.partition = r.partition AND h.epoch = r.epoch",
            &[&member, &group, &topic, &partitions],
        )
        .await?)
}

/// A clean exit: every lease handed back, the member gone.
pub async fn leave(db: &impl GenericClient, member: Uuid) -> Result<(), DbError> {
    db.execute(
        "WITH mine AS (
             SELECT consumer_group, topic, partition FROM partition_leases
              WHERE owner = $1
              ORDER BY consumer_group, topic, partition
                FOR UPDATE
         ), r AS (
             UPDATE partition_leases l SET owner = NULL, expires_at = now()
               FROM mine
              WHERE l.consumer_group = mine.consumer_group AND l.topic = mine.topic
                AND l.partition = mine.partition AND l.owner = $1
             RETURNING l.consumer_group, l.topic, l.partition, l.epoch
         ), h AS (
             UPDATE partition_lease_history h SET valid_until = now()
               FROM r
              WHERE h.consumer_group = r.consumer_group AND h.topic = r.topic
                AND h.partition = r.partition AND h.epoch = r.epoch
         )
         DELETE FROM consumer_members WHERE member_id = $1",
        &[&member],
    )
    .await?;
    Ok(())
}

/// How many of `partitions` the member at `rank` among `members` should own:
/// ⌊P/N⌋, or ⌈P/N⌉ for the first P mod N ranks. `offset` rotates the ranks
/// per topic, so the members that get one more differ from topic to topic.
pub fn fair_share(partitions: usize, members: usize, rank: usize, offset: usize) -> usize {
    if members == 0 {
        return 0;
    }
    let rotated = (rank + members - offset % members) % members;
    partitions / members + usize::from(rotated < partitions % members)
}

/// A member as `payhook status` shows it.
#[derive(Clone, Debug)]
pub struct MemberRow {
    pub member_id: Uuid,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub alive: bool,
}

/// A partition as `payhook status` shows it.
#[derive(Clone, Debug)]
pub struct PartitionRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub owner: Option<Uuid>,
    pub epoch: i64,
    pub lease_valid: bool,
    pub stored_offset: Option<i64>,
}

/// Members and partitions, for `payhook status`.
pub async fn fleet(
    db: &impl GenericClient,
) -> Result<(Vec<MemberRow>, Vec<PartitionRow>), DbError> {
    let members = db
        .query(
            "SELECT member_id, name, started_at, heartbeat_at, expires_at > now()
               FROM consumer_members ORDER BY started_at, member_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| MemberRow {
            member_id: r.get(0),
            name: r.get(1),
            started_at: r.get(2),
            heartbeat_at: r.get(3),
            alive: r.get(4),
        })
        .collect();
    let partitions = db
        .query(
            "SELECT l.consumer_group, l.topic, l.partition, l.owner, l.epoch,
                    l.owner IS NOT NULL AND l.expires_at > now(), o.next_offset
               FROM partition_leases l
               LEFT JOIN consumer_offsets o USING (consumer_group, topic, partition)
              ORDER BY l.consumer_group, l.topic, l.partition",
            &[],
        )
        .await?
        .iter()
        .map(|r| PartitionRow {
            group: r.get(0),
            topic: r.get(1),
            partition: r.get(2),
            owner: r.get(3),
            epoch: r.get(4),
            lease_valid: r.get(5),
            stored_offset: r.get(6),
        })
        .collect();
    Ok((members, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_fair_and_add_up() {
        for p in 0..40 {
            for n in 1..7 {
                for offset in 0..3 {
                    let shares: Vec<usize> = (0..n).map(|r| fair_share(p, n, r, offset)).collect();
                    assert_eq!(shares.iter().sum::<usize>(), p, "{p}/{n}");
                    assert!(shares.iter().all(|&s| s == p / n || s == p.div_ceil(n)));
                }
            }
        }
        // The extra partition goes to another member on the next topic.
        assert_eq!(fair_share(8, 3, 0, 0), 3);
        assert_eq!(fair_share(8, 3, 2, 0), 2);
        assert_eq!(fair_share(8, 3, 2, 1), 3);
        assert_eq!(fair_share(8, 3, 0, 1), 2);
    }
}
