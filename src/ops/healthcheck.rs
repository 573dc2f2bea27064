//! `payhook healthcheck`: probes a running payhook's `/healthz` (or
//! `/readyz`) for a container `HEALTHCHECK` that needs no shell or curl.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use crate::http::probe;

/// Exit 0 on a 2xx, 1 otherwise (what Docker's
/// HEALTHCHECK expects).
pub fn run(url: Option<&str>, ready: bool, addr: SocketAddr, timeout: Duration) -> ExitCode {
    let url = match url {
        Some(u) => u.to_owned(),
        None => {
            let mut addr = addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                });
            }
            let path = if ready { "/readyz" } else { "/healthz" };
            format!("http://{addr}{path}")
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(probe::probe(&url, timeout)) {
        Ok(status) => {
            println!("healthy: {url} answered {status}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
