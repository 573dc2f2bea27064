//! payhook: payment-provider webhooks over HTTP, queued in Kafka, applied to
//! Postgres exactly once, in order per order.
//!
//! # Layout
//!
//! ```text
//! HTTP webhook ─▶ http ─▶ messaging::producer ─▶ Kafka ─▶ messaging::consumer ─▶ domain ─▶ db
//!   (hyper 1)     parse &   per-partition batches          per-partition loop     orders /    Postgres:
//!                 validate  acks=all, bounded              offsets in the same    disputes    effects +
//!                 → 202                                    transaction as effect              offsets
//! ```
//!
//! - [`config`]: one [`config::Config`], read from the environment once and
//!   validated once.
//! - [`http`]: the transport. A bare hyper 1 server; routes, limits and
//!   timeouts, and the single place that maps errors to HTTP answers
//!   ([`http::error`]).
//! - [`providers`]: one module per payment provider (generic, Stripe,
//!   Adyen): how to verify a request (the signature schemes live here,
//!   [`providers::signature`]), split it into events, map each onto a
//!   payment or dispute event, and answer.
//! - [`messaging`]: the Kafka side. The [`messaging::envelope`] wrapped around
//!   every webhook, the Java-compatible [`messaging::partitioner`], the
//!   batching [`messaging::producer`] and the hand-rolled
//!   [`messaging::consumer`] loop.
//! - [`domain`]: payment and chargeback webhooks as validated types, and the
//!   services that decide what an event changes. No HTTP, Kafka or SQL here.
//! - [`db`]: the Postgres pool, migrations from `sql/`, the repositories that
//!   carry out the domain's decisions, and the stored consumer offsets.
//! - [`connect`]: the one place that turns settings into secured
//!   connections: TLS (the pure-Rust graviola provider), SASL, Postgres
//!   `sslmode`, and the admin connection that creates and checks topic
//!   configurations ([`messaging::topics`]).
//! - [`error`]: the one place that classifies failures as transient or
//!   permanent, and the one retry policy ([`error::Backoff`]).
//! - [`metrics`]: Prometheus metrics, served at `GET /metrics`, including
//!   `payhook_build_info` from [`version`].
//! - [`logging`]: JSON or text log lines, one field vocabulary everywhere.
//! - [`app`]: wiring and shutdown: `serve`, `migrate`, `topics`, `dlq`.
//!   `main.rs` holds the command line; its settings come from [`config`]
//!   ([`config::cli`] turns them into flags with their environment
//!   variables).
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
