//! Schema migrations: the files in `sql/`, compiled into the binary and
//! applied in order. Each runs in its own transaction together with its row in
//! `schema_migrations`, under an advisory lock so that two processes starting
//! at once do not race.

use deadpool_postgres::Pool;

use super::DbError;

/// `(version, name, sql)`, in order. Add new files at the end; never edit one
/// that has shipped.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../sql/0001_init.sql")),
    (
        2,
        "event_order",
        include_str!("../../sql/0002_event_order.sql"),
    ),
    (
        3,
        "partition_leases",
        include_str!("../../sql/0003_partition_leases.sql"),
    ),
    (4, "providers", include_str!("../../sql/0004_providers.sql")),
    (
        5,
        "log_identity",
        include_str!("../../sql/0005_log_identity.sql"),
    ),
    (
        6,
        "scoped_payments",
        include_str!("../../sql/0006_scoped_payments.sql"),
    ),
    (
        7,
        "payload_retention",
        include_str!("../../sql/0007_payload_retention.sql"),
    ),
];

/// An arbitrary constant: the advisory lock that serialises migrations.
const LOCK_KEY: i64 = 0x0070_6179_686f_6f6b;

/// Applies what has not been applied; returns the versions applied now.
pub async fn run(pool: &Pool) -> Result<Vec<i32>, DbError> {
    let mut client = pool.get().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // payhook's sessions run with DATABASE_STATEMENT_TIMEOUT, sized for
        // the consumer's small batches. A migration may build an index on a
        // big table or wait for another instance's migration: no limit here.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, &name],
            )
            .await?;
            applied.push(version);
        }
        tx.commit().await?;
    }
    Ok(applied)
}
