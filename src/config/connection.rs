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

/// Whether `host` (a name or an address, without port) is this machine:
/// `localhost`, a name under `.localhost`, or a loopback address. Nothing is
/// resolved: any other name counts as another machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of a `host:port` broker address (`[::1]:9092` → `::1`).
fn broker_host(broker: &str) -> &str {
    broker.rsplit_once(':').map_or(broker, |(h, _)| h)
}

/// The TCP hosts a Postgres URL names (a Unix socket is this machine, and
/// a URL that does not parse is refused by the checks, not here).
fn database_hosts(url: &str) -> Vec<String> {
    let Ok(cfg) = strip_sslmode(url).parse::<tokio_postgres::Config>() else {
        return Vec::new();
    };
    cfg.get_hosts()
        .iter()
        .filter_map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => Some(h.clone()),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => None,
        })
        .collect()
}

impl super::Config {
    /// Settings that work but expose a secret or the data on the way to
    /// another machine: `serve` and every command log them as warnings once
    /// logging is set up (`payhook config` prints them).
    ///
    /// - SASL `PLAIN` over `sasl_plaintext` sends the password itself, in
    ///   clear text, to every broker that is not on this machine.
    /// - A `sslmode` weaker than `verify-full` to a database on another
    ///   machine: `disable` sends everything in clear text; `require`
    ///   encrypts, but anyone who can answer in the server's place (DNS,
    ///   ARP, a rogue route) reads and changes everything.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let k = &self.kafka;
        if k.security_protocol == SecurityProtocol::SaslPlaintext
            && k.sasl_mechanism == SaslMechanism::Plain
        {
            let remote: Vec<&str> = k
                .brokers
                .iter()
                .map(String::as_str)
                .filter(|b| !is_loopback_host(broker_host(b)))
                .collect();
            if !remote.is_empty() {
                out.push(format!(
                    "KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=sasl_plaintext sends \
                     the SASL password in clear text to {}: anyone on the network path can read \
                     it. Use sasl_ssl, or at least SCRAM-SHA-512",
                    remote.join(", ")
                ));
            }
        }
        let mode = self.database.tls().mode;
        if mode != SslMode::VerifyFull {
            let remote: Vec<String> = database_hosts(&self.database.url)
                .into_iter()
                .filter(|h| !is_loopback_host(h))
                .collect();
            if !remote.is_empty() {
                let risk = match mode {
                    SslMode::Disable => {
                        "sends everything, the password and the payment data included, in clear text"
                    }
                    _ => {
                        "encrypts but does not check the server's certificate, so whoever can \
                         answer in the server's place reads and changes everything"
                    }
                };
                out.push(format!(
                    "the database connection to {} uses sslmode={}, which {risk}. Use \
                     DATABASE_SSLMODE=verify-full (with DATABASE_TLS_CA_FILE for a private CA)",
                    remote.join(", "),
                    mode.as_str()
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn warnings(pairs: &[(&str, &str)]) -> Vec<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map).unwrap().warnings()
    }

    #[test]
    fn loopback_is_this_machine_only() {
        for h in [
            "localhost",
            "LOCALHOST",
            "db.localhost",
            "127.0.0.1",
            "127.8.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.5",
            "db.internal",
            "localhost.example.com",
            "0.0.0.0",
            "::",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(broker_host("[::1]:9092"), "[::1]");
        assert_eq!(broker_host("kafka-1:9092"), "kafka-1");
    }

    #[test]
    fn the_local_defaults_warn_about_nothing() {
        assert_eq!(warnings(&[]), Vec::<String>::new());
    }

    #[test]
    fn sasl_plain_in_clear_text_to_another_machine_warns() {
        let sasl = [
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_USERNAME", "payhook"),
            ("KAFKA_SASL_PASSWORD", "pw"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = sasl.to_vec();
            all.extend_from_slice(extra);
            warnings(&all)
        };
        let w = with(&[("KAFKA_BROKERS", "127.0.0.1:9095,kafka-2.internal:9095")]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("KAFKA_SASL_MECHANISM=PLAIN"), "{w:?}");
        assert!(w[0].contains("kafka-2.internal:9095"), "{w:?}");
        assert!(!w[0].contains("127.0.0.1"), "{w:?}");
        assert!(!w[0].contains("pw"), "{w:?}");
        // Loopback only, SCRAM, or TLS: no warning.
        assert!(with(&[("KAFKA_BROKERS", "localhost:9095,[::1]:9095")]).is_empty());
        assert!(
            with(&[
                ("KAFKA_BROKERS", "kafka-2.internal:9095"),
                ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
            ])
            .is_empty()
        );
        let mut tls = sasl.to_vec();
        tls[0].1 = "sasl_ssl";
        tls.push(("KAFKA_BROKERS", "kafka-2.internal:9096"));
        assert!(warnings(&tls).is_empty());
    }

    #[test]
    fn a_database_on_another_machine_without_verify_full_warns() {
        let remote = "postgres://payhook:pw@db.internal:5432/payhook";
        for (pairs, mode) in [
            (vec![("DATABASE_URL", remote)], "disable"),
            (
                vec![("DATABASE_URL", remote), ("DATABASE_SSLMODE", "require")],
                "require",
            ),
            (
                vec![(
                    "DATABASE_URL",
                    "postgres://payhook@10.1.2.3/payhook?sslmode=require",
                )],
                "require",
            ),
        ] {
            let w = warnings(&pairs);
            assert_eq!(w.len(), 1, "{pairs:?}: {w:?}");
            assert!(w[0].contains(&format!("sslmode={mode}")), "{w:?}");
            assert!(w[0].contains("verify-full"), "{w:?}");
            assert!(!w[0].contains("pw@"), "{w:?}");
        }
        for pairs in [
            vec![
                ("DATABASE_URL", remote),
                ("DATABASE_SSLMODE", "verify-full"),
            ],
            vec![("DATABASE_URL", "postgres://payhook:pw@localhost/payhook")],
            vec![("DATABASE_URL", "postgres://payhook@[::1]:5432/payhook")],
            vec![(
                "DATABASE_URL",
                "postgres://payhook@127.0.0.1/payhook?sslmode=require",
            )],
        ] {
            assert!(warnings(&pairs).is_empty(), "{pairs:?}");
        }
    }
}
