//! Storage: the Postgres pool, migrations, repositories and stored offsets.
//!
//! - [`migrations`]: the files in `sql/`, applied in order, once.
//! - [`store`]: [`store::PgStore`], the domain's storage traits over one
//!   transaction, with set-based SQL (one statement per table per batch).
//! - [`offsets`]: consumer positions, written in the same transaction as the
//!   effects they acknowledge, fenced by the partition's lease.
//! - [`leases`]: which process owns which partition, with epochs (fencing
//!   tokens), heartbeats and expiry.
//! - [`parked`]: disputes waiting for their payment, and the lookups that
//!   resolve a provider's object ids to an order.

pub mod leases;
pub mod migrations;
pub mod offsets;
pub mod parked;
pub mod store;

use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot build the pool: {0}")]
    Build(String),
}

impl DbError {
    /// The server's SQLSTATE, when the server refused a statement (not for
    /// pool timeouts, lost connections or I/O errors).
    pub fn sqlstate(&self) -> Option<&str> {
        let pg = match self {
            Self::Postgres(e) => e,
            Self::Pool(deadpool_postgres::PoolError::Backend(e)) => e,
            _ => return None,
        };
        pg.as_db_error().map(|d| d.code().code())
    }
}

/// tokio-postgres prints a server error as just "db error"; say what the
/// server said, with its SQLSTATE.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Builds a pool. Connections are made lazily; every wait is bounded so a
/// database outage surfaces as an error instead of a hang.
pub fn pool(url: &str, size: usize, timeout: Duration) -> Result<Pool, DbError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::Build(e.to_string()))?;
    let mut pg = pg;
    pg.connect_timeout(timeout);
    pg.application_name("payhook");
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .timeouts(Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// Answers when the database does.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The database's character encoding (`server_encoding`). payhook needs
/// `UTF8`: in any other encoding Postgres refuses the webhooks whose text
/// it cannot represent (a `\u20ac` escape or a `€` in a LATIN1 database),
/// which the edge cannot know about and would have accepted.
pub async fn server_encoding(pool: &Pool) -> Result<String, DbError> {
    let client = pool.get().await?;
    let row = client.query_one("SHOW server_encoding", &[]).await?;
    Ok(row.get(0))
}
