//! What this binary is: its version and the git revision it was built from
//! (recorded by `build.rs`; "unknown" when built outside a git checkout).

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git revision, e.g. `0893574`, or `unknown`.
pub const REVISION: &str = env!("PAYHOOK_GIT_REVISION");

/// What `payhook --version` prints after the name: `0.1.0 (rev 0893574)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("PAYHOOK_GIT_REVISION"),
    ")"
);
