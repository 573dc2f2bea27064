//! Consumer offsets, stored in Postgres.
//!
//! rskafka has no consumer groups and no offset commits, so payhook keeps the
//! position of each `(consumer_group, topic, partition)` itself, and writes it
//! in the same transaction as the effects of the records it acknowledges.
//! `next_offset` is the offset of the next record to apply (Kafka's meaning:
//! committing N+1 acknowledges N and everything before it).

use tokio_postgres::GenericClient;

use super::DbError;

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

/// Moves the position from `expected` to `next`, inside the caller's
/// transaction. Returns `Err(found)` if the stored position is not
/// `expected` (another consumer moved it): the caller must roll back.
pub async fn advance(
    tx: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
    expected: Option<i64>,
    next: i64,
) -> Result<Result<(), Option<i64>>, DbError> {
    let updated = match expected {
        Some(expected) => {
            tx.execute(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3
                   AND next_offset = $5",
                &[&group, &topic, &partition, &next, &expected],
            )
            .await?
        }
        None => {
            tx.execute(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&group, &topic, &partition, &next],
            )
            .await?
        }
    };
    if updated == 1 {
        Ok(Ok(()))
    } else {
        Ok(Err(load(tx, group, topic, partition).await?))
    }
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
