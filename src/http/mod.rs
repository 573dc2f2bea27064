//! The HTTP transport: a bare hyper 1 server.
//!
//! - [`server`]: accepts connections, applies timeouts and the connection
//!   cap, shuts down gracefully.
//! - [`routes`]: the endpoints; a webhook is parsed and validated, wrapped in
//!   an envelope, published, and answered 202 only once the broker has it.
//! - [`error`]: the one place that turns errors into HTTP answers.
//! - [`probe`]: the client side of `/healthz` and `/readyz`, for
//!   `payhook healthcheck`.

pub mod error;
pub mod probe;
pub mod routes;
pub mod server;

pub use routes::{AppState, Endpoint};
pub use server::{Limits, Surface, serve};
