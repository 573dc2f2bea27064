//! Secured connections: the one place that turns settings into what reaches
//! a broker or a database (TLS, SASL, deadlines).
//!
//! - [`tls_config`]: a rustls client configuration from a CA file (or
//!   Mozilla's roots, compiled in) and an optional client certificate.
//! - [`kafka_security`]: rskafka's SASL settings and the TLS configuration
//!   for Kafka. payhook's own admin connection ([`crate::kafka::admin`])
//!   uses the same settings.
//! - [`tunnel`]: how rskafka gets TLS without a C compiler: an in-process
//!   SOCKS5 server on loopback that wraps each broker connection in TLS.
//! - The Postgres side lives in [`crate::db::pool_from_config`], which asks
//!   [`postgres_tls`] for its TLS connector.
//!
//! # Crypto provider
//!
//! Every TLS connection uses [graviola](https://github.com/ctz/graviola)
//! through `rustls-graviola`: pure Rust (assembly in Rust's `asm!`, no C
//! compiler), so the default build stays C-free for glibc, musl and Windows.
//! It is young and not audited, and runs only on x86_64 CPUs with AES-NI,
//! PCLMULQDQ, AVX2, BMI1 and ADX (Intel Haswell, AMD Excavator and later) or
//! aarch64 with the AES, PMULL and SHA2 extensions; it would panic on first
//! use elsewhere, so [`crypto_provider`] checks the CPU first and refuses
//! with a message instead.

use std::{fmt, path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

use crate::config::{DatabaseTls, KafkaSecurity, SaslMechanism, SslMode};

pub mod tunnel;

/// Why a secured connection could not even be set up. Never holds a
/// password or key material: only paths and what was wrong with them.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "this CPU lacks {missing}, which the TLS crypto provider (graviola) needs; \
         TLS is not available on this machine with this build"
    )]
    CpuUnsupported { missing: &'static str },
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Tls(String),
}

/// The crypto provider of every TLS connection (see the module doc), after
/// checking that this CPU can run it.
pub fn crypto_provider() -> Result<Arc<CryptoProvider>, ConnectError> {
    if let Some(missing) = missing_cpu_feature() {
        return Err(ConnectError::CpuUnsupported { missing });
    }
    Ok(Arc::new(rustls_graviola::default_provider()))
}

/// The first CPU feature graviola needs that this CPU lacks (graviola 0.4's
/// own list, `low/*/cpu.rs`).
#[cfg(target_arch = "x86_64")]
fn missing_cpu_feature() -> Option<&'static str> {
    [
        ("AES-NI", std::arch::is_x86_feature_detected!("aes")),
        (
            "PCLMULQDQ",
            std::arch::is_x86_feature_detected!("pclmulqdq"),
        ),
        ("BMI1", std::arch::is_x86_feature_detected!("bmi1")),
        ("ADX", std::arch::is_x86_feature_detected!("adx")),
        ("AVX", std::arch::is_x86_feature_detected!("avx")),
        ("AVX2", std::arch::is_x86_feature_detected!("avx2")),
    ]
    .into_iter()
    .find_map(|(name, have)| (!have).then_some(name))
}

#[cfg(target_arch = "aarch64")]
fn missing_cpu_feature() -> Option<&'static str> {
    [
        ("NEON", std::arch::is_aarch64_feature_detected!("neon")),
        ("AES", std::arch::is_aarch64_feature_detected!("aes")),
        ("PMULL", std::arch::is_aarch64_feature_detected!("pmull")),
        ("SHA2", std::arch::is_aarch64_feature_detected!("sha2")),
    ]
    .into_iter()
    .find_map(|(name, have)| (!have).then_some(name))
}

/// How a server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Chains to a trusted CA and names the host we dialled.
    Full,
    /// Not checked at all (Postgres `sslmode=require`): the connection is
    /// encrypted but the server is not authenticated.
    Nothing,
}

