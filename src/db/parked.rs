//! Disputes waiting for their payment: the `parked_disputes` table and the
//! lookups that resolve a provider's object ids to an order.
//!
//! Every call runs in the caller's transaction. [`lock_objects`] comes
//! first on both sides (the dispute that looks for its payment, the payment
//! that looks for waiting disputes): with the lock held, each side's next
//! statement sees what the other committed, so a dispute and its payment
//! consumed at the same moment never both miss each other.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::DbError;
use crate::domain::{disputes::PendingChargeback, orders::SourcePosition};

/// Takes a transaction-scoped advisory lock per `provider:object_id`, in
/// one sorted order (so two transactions never wait on each other in a
/// cycle). Released at commit or rollback.
pub async fn lock_objects(tx: &Transaction<'_>, keys: &[String]) -> Result<(), DbError> {
    if keys.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7)))
             FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS u(k) ORDER BY k) AS s",
        )
        .await?;
    tx.query_one(&stmt, &[&keys]).await?;
    Ok(())
}

/// The lock key of one object.
pub fn lock_key(provider: &str, object_id: &str) -> String {
    format!("{provider}:{object_id}")
}

/// The order of the first stored payment event of `provider` that names
/// one of `object_ids`.
pub async fn order_of(
    tx: &Transaction<'_>,
    provider: &str,
    object_ids: &[String],
) -> Result<Option<String>, DbError> {
    let stmt = tx
        .prepare_cached(
            "SELECT order_id FROM payment_events
             WHERE provider = $1 AND provider <> 'generic' AND provider_object_ids && $2::text[]
             ORDER BY id LIMIT 1",
        )
        .await?;
    Ok(tx
        .query_opt(&stmt, &[&provider, &object_ids])
        .await?
        .map(|r| r.get(0)))
}

/// Parks a dispute; a repeat of one already waiting changes nothing.
/// Returns whether it was new.
pub async fn park(tx: &Transaction<'_>, p: &PendingChargeback) -> Result<bool, DbError> {
    let e = &p.event;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO parked_disputes (provider_event_id, provider, object_ids, record_key,
                                          record_value, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (provider, provider_event_id) DO NOTHING",
        )
        .await?;
    let n = tx
        .execute(
            &stmt,
            &[
                &e.webhook.provider_event_id.as_str(),
                &e.origin.provider,
                &e.origin.object_ids,
                &p.record_key,
                &p.record_value,
                &e.source.topic,
                &e.source.partition,
                &e.source.offset,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// A dispute that waited, as stored.
#[derive(Clone, Debug)]
pub struct Parked {
    pub provider_event_id: String,
    pub provider: String,
    pub object_ids: Vec<String>,
    pub record_key: String,
    pub record_value: String,
    pub source: SourcePosition,
    pub parked_at: DateTime<Utc>,
}

const COLUMNS: &str = "provider_event_id, provider, object_ids, record_key, record_value, \
                       kafka_topic, kafka_partition, kafka_offset, parked_at";

fn parked(r: &tokio_postgres::Row) -> Parked {
    Parked {
        provider_event_id: r.get(0),
        provider: r.get(1),
        object_ids: r.get(2),
        record_key: r.get(3),
        record_value: r.get(4),
        source: SourcePosition {
            topic: r.get(5),
            partition: r.get(6),
            offset: r.get(7),
        },
        parked_at: r.get(8),
    }
}

/// The disputes of `provider` waiting for any of `object_ids`, in the
/// order they arrived, locked for this transaction (the caller removes
/// those it applies). A dispute the sweeper claimed is not waiting any more
/// (it goes to the dead-letter topic), and a row another transaction holds
/// is skipped rather than waited for: it is being claimed or released.
pub async fn waiting(
    tx: &Transaction<'_>,
    provider: &str,
    object_ids: &[String],
) -> Result<Vec<Parked>, DbError> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM parked_disputes
             WHERE provider = $1 AND object_ids && $2::text[]
               AND dead_letter_claimed_until IS NULL
             ORDER BY kafka_partition, kafka_offset FOR UPDATE SKIP LOCKED"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&provider, &object_ids]).await?;
    Ok(rows.iter().map(parked).collect())
}

/// Claims one dispute for the dead-letter topic: the oldest that has
/// waited `wait` or longer by the database's clock, or one whose earlier
/// claim expired (its sweeper died before deleting it). The claim lasts
/// `claim_for`; from now on [`waiting`] no longer returns it. One statement
/// on its own: it holds its row lock only while it runs, and skips rows a
/// payment's transaction holds.
pub async fn claim_expired(
    db: &impl tokio_postgres::GenericClient,
    wait: std::time::Duration,
    claim_for: std::time::Duration,
) -> Result<Option<Parked>, DbError> {
    let sql = format!(
        "UPDATE parked_disputes p
            SET dead_letter_claimed_until = now() + make_interval(secs => $2)
          WHERE (p.provider, p.provider_event_id) = (
                SELECT provider, provider_event_id FROM parked_disputes
                 WHERE (dead_letter_claimed_until IS NULL
                        AND parked_at <= now() - make_interval(secs => $1))
                    OR dead_letter_claimed_until < now()
                 ORDER BY parked_at LIMIT 1
                   FOR UPDATE SKIP LOCKED)
        RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("p.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = db
        .query_opt(&sql, &[&wait.as_secs_f64(), &claim_for.as_secs_f64()])
        .await?;
    Ok(row.as_ref().map(parked))
}

/// Deletes a claimed dispute once its dead letter is acknowledged.
pub async fn remove_claimed(
    db: &impl tokio_postgres::GenericClient,
    provider: &str,
    provider_event_id: &str,
) -> Result<(), DbError> {
    db.execute(
        "DELETE FROM parked_disputes
          WHERE provider = $1 AND provider_event_id = $2
            AND dead_letter_claimed_until IS NOT NULL",
        &[&provider, &provider_event_id],
    )
    .await?;
    Ok(())
}

/// Deletes one released dispute, in the payment's transaction.
pub async fn remove(
    tx: &Transaction<'_>,
    provider: &str,
    provider_event_id: &str,
) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM parked_disputes WHERE provider = $1 AND provider_event_id = $2",
        &[&provider, &provider_event_id],
    )
    .await?;
    Ok(())
}

/// How many disputes wait, and how long the oldest has (by the database's
/// clock).
pub async fn stats(client: &tokio_postgres::Client) -> Result<(i64, std::time::Duration), DbError> {
    let r = client
        .query_one(
            "SELECT count(*),
                    coalesce(extract(epoch FROM now() - min(parked_at)), 0)::float8
               FROM parked_disputes",
            &[],
        )
        .await?;
    let secs: f64 = r.get(1);
    Ok((r.get(0), std::time::Duration::from_secs_f64(secs.max(0.0))))
}
