//! One connection to one broker, speaking Kafka's protocol through the
//! pure-Rust `kafka-protocol` crate: framing, TLS (rustls, the same
//! settings as everything else, see [`KafkaTransport`]) and SASL. One
//! request at a time, each bounded by the connection's timeout.
//!
//! payhook's own admin requests ([`super::admin`]) and its producer
//! ([`super::producer`], one produce request per broker carrying every
//! partition with records waiting, which rskafka 0.6 cannot send) both
//! talk over it. Fixed, long-supported request versions are used (Kafka
//! 2.4 and later, Kafka 4.x included), so no version negotiation is
//! needed.

use std::{io::Cursor, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use kafka_protocol::{
    messages::{RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest},
    protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes},
};
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use rskafka::client::SaslConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::connect::KafkaTransport;

/// A failed request on payhook's own connection to a broker. Carries the broker's error name and message,
/// never credentials.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach any bootstrap broker ({brokers}): {last}")]
    Unreachable { brokers: String, last: String },
    #[error("{what} did not finish within {}", humantime::format_duration(*.after))]
    Timeout { what: &'static str, after: Duration },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the broker answered {error}{}", .message.as_deref().filter(|m| !m.is_empty()).map(|m| format!(" ({m})")).unwrap_or_default())]
    Broker {
        what: &'static str,
        error: String,
        message: Option<String>,
    },
    #[error("SASL authentication failed: {0}")]
    Sasl(String),
    #[error("{what}: cannot encode or decode the message: {reason}")]
    Protocol { what: &'static str, reason: String },
}

const SASL_HANDSHAKE_VERSION: i16 = 1;
const SASL_AUTHENTICATE_VERSION: i16 = 1;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One authenticated connection to one broker: one request at a time.
pub struct Connection {
    client_id: &'static str,
    /// Reads through a buffer: an answer's length and body (and often the
    /// whole answer) come in one `read`.
    stream: BufReader<Box<dyn Stream>>,
    correlation_id: i32,
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `broker` (`host:port`) with TLS and SASL as configured,
    /// naming itself `client_id` in every request. Not bounded: callers
    /// put their own deadline around it.
    pub async fn open(
        broker: &str,
        transport: &KafkaTransport,
        timeout: Duration,
        client_id: &'static str,
    ) -> Result<Self, WireError> {
        let tcp = TcpStream::connect(broker)
            .await
            .map_err(|source| WireError::Io {
                what: "connecting",
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &transport.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        WireError::Io {
                            what: "naming the broker for TLS",
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|source| WireError::Io {
                        what: "TLS handshake",
                        source,
                    })?;
                Box::new(tls)
            }
        };
        let mut conn = Self {
            client_id,
            stream: BufReader::new(stream),
            correlation_id: 0,
            timeout,
        };
        if let Some(sasl) = &transport.sasl {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake, then SaslAuthenticate until the mechanism is done.
    async fn authenticate(&mut self, sasl: &SaslConfig) -> Result<(), WireError> {
        let (mechanism, creds) = match sasl {
            SaslConfig::Plain(c) => ("PLAIN", c),
            SaslConfig::ScramSha256(c) => ("SCRAM-SHA-256", c),
            SaslConfig::ScramSha512(c) => ("SCRAM-SHA-512", c),
            SaslConfig::Oauthbearer(_) => {
                return Err(WireError::Sasl("OAUTHBEARER is not supported".into()));
            }
        };
        let handshake = self
            .call(
                "SASL handshake",
                SASL_HANDSHAKE_VERSION,
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism)),
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(WireError::Sasl(format!(
                "the broker does not offer {mechanism} (it offers {})",
                offered.join(", ")
            )));
        }
        let config =
            SASLConfig::with_credentials(None, creds.username.clone(), creds.password.clone())
                .map_err(|e| WireError::Sasl(e.to_string()))?;
        let mech =
            Mechname::parse(mechanism.as_bytes()).map_err(|e| WireError::Sasl(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[mech])
            .map_err(|e| WireError::Sasl(e.to_string()))?;
        let mut received: Option<Vec<u8>> = None;
        loop {
            let mut out = Cursor::new(Vec::new());
            let state = session
                .step(received.as_deref(), &mut out)
                .map_err(|e| WireError::Sasl(e.to_string()))?;
            if state.has_sent_message() {
                let resp = self
                    .call(
                        "SASL authenticate",
                        SASL_AUTHENTICATE_VERSION,
                        &SaslAuthenticateRequest::default()
                            .with_auth_bytes(Bytes::from(out.into_inner())),
                    )
                    .await?;
                if resp.error_code != 0 {
                    return Err(WireError::Sasl(
                        resp.error_message
                            .map(|m| m.as_str().to_owned())
                            .unwrap_or_else(|| error_name(resp.error_code)),
                    ));
                }
                received = Some(resp.auth_bytes.to_vec());
            }
            if state.is_finished() {
                return Ok(());
            }
        }
    }

    /// The bound on each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads its answer, within the timeout.
    pub async fn call<R: Request>(
        &mut self,
        what: &'static str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, WireError> {
        let after = self.timeout;
        match tokio::time::timeout(after, self.call_unbounded(what, version, req)).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout { what, after }),
        }
    }

    async fn call_unbounded<R: Request>(
        &mut self,
        what: &'static str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, WireError> {
        let proto = |e: anyhow::Error| WireError::Protocol {
            what,
            reason: e.to_string(),
        };
        let io = |source| WireError::Io { what, source };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        // The length prefix and the request in one buffer, written at once:
        // one `write` per request (with TLS, one record), never a prefix
        // alone for Nagle or a delayed ACK to hold.
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(proto)?;
        req.encode(&mut frame, version).map_err(proto)?;
        let len = u32::try_from(frame.len() - 4).map_err(|_| WireError::Protocol {
            what,
            reason: "request too large".into(),
        })?;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;

        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        // Answers are small (a produce answer too); refuse to allocate for
        // garbage.
        if len > 64 << 20 {
            return Err(WireError::Protocol {
                what,
                reason: format!(
                    "answer of {len} bytes (is this a Kafka listener of this protocol?)"
                ),
            });
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.map_err(io)?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(proto)?;
        if header.correlation_id != self.correlation_id {
            return Err(WireError::Protocol {
                what,
                reason: format!(
                    "answer to request {} while waiting for {}",
                    header.correlation_id, self.correlation_id
                ),
            });
        }
        R::Response::decode(&mut buf, version).map_err(proto)
    }
}

/// Kafka's name for an error code, e.g. `POLICY_VIOLATION`.
pub fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => "no error".into(),
    }
}
