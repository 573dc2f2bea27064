//! The domain: payment and chargeback webhooks, and what they change.
//!
//! Webhooks are parsed once, at the edge, into types that cannot hold invalid
//! data ([`types`]), from JSON that every later reader, Postgres's `jsonb`
//! included, can hold ([`json`]). Both kinds of event follow one rule
//! ([`apply`]). The services ([`orders::OrderService`],
//! [`disputes::DisputeService`]) decide what a batch of events changes; the
//! storage they use is a trait, implemented over Postgres in [`crate::db`] and
//! in memory ([`model`]: the reference the SQL is tested against). Nothing here does I/O: no HTTP, no
//! Kafka, no SQL.

pub mod apply;
pub mod disputes;
pub mod json;
pub mod model;
pub mod orders;
pub mod types;

pub use types::ValidationError;
