//! Payload retention: the provider's whole object, stored with each event
//! (`payload`, `payload_raw`), is cleared once it is older than
//! `PAYLOAD_RETENTION`, by the time payhook stored it (`stored_at`, the
//! database's clock).
//!
//! Only those two columns are cleared (and `payload_cleared_at` stamped):
//! every column payhook reads stays. The event's identity
//! (`provider`, `provider_event_id`: a redelivery or a replay of it is still
//! a duplicate), its place in the event order (`occurred_at`, `status`), its
//! payment, amounts, refund and object ids (which resolve a provider's
//! disputes), the order, user and where it was read (`kafka_*`). Orders,
//! payments, refunds, disputes and waiting disputes are not touched.
//!
//! Each statement clears at most [`BATCH`] rows of one table, the oldest
//! first, skipping rows another transaction holds, so no statement runs
//! long and several processes may run the job at once.

use std::time::Duration;

use super::DbError;

/// Rows cleared per statement.
pub const BATCH: i64 = 1000;

/// The tables whose events carry a provider payload.
const TABLES: [&str; 2] = ["payment_events", "chargeback_events"];

/// Clears at most [`BATCH`] payloads of `table` stored more than
/// `older_than` ago; returns how many.
async fn clear_batch(
    db: &impl tokio_postgres::GenericClient,
    table: &str,
    older_than: Duration,
) -> Result<u64, DbError> {
    let sql = format!(
        "UPDATE {table}
            SET payload = NULL, payload_raw = NULL, payload_cleared_at = now()
          WHERE id IN (
                SELECT id FROM {table}
                 WHERE payload IS NOT NULL
                   AND stored_at < now() - make_interval(secs => $1)
                 ORDER BY stored_at
                 LIMIT $2
                   FOR UPDATE SKIP LOCKED)"
    );
    Ok(db
        .execute(&sql, &[&older_than.as_secs_f64(), &BATCH])
        .await?)
}

/// Clears the payloads of every event stored more than `older_than` ago, one
/// batch at a time, each bounded by `deadline`; returns how many, per table
/// in [`TABLES`] order. `cleared` hears of each batch as it commits, so a
/// run that fails half-way still counts what it did.
pub async fn clear_payloads(
    pool: &deadpool_postgres::Pool,
    older_than: Duration,
    deadline: Duration,
    mut cleared: impl FnMut(u64),
) -> Result<u64, DbError> {
    let mut total = 0;
    for table in TABLES {
        loop {
            let n = super::bounded("clearing stored payloads", deadline, async {
                let conn = pool.get().await?;
                clear_batch(&**conn, table, older_than).await
            })
            .await?;
            cleared(n);
            total += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}
