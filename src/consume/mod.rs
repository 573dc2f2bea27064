//! The consumer pipeline: records from Kafka applied to Postgres, once each.
pub mod classify;
pub mod committer;
pub mod dlq;
pub mod fleet;
pub mod health;
pub mod partition;
pub mod waiting;
