//! payhook: payment-provider webhooks over HTTP, queued in Kafka, applied to
//! Postgres exactly once, in order per order.
//!
//! # Layout
//!
//! ```text
//! HTTP webhook ─▶ http ─▶ providers ─▶ kafka::producer ─▶ Kafka ─▶ consume ─▶ domain ─▶ db ─▶ Postgres
//!   (hyper 1)    transport  verify,     per-partition              fleet of     orders,   effects and
//!                → 202      split, map  batches, acks=all          partition    disputes  offsets in one
//!                once acked             bounded                    loops                  fenced transaction
//! ```
//!
//! The layers, bottom to top. A module imports from its own layer and the
//! ones below, never from above, and no two modules import each other
//! (`tests/it/layout.rs` reads the source and checks both).
//!
//! - Read by every layer: [`config`] (the settings, one section per part of
//!   the service; each module takes only its own), [`version`], [`metrics`]
//!   (served at `GET /metrics`) and [`logging`].
//! - [`domain`]: payment and chargeback webhooks as validated types, the
//!   event-order rule, and the services that decide what a batch of events
//!   changes, over a storage trait. No I/O.
//! - [`connect`]: settings into secured connections: TLS (the pure-Rust
//!   graviola provider) and SASL for Kafka, TLS for Postgres, and the
//!   in-process tunnel through which rskafka reaches brokers over TLS
//!   ([`connect::tunnel`]).
//! - [`db`]: the Postgres pool, migrations from `sql/`, the repositories that
//!   carry out the domain's decisions, stored offsets and partition leases,
//!   and the clearing of old provider payloads (`PAYLOAD_RETENTION`).
//! - [`kafka`]: the wire. The client with a deadline on every call, the
//!   admin connection, the envelope codec, the Java-compatible partitioner,
//!   the batching producer, topic checks. Knows no Postgres and no provider.
//! - [`consume`]: the pipeline. The fleet deals partitions through leases;
//!   a partition loop per owned partition (a state machine over a fetch seam
//!   and a database seam) applies records in fenced transactions, isolates a
//!   failing record by halving, dead-letters what can never succeed, and
//!   classifies every failure in one place ([`consume::classify`]).
//! - [`providers`]: one module per payment provider (generic, Stripe,
//!   Adyen): verify a request ([`providers::signature`]), split it into
//!   events, map each onto a payment or dispute event, answer.
//! - [`http`]: the transport. A bare hyper 1 server; routes, limits and
//!   timeouts, and the single place that maps errors to HTTP answers
//!   ([`http::error`]).
//! - [`app`]: `serve`: build the pieces from the configuration, run them
//!   (the payload retention job among them), stop them in order.
//! - [`ops`]: the operator commands (`migrate`, `topics`, `status`,
//!   `offsets reset`, `dlq list|replay`, `healthcheck`).
//! - `main.rs`: the command line only ([`config::cli`] turns every setting
//!   into a flag with its environment variable).
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod connect;
pub mod consume;
pub mod db;
pub mod domain;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod providers;
pub mod version;
