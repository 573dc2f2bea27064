//! The client side of the health endpoints, for `payhook healthcheck`: a
//! container `HEALTHCHECK` that needs no shell and no curl in the image.
//! Plain HTTP only (the probe talks to this process's own port).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a probe did not get a 2xx.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not a plain http:// URL with a host: {0}")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
}

/// GETs `url` and succeeds on a 2xx answer within `timeout`.
pub async fn probe(url: &str, timeout: Duration) -> Result<StatusCode, ProbeError> {
    tokio::time::timeout(timeout, get(url))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn get(url: &str) -> Result<StatusCode, ProbeError> {
    let bad = || ProbeError::BadUrl(url.to_owned());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?.clone();
    let addr = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|_| bad())?;
    let status = send.send_request(req).await?.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(ProbeError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_what_it_cannot_probe() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            probe("https://x/healthz", t).await,
            Err(ProbeError::BadUrl(_))
        ));
        assert!(matches!(
            probe("not a url", t).await,
            Err(ProbeError::BadUrl(_))
        ));
        // Port 1 on loopback: nothing listens.
        assert!(matches!(
            probe("http://127.0.0.1:1/healthz", t).await,
            Err(ProbeError::Connect { .. })
        ));
    }
}
