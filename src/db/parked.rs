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
             ON CONFLICT (provider_event_id) DO NOTHING",
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
/// those it applies).
pub async fn waiting(
    tx: &Transaction<'_>,
    provider: &str,
    object_ids: &[String],
) -> Result<Vec<Parked>, DbError> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM parked_disputes
             WHERE provider = $1 AND object_ids && $2::text[]
             ORDER BY kafka_partition, kafka_offset FOR UPDATE"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&provider, &object_ids]).await?;
    Ok(rows.iter().map(parked).collect())
}

/// Up to `limit` disputes parked at or before `before`, oldest first,
/// locked for this transaction; rows another transaction holds are skipped.
pub async fn expired(
    tx: &Transaction<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Parked>, DbError> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM parked_disputes WHERE parked_at <= $1
             ORDER BY parked_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&before, &limit]).await?;
    Ok(rows.iter().map(parked).collect())
}

/// Deletes one parked dispute.
pub async fn remove(tx: &Transaction<'_>, provider_event_id: &str) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM parked_disputes WHERE provider_event_id = $1",
        &[&provider_event_id],
    )
    .await?;
    Ok(())
}

/// How many disputes wait, and since when the oldest.
pub async fn stats(
    client: &tokio_postgres::Client,
) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    let r = client
        .query_one("SELECT count(*), min(parked_at) FROM parked_disputes", &[])
        .await?;
    Ok((r.get(0), r.get(1)))
}
