//! Consumer offsets, stored in Postgres.
//!
//! rskafka has no consumer groups and no offset commits, so payhook keeps the
//! position of each `(consumer_group, topic, partition)` itself, and writes it
//! in the same transaction as the effects of the records it acknowledges.
//! `next_offset` is the offset of the next record to apply (Kafka's meaning:
//! committing N+1 acknowledges N and everything before it).

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{DbError, leases::Lease};

/// The stored position, if any.
pub async fn load(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, DbError> {
    let row = db
        .query_opt(
            "SELECT next_offset FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Why a fenced commit matched nothing. The caller must roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The lease is no longer this member's at this epoch (taken over,
    /// released, or expired): stop consuming the partition.
    Lease,
    /// The lease holds, but the stored position is not the expected one
    /// (an operator's `payhook offsets reset`): resume from it.
    Offset(Option<i64>),
}

/// Moves the position from `expected` to `next`, inside the caller's
/// transaction and **before** its effects: the update requires, and
/// share-locks, the lease row of `member` at `lease.epoch`, unexpired (see
/// [`super::leases`] for why a stale owner therefore cannot commit). The
/// offset row stays locked until the caller commits.
pub async fn advance(
    tx: &deadpool_postgres::Transaction<'_>,
    member: Uuid,
    lease: &Lease,
    expected: Option<i64>,
    next: i64,
) -> Result<Result<(), Fenced>, DbError> {
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
            SET next_offset = $4, lease_epoch = $6, updated_at = now()
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3
            AND next_offset = $7 AND ",
        owned!()
    );
    const FIRST: &str = concat!(
        "INSERT INTO consumer_offsets
                (consumer_group, topic, partition, next_offset, lease_epoch)
         SELECT $1, $2, $3, $4, $6 WHERE ",
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
                ],
            )
            .await?
        }
        None => {
            let stmt = tx.prepare_cached(FIRST).await?;
            tx.execute(
                &stmt,
                &[group, topic, &partition, &next, &member, &lease.epoch],
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

/// Sets the position to `next` whatever it was (an operator's decision:
/// `payhook offsets reset`). Returns the position it replaced. A running
/// consumer notices within seconds: the next fenced write finds a position
/// it did not expect, and a stopped partition polls for exactly this.
pub async fn reset(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<Option<i64>, DbError> {
    let before = load(db, group, topic, partition).await?;
    db.execute(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (consumer_group, topic, partition)
         DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
        &[&group, &topic, &partition, &next],
    )
    .await?;
    Ok(before)
}