/// A rustls client configuration: trusting the CAs in `ca_file` (or
/// Mozilla's roots when `None`), presenting `client_auth` (certificate chain
/// and key files) when given.
pub fn tls_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
    verify: Verify,
) -> Result<Arc<ClientConfig>, ConnectError> {
    let provider = crypto_provider()?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let builder = match verify {
        Verify::Full => builder.with_root_certificates(roots(ca_file)?),
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(cert, "a client certificate")?;
            // The key's parse error is reported without the key's bytes.
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| ConnectError::Pem {
                what: "a private key",
                path: key.display().to_string(),
                reason: pem_reason(&e),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConnectError::Tls(format!("client certificate and key: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, ConnectError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            for cert in certs(path, "CA certificates")? {
                store.add(cert).map_err(|e| ConnectError::Pem {
                    what: "CA certificates",
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
    }
    Ok(store)
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let err = |reason: String| ConnectError::Pem {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A PEM error without any of the file's content.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind in it".into(),
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => {
            "malformed PEM (a section does not end)".into()
        }
        E::Base64Decode(_) => "malformed PEM (bad base64)".into(),
        _ => "malformed PEM".into(),
    }
}

/// Accepts any certificate but still checks that the server holds its key
/// (the handshake signature): libpq's `sslmode=require`.
struct AnyCertificate(Arc<CryptoProvider>);

impl fmt::Debug for AnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyCertificate")
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS connector for Postgres, or `None` for `sslmode=disable`.
pub fn postgres_tls(
    tls: &DatabaseTls,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, ConnectError> {
    let verify = match tls.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Require => Verify::Nothing,
        SslMode::VerifyFull => Verify::Full,
    };
    let config = tls_config(tls.ca_file.as_deref(), None, verify)?;
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(
        Arc::unwrap_or_clone(config),
    )))
}

/// What rskafka needs beyond the broker list: SASL settings and, for `ssl`
/// and `sasl_ssl`, the TLS configuration its connections get through the
/// [`tunnel`].
#[derive(Clone)]
pub struct KafkaTransport {
    pub sasl: Option<rskafka::client::SaslConfig>,
    pub tls: Option<Arc<ClientConfig>>,
}

// rskafka's SaslConfig prints its password in `Debug`.
impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("sasl", &self.sasl.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl KafkaTransport {
    /// Plaintext, no SASL.
    pub fn plaintext() -> Self {
        Self {
            sasl: None,
            tls: None,
        }
    }
}

/// Turns `KAFKA_SECURITY_PROTOCOL` and friends into rskafka's settings.
pub fn kafka_security(sec: &KafkaSecurity) -> Result<KafkaTransport, ConnectError> {
    use rskafka::client::{Credentials, SaslConfig};
    let sasl = sec.sasl.as_ref().map(|s| {
        let creds = Credentials::new(s.username.clone(), s.password.expose().to_owned());
        match s.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(creds),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(creds),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(creds),
        }
    });
    let tls = if sec.protocol.uses_tls() {
        let client_auth = sec
            .tls_client_auth
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        Some(tls_config(
            sec.tls_ca_file.as_deref(),
            client_auth,
            Verify::Full,
        )?)
    } else {
        None
    };
    Ok(KafkaTransport { sasl, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_can_run_the_provider() {
        // The CI and development machines have the CPU features; where one
        // does not, the refusal names the first one missing.
        match crypto_provider() {
            Ok(_) => assert!(missing_cpu_feature().is_none()),
            Err(e) => assert!(e.to_string().contains("lacks"), "{e}"),
        }
    }

    #[test]
    fn unreadable_pem_is_named_by_path() {
        let e = tls_config(Some(Path::new("/nonexistent/ca.pem")), None, Verify::Full).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("CA certificates") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_key_file_is_never_echoed() {
        let dir = std::env::temp_dir().join(format!("payhook-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let key = dir.join("k.pem");
        // A "certificate" that is valid PEM but a broken key whose body is a
        // recognisable secret.
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n").unwrap();
        let e = tls_config(None, Some((&cert, &key)), Verify::Full).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("TOPSECRET"), "{text}");
        assert!(text.contains("private key"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
