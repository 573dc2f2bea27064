//! Integration tests against the real broker and the real database.
//!
//! Each test gets its own database and its own topics (named by a UUID), so
//! tests run in parallel and never see each other's data. They need the
//! services from `./scripts/services up` (or `PAYHOOK_TEST_DATABASE_URL` /
//! `PAYHOOK_TEST_KAFKA_BROKERS` pointing elsewhere).

mod batching;
mod dead_letters;
mod docs;
mod event_order;
mod fleet;
mod helpers;
mod hostile;
mod http_edge;
mod layout;
mod openapi;
mod ops;
mod pipeline;
mod providers;
mod retention;
mod scope;
mod secured;
mod settings;
mod signatures;
mod signed_log;
mod stalls;
mod startup;
mod storable;
mod supply_chain;
