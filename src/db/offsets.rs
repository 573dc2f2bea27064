//! Consumer offsets, stored in Postgres.
//!
//! rskafka has no consumer groups and no offset commits, so payhook keeps the
//! position of each `(consumer_group, topic, partition)` itself, and writes it
//! in the same transaction as the effects of the records it acknowledges.
//! `next_offset` is the offset of the next record to apply (Kafka's meaning:
//! committing N+1 acknowledges N and everything before it).
//!
//! With it: the Kafka topic ID of the log the offset belongs to, and the
//! digest of the record at `next_offset - 1` (`sql/0005_log_identity.sql`),
//! by which the consumer recognises that the log it reads is still the one
//! it applied.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{DbError, leases::Lease};

/// What the database holds for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub next: i64,
    /// The topic ID of the log `next` belongs to; `None` for a row written
    /// before payhook stored IDs, or by hand.
    pub topic_id: Option<Uuid>,
    /// SHA-256 of the record at `next - 1` (see
    /// [`crate::kafka::record_digest`]); `None` until a commit after a reset.
    pub digest: Option<[u8; 32]>,
}

/// The stored position, if any.
pub async fn load(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, DbError> {
    Ok(load_stored(db, group, topic, partition)
        .await?
        .map(|s| s.next))
}

/// The stored position with the identity of its log, if any.
pub async fn load_stored(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<Stored>, DbError> {
    let row = db
        .query_opt(
            "SELECT next_offset, topic_id, last_record_digest FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await?;
    Ok(row.map(|r| {
        let digest: Option<Vec<u8>> = r.get(2);
        Stored {
            next: r.get(0),
            topic_id: r.get(1),
            digest: digest.and_then(|d| <[u8; 32]>::try_from(d).ok()),
        }
    }))
}

/// Why a fenced commit matched nothing. The caller must roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The lease is no longer this member's at this epoch (taken over,
    /// released, or expired): stop consuming the partition.
    Lease,
    /// The lease holds, but the stored position is not the expected one, or
    /// belongs to another topic ID (an operator's `payhook offsets reset`):
    /// start again from what is stored.
    Offset(Option<i64>),
}

/// Where a commit moves the stored position, and what it says of the log.
#[derive(Clone, Copy, Debug)]
pub struct Advance {
    /// The position the consumer expects the database to hold.
    pub expected: Option<i64>,
    pub next: i64,
    /// The topic ID the consumer reads; the row must hold it (or none yet).
    pub topic_id: Uuid,
    /// SHA-256 of the record at `next - 1`.
    pub digest: [u8; 32],
}

/// Moves the position from `a.expected` to `a.next`, inside the caller's
/// transaction and **before** its effects: the update requires, and
/// share-locks, the lease row of `member` at `lease.epoch`, unexpired (see
/// [`super::leases`] for why a stale owner therefore cannot commit), and a
/// row of the same topic ID (or of none yet, which it then takes). The
/// offset row stays locked until the caller commits.
pub async fn advance(
    tx: &deadpool_postgres::Transaction<'_>,
    member: Uuid,
    lease: &Lease,
    a: Advance,
) -> Result<Result<(), Fenced>, DbError> {
    let Advance {
        expected,
        next,
        topic_id,
        digest,
    } = a;
    let digest = &digest[..];
    // The lease check of both statements: this member, this epoch, not
    // expired, and the row share-locked until commit. Prepared once per
    // pooled connection, like every statement of a consumer transaction.
    macro_rules! owned {
        () => {
            "EXISTS (SELECT 1 FROM partition_leases l
                 WHERE l.consumer_group = $1 AND l.topic = $2 AND l.partition = $3
                   AND l.owner = $5 AND l.epoch = $6 AND l.expires_at > now()
                 FOR SHARE)"
        };
    }
    const MOVE: &str = concat!(
        "UPDATE consumer_offsets
            SET next_offset = $4, lease_epoch = $6, updated_at = now(),
                topic_id = $8, last_record_digest = $9
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3
            AND next_offset = $7 AND coalesce(topic_id = $8, true) AND ",
        owned!()
    );
    const FIRST: &str = concat!(
        "INSERT INTO consumer_offsets
                (consumer_group, topic, partition, next_offset, lease_epoch,
                 topic_id, last_record_digest)
         SELECT $1, $2, $3, $4, $6, $7, $8 WHERE ",
        owned!(),
        " ON CONFLICT DO NOTHING"
    );
    let (group, topic, partition) = (&lease.group, &lease.topic, lease.partition);
    let updated = match expected {
        Some(expected) => {
            let stmt = tx.prepare_cached(MOVE).await?;
            tx.execute(
                &stmt,
                &[
                    group,
                    topic,
                    &partition,
                    &next,
                    &member,
                    &lease.epoch,
                    &expected,
                    &topic_id,
                    &digest,
                ],
            )
            .await?
        }
        None => {
            let stmt = tx.prepare_cached(FIRST).await?;
            tx.execute(
                &stmt,
                &[
                    group,
                    topic,
                    &partition,
                    &next,
                    &member,
                    &lease.epoch,
                    &topic_id,
                    &digest,
                ],
            )
            .await?
        }
    };
    if updated == 1 {
        return Ok(Ok(()));
    }
    let still_ours = tx
        .query_opt(
            "SELECT 1 FROM partition_leases
              WHERE consumer_group = $1 AND topic = $2 AND partition = $3
                AND owner = $4 AND epoch = $5 AND expires_at > now()",
            &[group, topic, &partition, &member, &lease.epoch],
        )
        .await?
        .is_some();
    if !still_ours {
        return Ok(Err(Fenced::Lease));
    }
    Ok(Err(Fenced::Offset(
        load(&**tx, group, topic, partition).await?,
    )))
}

/// Sets the position to `next` of the log with `topic_id`, whatever it was
/// (an operator's decision: `payhook offsets reset`), forgetting the last
/// record's digest. Returns what it replaced. A running consumer notices
/// within seconds: the next fenced write finds a position it did not
/// expect, and a stopped partition polls for exactly this.
pub async fn reset(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
    next: i64,
    topic_id: Option<Uuid>,
) -> Result<Option<Stored>, DbError> {
    let before = load_stored(db, group, topic, partition).await?;
    db.execute(
        "INSERT INTO consumer_offsets
                (consumer_group, topic, partition, next_offset, topic_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (consumer_group, topic, partition)
         DO UPDATE SET next_offset = EXCLUDED.next_offset, topic_id = EXCLUDED.topic_id,
                       last_record_digest = NULL, updated_at = now()",
        &[&group, &topic, &partition, &next, &topic_id],
    )
    .await?;
    Ok(before)
}
