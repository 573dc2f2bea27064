//! The HTTP transport: a bare hyper 1 server.
//!
//! - [`server`]: accepts connections, applies timeouts, shuts down
//!   gracefully.
//! - [`routes`]: the endpoints; a webhook is parsed and validated, wrapped in
//!   an envelope, published, and answered 202 only once the broker has it.
//! - [`error`]: the one place that turns errors into HTTP answers.

pub mod error;
pub mod routes;
pub mod server;

pub use routes::AppState;
pub use server::serve;
