//! The consumer pipeline: records from Kafka applied to Postgres, each
//! exactly once, in order per partition.
//!
//! - [`fleet`]: which partitions this process consumes, shared with the
//!   other processes through leases in Postgres; runs one partition loop per
//!   owned partition.
//! - [`partition`]: the partition loop, a state machine over a fetch seam
//!   ([`partition::Log`], served by [`log`]) and a database seam
//!   ([`partition::Sink`], served by [`sink`]).
//! - [`halving`]: isolating the record that makes a transaction fail.
//! - [`unit`](mod@unit): the transaction unit: fence the stored offset, apply, commit,
//!   within a deadline.
//! - [`committer`]: several partitions' runs in one such transaction.
//! - [`classify`]: the one place that decides retryable versus permanent,
//!   and the one backoff.
//! - [`dlq`]: the dead-letter record format, and reading it back.
//! - [`waiting`]: disputes that wait for their payment, and the sweep that
//!   dead-letters those whose payment never comes.
//! - [`health`]: what each partition is doing, for `/readyz`, `/status` and
//!   the gauges; [`events`]: one function per event of a partition's life
//!   (log line, metrics, health).
//! - [`config`]: the settings of one consumed topic.
//!
//! Imports run one way: `fleet` uses the partition loop and the service's
//! two seams (`log`, `sink`); `log` and `sink` implement the loop's traits;
//! `sink` uses the `committer` and the `unit`; the `committer` uses the
//! `unit`; the `unit` uses `waiting`; any of them may use `classify`, `dlq`,
//! `events`, `health`, `halving` and `config`, which use none of them.

pub mod classify;
pub mod committer;
pub mod config;
pub mod dlq;
pub mod events;
pub mod fleet;
pub mod halving;
pub mod health;
pub mod log;
pub mod partition;
pub mod sink;
pub mod unit;
pub mod waiting;
