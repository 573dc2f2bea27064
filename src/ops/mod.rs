//! The operator commands: everything `payhook` does besides `serve`.
//!
//! - [`migrate`]: apply the `sql/` migrations.
//! - [`topics`]: create the three topics and judge their configuration.
//! - [`status`]: the consumer fleet as Postgres knows it.
//! - [`offsets`]: move a stopped partition's stored offset deliberately.
//! - [`dlq`]: list and replay dead letters.
//! - [`healthcheck`]: probe a running payhook for a container health check.
//!
//! Each command is a function that returns what it found or did, and a
//! `print` that writes it for a person; `main.rs` only chooses the command.
//! They take the whole [`Config`] because each needs several of its
//! sections (the brokers and the database), like `serve`.

pub mod dlq;
pub mod healthcheck;
pub mod offsets;
pub mod status;
pub mod topics;

use crate::{
    config::Config,
    db::{self, DbError},
    kafka::KafkaError,
};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The command's arguments do not fit what the cluster holds.
    #[error("{0}")]
    Invalid(String),
}

/// `payhook migrate`: applies the migrations not applied yet; returns their
/// versions.
pub async fn migrate(cfg: &Config) -> Result<Vec<i32>, OpsError> {
    let pool = db::pool_from_config(&cfg.database, 1)?;
    Ok(db::migrations::run(&pool).await?)
}
