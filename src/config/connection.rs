//! How payhook reaches the brokers and the database beyond their addresses:
//! the Kafka security protocol, SASL and TLS files, and Postgres `sslmode`,
//! as the settings give them. [`crate::connect`] turns these into
//! connections.

use std::path::PathBuf;

use super::Secret;

/// `KAFKA_SECURITY_PROTOCOL`, in Kafka's own names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            "sasl_ssl" => Some(Self::SaslSsl),
            _ => None,
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Self::Plain),
            "SCRAM-SHA-256" => Some(Self::ScramSha256),
            "SCRAM-SHA-512" => Some(Self::ScramSha512),
            _ => None,
        }
    }

    /// The name the broker knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials (used when the protocol is `sasl_*`).
#[derive(Clone, Debug)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// Everything about how payhook reaches the brokers, beyond their addresses.
#[derive(Clone, Debug)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// Present exactly when `protocol` is `sasl_plaintext` or `sasl_ssl`.
    pub sasl: Option<SaslSettings>,
    /// PEM file of the CAs that may sign the brokers' certificates
    /// (`KAFKA_TLS_CA_FILE`); `None`: Mozilla's roots, compiled in.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain and private key, PEM, for mutual TLS
    /// (`KAFKA_TLS_CERT_FILE`, `KAFKA_TLS_KEY_FILE`; both or neither).
    pub tls_client_auth: Option<(PathBuf, PathBuf)>,
}

impl KafkaSecurity {
    /// Plaintext, no SASL: the local brokers of `./scripts/services`.
    pub fn plaintext() -> Self {
        Self {
            protocol: SecurityProtocol::Plaintext,
            sasl: None,
            tls_ca_file: None,
            tls_client_auth: None,
        }
    }
}

/// `sslmode`, with the meanings libpq gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS, but the server's certificate is not checked: safe against a
    /// passive eavesdropper, not against an impostor.
    Require,
    /// TLS; the certificate must chain to a trusted CA and name the host.
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "disable" => Some(Self::Disable),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// How payhook reaches Postgres, beyond the URL.
#[derive(Clone, Debug)]
pub struct DatabaseTls {
    pub mode: SslMode,
    /// PEM file of the CAs that may sign the server's certificate
    /// (`DATABASE_TLS_CA_FILE`); `None`: Mozilla's roots, compiled in.
    pub ca_file: Option<PathBuf>,
}

/// The `sslmode` parameter of a URL, if any.
pub(super) fn url_sslmode(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "sslmode")
        .map(|(_, v)| v)
}

/// The URL without its `sslmode` parameter: payhook applies the mode itself
/// (tokio-postgres knows no `verify-full`).
pub fn strip_sslmode(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("sslmode="))
        .collect();
    if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    }
}
