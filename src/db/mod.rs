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
//! - [`retention`]: clearing stored provider payloads older than
//!   `PAYLOAD_RETENTION`.

pub mod leases;
pub mod migrations;
pub mod offsets;
pub mod parked;
pub mod retention;
pub mod store;

use std::{future::Future, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::{NoTls, config::SslMode as PgSslMode};

use crate::{
    config::{DatabaseSettings, DatabaseTls, SslMode, strip_sslmode},
    connect::{self, ConnectError},
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot build the pool: {0}")]
    Build(String),
    #[error("database TLS: {0}")]
    Tls(#[from] ConnectError),
    /// An event disagrees with what its order pinned: the record's data.
    #[error("{0}")]
    Conflict(Box<crate::domain::orders::Conflict>),
    #[error(
        "{what}: no answer from the database within {} (is it hung or unreachable?)",
        humantime::format_duration(*.after)
    )]
    Timeout { what: &'static str, after: Duration },
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

/// A pool error with the database's own reason (a refused certificate, a
/// failed login), which deadpool's message leaves out.
fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    }
}

/// Deadlines and TLS of payhook's database sessions.
#[derive(Clone, Debug)]
pub struct Session {
    pub tls: DatabaseTls,
    /// Making a connection, and waiting for one from the pool.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout`.
    pub statement_timeout: Duration,
    /// Server-side `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Duration,
    /// TCP keepalive idle time.
    pub keepalive: Duration,
}

impl Session {
    pub fn from_config(db: &DatabaseSettings) -> Self {
        Self {
            tls: db.tls(),
            connect_timeout: db.connect_timeout,
            statement_timeout: db.statement_timeout,
            idle_in_transaction_timeout: db.idle_in_transaction_timeout,
            keepalive: db.keepalive,
        }
    }

    /// Plaintext, with the given connect timeout and the defaults of
    /// `Config` for the rest (tests and benches on the local database).
    pub fn plaintext(connect_timeout: Duration) -> Self {
        Self {
            tls: DatabaseTls {
                mode: SslMode::Disable,
                ca_file: None,
            },
            connect_timeout,
            statement_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
        }
    }

    /// How long payhook's client waits for any one database step before it
    /// gives up on it: the server's own statement limit, plus a second for
    /// the server to say so. A database that stops answering without
    /// closing the connection (a hung host, a frozen process) is noticed
    /// after this long.
    pub fn client_deadline(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(1)
    }
}

/// Runs one database step (a checkout, a statement, a whole transaction)
/// with a client-side deadline ([`Session::client_deadline`]). Neither
/// `statement_timeout` (the server enforces it, and a hung server does not)
/// nor TCP keepalives (the kernel of a frozen server still answers them)
/// notice a server that stopped answering; this does.
pub async fn bounded<T, E>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, DbError>
where
    DbError: From<E>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(DbError::from),
        Err(_) => Err(DbError::Timeout { what, after }),
    }
}

impl From<crate::domain::orders::Conflict> for DbError {
    fn from(c: crate::domain::orders::Conflict) -> Self {
        Self::Conflict(Box::new(c))
    }
}

/// Builds a plaintext pool (local database, tests, benches). Connections
/// are made lazily; every wait is bounded so a database outage surfaces as
/// an error instead of a hang.
pub fn pool(url: &str, size: usize, timeout: Duration) -> Result<Pool, DbError> {
    pool_with(url, size, &Session::plaintext(timeout))
}

/// The pool `serve`, `migrate` and the consumers use: `DATABASE_URL` with
/// `DATABASE_SSLMODE`, the CA file, deadlines and keepalives of `db`.
pub fn pool_from_config(db: &DatabaseSettings, size: usize) -> Result<Pool, DbError> {
    pool_with(&db.url, size, &Session::from_config(db))
}

/// Builds a pool with TLS and deadlines:
/// - `sslmode` from `session.tls` (the URL's own `sslmode` is applied by
///   payhook, not tokio-postgres, which knows no `verify-full`);
/// - `statement_timeout` and `idle_in_transaction_session_timeout` set for
///   every session, as startup options;
/// - TCP keepalives (idle `keepalive`, then a probe a second, three misses)
///   so a vanished host or a cut network closes the connection;
/// - a bound on connecting and on every checkout from the pool.
///
/// Errors never contain the URL (it may hold a password).
pub fn pool_with(url: &str, size: usize, session: &Session) -> Result<Pool, DbError> {
    let mut pg: tokio_postgres::Config = strip_sslmode(url)
        .parse()
        .map_err(|_| DbError::Build("DATABASE_URL is not a valid postgres:// URL".into()))?;
    pg.connect_timeout(session.connect_timeout);
    pg.application_name("payhook");
    pg.keepalives(true);
    pg.keepalives_idle(session.keepalive);
    pg.keepalives_interval(Duration::from_secs(1));
    pg.keepalives_retries(3);
    // Unacknowledged data (a request sent to a host that vanished) also
    // fails the connection after this long.
    pg.tcp_user_timeout(session.keepalive + Duration::from_secs(3));
    let ms = |d: Duration| d.as_millis().max(1);
    pg.options(format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        ms(session.statement_timeout),
        ms(session.idle_in_transaction_timeout)
    ));
    let mgr_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match connect::postgres_tls(&session.tls)? {
        None => {
            pg.ssl_mode(PgSslMode::Disable);
            Manager::from_config(pg, NoTls, mgr_config)
        }
        Some(tls) => {
            pg.ssl_mode(PgSslMode::Require);
            Manager::from_config(pg, tls, mgr_config)
        }
    };
    let t = session.connect_timeout;
    Pool::builder(mgr)
        .max_size(size)
        .timeouts(Timeouts {
            wait: Some(t),
            create: Some(t),
            recycle: Some(t),
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
