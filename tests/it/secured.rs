//! Secured connections against real secured services: the broker's SASL
//! and TLS listeners and Postgres with `ssl=on`, as `./scripts/services`
//! starts them (a local CA, a SCRAM user, a TLS-only database role).
//!
//! Where they are comes from the environment, with defaults matching
//! `scripts/services`:
//!
//! | variable | default |
//! |---|---|
//! | `PAYHOOK_TEST_KAFKA_SSL` | `127.0.0.1:9094` |
//! | `PAYHOOK_TEST_KAFKA_SASL_PLAINTEXT` | `127.0.0.1:9095` |
//! | `PAYHOOK_TEST_KAFKA_SASL_SSL` | `127.0.0.1:9096` |
//! | `PAYHOOK_TEST_KAFKA_SASL_USER` / `_PASSWORD` | `payhook` / `payhook-secret` |
//! | `PAYHOOK_TEST_PG_TLS_USER` / `_PASSWORD` | `payhook_tls` / `payhook-tls-secret` |
//! | `PAYHOOK_TEST_TLS_DIR` | `$PAYHOOK_SERVICES_DIR/tls`, else `.services/tls` (CA, client certificate, an unrelated CA) |
//!
//! The database host and port are those of `PAYHOOK_TEST_DATABASE_URL`. TLS
//! to Kafka (SSL, SASL_SSL) goes through payhook's tunnel
//! (`payhook::connect::tunnel`), in the default build.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use payhook::{
    app::{Application, StartError},
    config::Config,
    db::{self, DbError, Session},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::helpers::{Env, admin_url, payment};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `PAYHOOK_TEST_TLS_DIR`, else `tls/` of `PAYHOOK_SERVICES_DIR` (where
/// `scripts/services` made it), else `.services/tls`.
fn tls_dir() -> String {
    std::env::var("PAYHOOK_TEST_TLS_DIR").unwrap_or_else(|_| {
        match std::env::var("PAYHOOK_SERVICES_DIR") {
            Ok(dir) => format!("{dir}/tls"),
            Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/.services/tls").to_owned(),
        }
    })
}

fn tls_file(name: &str) -> String {
    let path = format!("{}/{name}", tls_dir());
    assert!(
        std::path::Path::new(&path).is_file(),
        "{path} missing: run ./scripts/services up (or set PAYHOOK_TEST_TLS_DIR)"
    );
    path
}

fn sasl_user() -> String {
    var("PAYHOOK_TEST_KAFKA_SASL_USER", "payhook")
}

fn sasl_password() -> String {
    var("PAYHOOK_TEST_KAFKA_SASL_PASSWORD", "payhook-secret")
}

fn pg_tls_user() -> String {
    var("PAYHOOK_TEST_PG_TLS_USER", "payhook_tls")
}

fn pg_tls_password() -> String {
    var("PAYHOOK_TEST_PG_TLS_PASSWORD", "payhook-tls-secret")
}

/// Host and port of the test database.
fn pg_host_port() -> (String, u16) {
    let cfg: tokio_postgres::Config = admin_url().parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".into(),
    };
    (host, cfg.get_ports().first().copied().unwrap_or(5432))
}

/// Settings as owned pairs, so tests can build them from env vars.
struct Settings(Vec<(String, String)>);

impl Settings {
    fn new(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.0.push((k.to_owned(), v.to_owned()));
        self
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// SASL over plaintext with `mechanism`.
fn sasl_plaintext(mechanism: &str, password: &str) -> Settings {
    Settings::new(&[
        (
            "KAFKA_BROKERS",
            &var("PAYHOOK_TEST_KAFKA_SASL_PLAINTEXT", "127.0.0.1:9095"),
        ),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
        ("KAFKA_SASL_MECHANISM", mechanism),
        ("KAFKA_SASL_USERNAME", &sasl_user()),
        ("KAFKA_SASL_PASSWORD", password),
        ("KAFKA_REQUEST_TIMEOUT", "5s"),
    ])
}

/// Starts an app with `settings`, sends one payment for `order`, waits
/// until the consumer has stored it, stops the app.
async fn round_trip(env: &Env, settings: &Settings, order: &str) {
    let app = env.start(&settings.pairs()).await;
    app.payment(&payment(
        &format!("evt_{order}"),
        order,
        "succeeded",
        "2026-11-26T10:00:00Z",
    ))
    .await;
    env.wait_caught_up().await;
    let n = env
        .count(&format!(
            "SELECT count(*) FROM orders WHERE order_id = '{order}' AND payment_status = 'succeeded'"
        ))
        .await;
    assert_eq!(n, 1, "{order} was not applied");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sasl_mechanism_publishes_and_consumes() {
    let env = Env::new().await;
    for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let order = format!("ord_{}", mech.replace('-', "_").to_lowercase());
        round_trip(&env, &sasl_plaintext(mech, &sasl_password()), &order).await;
    }
    env.cleanup().await;
}

/// `Kafka::reconnect` (for a consumer whose connections keep failing) makes
/// a new client with the same brokers and SASL settings, and it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_client_keeps_its_security_settings() {
    let env = Env::new().await;
    let cfg = env.config(&sasl_plaintext("SCRAM-SHA-256", &sasl_password()).pairs());
    let kafka = payhook::kafka::Kafka::from_config(&cfg.kafka)
        .await
        .unwrap();
    let fresh = kafka.reconnect().await.unwrap();
    assert_eq!(
        fresh.partitions(&env.orders_topic).await.unwrap(),
        (0..crate::helpers::PARTITIONS as i32).collect::<Vec<_>>()
    );
    fresh.partition_client(&env.orders_topic, 0).await.unwrap();
    // Its Debug, like the original's, shows no password.
    assert!(!format!("{fresh:?}").contains(&sasl_password()));
    env.cleanup().await;
}

/// Builds an app with `settings` and returns why it refused to start.
async fn refused(env: &Env, settings: &Settings) -> StartError {
    match Application::build(env.config(&settings.pairs())).await {
        Ok(_) => panic!("started with {:?}", settings.0),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_is_refused_and_never_printed() {
    let env = Env::new().await;
    let wrong = "not-the-password-4711";
    for mech in ["PLAIN", "SCRAM-SHA-512"] {
        let e = refused(&env, &sasl_plaintext(mech, wrong)).await;
        let text = format!("{e} {e:?}");
        eprintln!("wrong {mech} password: {e}");
        assert!(!text.contains(wrong), "{text}");
        assert!(
            text.to_lowercase().contains("authentication"),
            "no clear reason: {text}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_sasl_listener_is_refused() {
    let env = Env::new().await;
    let s = Settings::new(&[
        (
            "KAFKA_BROKERS",
            &var("PAYHOOK_TEST_KAFKA_SASL_PLAINTEXT", "127.0.0.1:9095"),
        ),
        ("KAFKA_REQUEST_TIMEOUT", "3s"),
    ]);
    let t = Instant::now();
    let e = refused(&env, &s).await;
    assert!(matches!(e, StartError::Kafka(_)), "{e}");
    eprintln!("plaintext client on the SASL listener: {e}");
    assert!(
        e.to_string().contains("another security protocol"),
        "no hint at the cause: {e}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    env.cleanup().await;
}

// ------------------------------------------------------------ kafka TLS ---

/// `ssl` to `brokers` (the SSL listener unless told), trusting `ca`.
fn ssl_to(brokers: &str, ca: &str) -> Settings {
    Settings::new(&[
        ("KAFKA_BROKERS", brokers),
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_TLS_CA_FILE", &tls_file(ca)),
        ("KAFKA_REQUEST_TIMEOUT", "5s"),
    ])
}

fn ssl_broker() -> String {
    var("PAYHOOK_TEST_KAFKA_SSL", "127.0.0.1:9094")
}

fn sasl_ssl(mechanism: &str, password: &str) -> Settings {
    Settings::new(&[
        (
            "KAFKA_BROKERS",
            &var("PAYHOOK_TEST_KAFKA_SASL_SSL", "127.0.0.1:9096"),
        ),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_SASL_MECHANISM", mechanism),
        ("KAFKA_SASL_USERNAME", &sasl_user()),
        ("KAFKA_SASL_PASSWORD", password),
        ("KAFKA_TLS_CA_FILE", &tls_file("ca.pem")),
        ("KAFKA_REQUEST_TIMEOUT", "5s"),
    ])
}

/// The default build speaks TLS to Kafka (through payhook's tunnel): one
/// webhook is published and applied over each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_sasl_ssl_publish_and_consume() {
    let env = Env::new().await;
    round_trip(&env, &ssl_to(&ssl_broker(), "ca.pem"), "ord_ssl").await;
    // Bootstrapped by a name the metadata does not use (it names
    // 127.0.0.1): the tunnel must learn the broker from the cluster.
    let port = ssl_broker().rsplit_once(':').unwrap().1.to_owned();
    round_trip(
        &env,
        &ssl_to(&format!("localhost:{port}"), "ca.pem"),
        "ord_ssl_by_name",
    )
    .await;
    // Mutual TLS (the listener asks for a client certificate;
    // `mutual_tls_presents_the_client_certificate` shows it is sent).
    let mtls = ssl_to(&ssl_broker(), "ca.pem")
        .with("KAFKA_TLS_CERT_FILE", &tls_file("client.pem"))
        .with("KAFKA_TLS_KEY_FILE", &tls_file("client.key"));
    round_trip(&env, &mtls, "ord_mtls").await;
    for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let order = format!("ord_ssl_{}", mech.replace('-', "_").to_lowercase());
        round_trip(&env, &sasl_ssl(mech, &sasl_password()), &order).await;
    }
    env.cleanup().await;
}

/// Builds an app that must be refused within `within`, and returns why.
async fn refused_within(env: &Env, settings: &Settings, within: Duration) -> String {
    let t = Instant::now();
    let e = refused(env, settings).await.to_string();
    assert!(t.elapsed() < within, "refused after {:?}: {e}", t.elapsed());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_refused() {
    let env = Env::new().await;
    let e = refused_within(
        &env,
        &ssl_to(&ssl_broker(), "other-ca.pem"),
        Duration::from_secs(10),
    )
    .await;
    eprintln!("kafka, untrusted CA: {e}");
    assert!(
        e.contains(&format!(
            "TLS handshake with broker {}: invalid peer certificate: UnknownIssuer",
            ssl_broker()
        )),
        "no clear reason: {e}"
    );
    env.cleanup().await;
}

/// A plain TCP relay from `127.0.0.2` (not a name on the broker's
/// certificate, which has 127.0.0.1 and localhost) to `upstream`.
async fn relay_from_another_address(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let up = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(up).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_name_is_refused() {
    let env = Env::new().await;
    let elsewhere = relay_from_another_address(ssl_broker()).await;
    let e = refused_within(&env, &ssl_to(&elsewhere, "ca.pem"), Duration::from_secs(10)).await;
    eprintln!("kafka, certificate for another name: {e}");
    assert!(
        e.contains(&format!("TLS handshake with broker {elsewhere}: "))
            && e.contains("not valid for name"),
        "no clear reason: {e}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_listener_behind_ssl_is_refused() {
    let env = Env::new().await;
    let plaintext = crate::helpers::brokers();
    let e = refused_within(&env, &ssl_to(&plaintext, "ca.pem"), Duration::from_secs(10)).await;
    eprintln!("kafka, ssl to a plaintext listener: {e}");
    assert!(
        e.contains(&format!("TLS handshake with broker {plaintext}: "))
            && e.contains("another security protocol"),
        "no clear reason: {e}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_over_sasl_ssl_is_refused_and_never_printed() {
    let env = Env::new().await;
    let wrong = "not-the-password-0815";
    let e = refused(&env, &sasl_ssl("SCRAM-SHA-256", wrong)).await;
    let text = format!("{e} {e:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(text.to_lowercase().contains("authentication"), "{text}");
    env.cleanup().await;
}

/// rskafka writes a request larger than its 8 KiB buffer as two writes (the
/// length, then the rest) on a socket without `TCP_NODELAY`; Nagle holds the
/// rest until the length is acknowledged, which a delayed acknowledgement
/// puts off by 40 ms. The tunnel acknowledges at once (`TCP_QUICKACK`), so
/// through it such a produce takes about a millisecond (45 ms straight to
/// the plaintext listener, whose kernel delays the acknowledgement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_two_writes_is_not_held_back_by_the_tunnel() {
    use payhook::{connect::KafkaTransport, kafka::Kafka};
    use rskafka::{client::partition::Compression, record::Record};
    let env = Env::new().await;
    let ca = tls_file("ca.pem");
    let tls = payhook::connect::tls_config(
        Some(std::path::Path::new(&ca)),
        None,
        payhook::connect::Verify::Full,
    )
    .unwrap();
    let transport = KafkaTransport {
        sasl: None,
        tls: Some(tls),
    };
    let kafka = Kafka::connect_with(&[ssl_broker()], Duration::from_secs(10), transport)
        .await
        .unwrap();
    let client = kafka.partition_client(&env.orders_topic, 0).await.unwrap();
    let mut took = Vec::new();
    for _ in 0..21 {
        let record = Record {
            key: None,
            value: Some(vec![b'x'; 9000]),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        };
        let t = Instant::now();
        client
            .produce(vec![record], Compression::NoCompression)
            .await
            .unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!(
        "9,000-byte produce through the tunnel: median {:?}",
        took[10]
    );
    assert!(took[10] < Duration::from_millis(20), "{took:?}");
    env.cleanup().await;
}

/// A TLS server of the test's own that **requires** a client certificate
/// signed by the test CA (the broker's SSL listener only asks for one), and
/// echoes what it reads. The tunnel reaches it with the client certificate,
/// and is refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    use payhook::connect::{
        Verify, crypto_provider, tls_config,
        tunnel::{BrokerLookup, Tunnel, TunnelSettings},
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = crypto_provider().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_file("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<_> = CertificateDer::pem_file_iter(tls_file("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(tls_file("server.key")).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });

    let ca = tls_file("ca.pem");
    let (cert, key) = (tls_file("client.pem"), tls_file("client.key"));
    for with_cert in [true, false] {
        let client_auth =
            with_cert.then(|| (std::path::Path::new(&cert), std::path::Path::new(&key)));
        let tls = tls_config(Some(std::path::Path::new(&ca)), client_auth, Verify::Full).unwrap();
        let lookup: BrokerLookup = Arc::new(|| Box::pin(async { Ok(Vec::new()) }));
        let tunnel = Tunnel::start(TunnelSettings {
            bootstrap: vec![echo.to_string()],
            tls,
            timeout: Duration::from_secs(5),
            brokers: lookup,
        })
        .await
        .unwrap();
        let mut s = TcpStream::connect(tunnel.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut method = [0u8; 2];
        s.read_exact(&mut method).await.unwrap();
        let host = echo.ip().to_string();
        let mut req = vec![5, 1, 0, 3, host.len() as u8];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&echo.port().to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        // TLS 1.3: the server checks the certificate after the client
        // finished its side of the handshake, so a missing certificate
        // shows on the first read.
        assert_eq!(reply[1], 0, "SOCKS5 reply {reply:?}");
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("no answer and not closed");
        if with_cert {
            r.unwrap();
            assert_eq!(&got, b"ping");
        } else {
            assert!(r.is_err(), "echoed without a client certificate");
        }
    }
}

// ------------------------------------------------------------- postgres ---

/// A database owned by the TLS-only role, and its URL (password in it).
async fn tls_database() -> (String, String) {
    let name = format!("payhook_tls_{}", Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {}", pg_tls_user()))
        .await
        .unwrap();
    let (_, port) = pg_host_port();
    // `localhost`: the name on the server's certificate (verify-full checks it).
    let url = format!(
        "postgres://{}:{}@localhost:{port}/{name}",
        pg_tls_user(),
        pg_tls_password()
    );
    (name, url)
}

async fn drop_database(name: &str) {
    let (admin, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

fn db_config(url: &str, extra: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = HashMap::new();
    map.insert("DATABASE_URL".into(), url.into());
    map.insert("DATABASE_CONNECT_TIMEOUT".into(), "5s".into());
    for (k, v) in extra {
        map.insert(k.to_string(), v.to_string());
    }
    Config::from_map(&map).unwrap()
}

/// Connects through payhook's pool and asks the server whether the session
/// is encrypted.
async fn session_is_tls(cfg: &Config) -> Result<bool, DbError> {
    let pool = db::pool_from_config(&cfg.database, 1)?;
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn postgres_verify_full_connects_encrypted() {
    let (name, url) = tls_database().await;
    let ca = tls_file("ca.pem");
    // In the URL, as libpq users write it...
    let cfg = db_config(
        &format!("{url}?sslmode=verify-full"),
        &[("DATABASE_TLS_CA_FILE", &ca)],
    );
    assert!(session_is_tls(&cfg).await.unwrap());
    // ...or as a setting; and migrations run over it.
    let cfg = db_config(
        &url,
        &[
            ("DATABASE_SSLMODE", "verify-full"),
            ("DATABASE_TLS_CA_FILE", &ca),
        ],
    );
    assert!(!payhook::ops::migrate(&cfg).await.unwrap().is_empty());
    // `require` encrypts without checking who answers: even with no CA it
    // connects.
    let cfg = db_config(&url, &[("DATABASE_SSLMODE", "require")]);
    assert!(session_is_tls(&cfg).await.unwrap());
    drop_database(&name).await;
}

#[tokio::test]
async fn postgres_refusals_are_clear_and_never_show_the_password() {
    let (name, url) = tls_database().await;
    let password = pg_tls_password();
    let ca = tls_file("ca.pem");

    // A certificate from a CA we do not trust.
    let cfg = db_config(
        &url,
        &[
            ("DATABASE_SSLMODE", "verify-full"),
            ("DATABASE_TLS_CA_FILE", &tls_file("other-ca.pem")),
        ],
    );
    let e = session_is_tls(&cfg).await.unwrap_err().to_string();
    eprintln!("postgres, untrusted CA: {e}");
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    assert!(!e.contains(&password), "{e}");

    // A wrong password.
    let wrong = "wrong-password-31337";
    let bad = url.replace(&password, wrong);
    let cfg = db_config(
        &bad,
        &[
            ("DATABASE_SSLMODE", "verify-full"),
            ("DATABASE_TLS_CA_FILE", &ca),
        ],
    );
    let e = session_is_tls(&cfg).await.unwrap_err();
    let text = format!("{e} {e:?} {cfg:?}");
    eprintln!("postgres, wrong password: {e}");
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(!text.contains(wrong), "{text}");

    // A plaintext client, refused by the server's rules for this role.
    let cfg = db_config(&url, &[("DATABASE_SSLMODE", "disable")]);
    let e = session_is_tls(&cfg).await.unwrap_err();
    let text = format!("{e} {e:?} {cfg:?}");
    eprintln!("postgres, plaintext client: {e}");
    assert!(e.to_string().contains("no encryption"), "{e}");
    assert!(!text.contains(&password), "{text}");
    drop_database(&name).await;
}

/// Runs the payhook binary with `settings` (on top of this test's topics)
/// until it logs `until` (then SIGTERM) or exits; returns all it printed.
async fn run_binary(env: &Env, settings: &Settings, until: &str) -> String {
    use tokio::io::AsyncReadExt;
    // Through `sh` only to join stderr to stdout; `exec` keeps the pid.
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args([
        "-c",
        "exec \"$0\" serve 2>&1",
        env!("CARGO_BIN_EXE_payhook"),
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("RUST_LOG", "debug")
    .env("NO_COLOR", "1")
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in [
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("DATABASE_POOL_SIZE", "2"),
        ("KAFKA_ORDERS_TOPIC", env.orders_topic.as_str()),
        ("KAFKA_DISPUTES_TOPIC", env.disputes_topic.as_str()),
        ("KAFKA_DLQ_TOPIC", env.dlq_topic.as_str()),
        ("WEBHOOK_VERIFY", "off"),
        ("SHUTDOWN_TIMEOUT", "10s"),
    ] {
        cmd.env(k, v);
    }
    for (k, v) in &settings.0 {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let pid = child.id().unwrap();
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 8192];
    let mut stopped = false;
    loop {
        let n = tokio::select! {
            n = out.read(&mut buf) => n.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                assert!(Instant::now() < deadline, "payhook neither logged {until:?} nor exited");
                continue;
            }
        };
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        if !stopped && String::from_utf8_lossy(&text).contains(until) {
            // Our own child, by its pid: a graceful stop, which logs too.
            stopped = true;
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
        }
    }
    let _ = child.wait().await;
    String::from_utf8_lossy(&text).into_owned()
}

/// Everything the payhook binary prints (at debug level) while it serves
/// over SASL (plaintext and TLS) and verify-full TLS, and when logins are
/// refused or a setting is wrong: no password may appear in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_holds_a_password() {
    let env = Env::new().await;
    let (name, url) = tls_database().await;
    let ca = tls_file("ca.pem");
    let secured = |kafka_password: &str, db_url: &str| {
        sasl_plaintext("SCRAM-SHA-256", kafka_password)
            .with("DATABASE_URL", db_url)
            .with("DATABASE_SSLMODE", "verify-full")
            .with("DATABASE_TLS_CA_FILE", &ca)
    };
    let serving = run_binary(&env, &secured(&sasl_password(), &url), "payhook serving").await;
    assert!(serving.contains("payhook stopped"), "{serving}");
    // SASL over TLS: the tunnel carries the SASL exchange.
    let serving_tls = run_binary(
        &env,
        &sasl_ssl("SCRAM-SHA-512", &sasl_password())
            .with("DATABASE_URL", &url)
            .with("DATABASE_SSLMODE", "verify-full")
            .with("DATABASE_TLS_CA_FILE", &ca),
        "payhook serving",
    )
    .await;
    assert!(
        serving_tls.contains("payhook stopped")
            && serving_tls.contains("TLS tunnel: connected to broker"),
        "{serving_tls}"
    );
    let kafka_refused = run_binary(
        &env,
        &secured("wrong-kafka-password-1", &url),
        "payhook serving",
    )
    .await;
    assert!(
        kafka_refused.contains("SASL authentication failed"),
        "{kafka_refused}"
    );
    let bad_db = url.replace(&pg_tls_password(), "wrong-db-password-2");
    let db_refused = run_binary(&env, &secured(&sasl_password(), &bad_db), "payhook serving").await;
    assert!(
        db_refused.contains("password authentication failed"),
        "{db_refused}"
    );
    // A configuration error, with the passwords set.
    let config_error = run_binary(
        &env,
        &secured(&sasl_password(), &url).with("DATABASE_SSLMODE", "verify-maybe"),
        "payhook serving",
    )
    .await;
    assert!(config_error.contains("DATABASE_SSLMODE"), "{config_error}");

    let logs = [
        serving,
        serving_tls,
        kafka_refused,
        db_refused,
        config_error,
    ]
    .join("\n");
    for secret in [
        sasl_password(),
        pg_tls_password(),
        "wrong-kafka-password-1".into(),
        "wrong-db-password-2".into(),
    ] {
        assert!(!logs.contains(&secret), "{secret} in the logs:\n{logs}");
    }
    drop_database(&name).await;
    env.cleanup().await;
}

// ------------------------------------------------------- hung database ---

/// A TCP relay to the database that can be frozen: it then keeps every
/// connection open but passes nothing on, like a server that stopped
/// answering (a SIGSTOPped process, a hung host behind a live load
/// balancer).
struct Freezer {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Freezer {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let up = upstream.clone();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect((up.0.as_str(), up.1)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies until frozen; then holds the connection open, passing nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *frozen.borrow() {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *frozen.borrow() {
                        std::future::pending::<()>().await;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = frozen.changed() => {}
        }
    }
}

/// One transaction as the consumer runs it (checkout, statements, commit),
/// bounded by payhook's client-side deadline.
async fn one_transaction(pool: &deadpool_postgres::Pool, s: &Session) -> Result<(), DbError> {
    db::bounded("applying a batch", s.client_deadline(), async {
        let mut c = pool.get().await?;
        let tx = c.transaction().await?;
        tx.simple_query("SELECT 1").await?;
        tx.commit().await?;
        Ok::<_, DbError>(())
    })
    .await
}

fn hang_session() -> Session {
    Session {
        statement_timeout: Duration::from_secs(2),
        ..Session::plaintext(Duration::from_secs(2))
    }
}

#[tokio::test]
async fn a_database_that_stops_answering_is_noticed_within_seconds() {
    let freezer = Freezer::start(pg_host_port()).await;
    let url = format!("postgres://postgres@{}/postgres", freezer.addr);
    let s = hang_session();
    let pool = db::pool_with(&url, 1, &s).unwrap();
    one_transaction(&pool, &s).await.unwrap();

    freezer.freeze();
    // The pooled connection: open, silent.
    let t = Instant::now();
    let e = one_transaction(&pool, &s).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, DbError::Timeout { .. }), "{e}");
    assert!(
        took < s.client_deadline() + Duration::from_secs(1),
        "{took:?}"
    );
    eprintln!("hung database (frozen relay) noticed after {took:?}: {e}");

    // A new connection to the silent server: bounded by the connect timeout.
    let fresh = db::pool_with(&url, 1, &s).unwrap();
    let t = Instant::now();
    let e = fresh.get().await.unwrap_err();
    assert!(
        t.elapsed() < s.connect_timeout + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    eprintln!(
        "new connection to a hung database refused after {:?}: {e}",
        t.elapsed()
    );
}

/// The same with the real server frozen by SIGSTOP (postmaster and every
/// backend). Never run against a shared database: it needs
/// `PAYHOOK_TEST_FREEZE_PG_DATA` (the data directory of a private server,
/// whose `postmaster.pid` names the process) and uses
/// `PAYHOOK_TEST_DATABASE_URL` to reach it. Run with
/// `cargo test --test it sigstop -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "freezes the database: needs a private server (PAYHOOK_TEST_FREEZE_PG_DATA)"]
async fn a_sigstopped_database_is_noticed_within_seconds() {
    let data = std::env::var("PAYHOOK_TEST_FREEZE_PG_DATA")
        .expect("PAYHOOK_TEST_FREEZE_PG_DATA: data directory of a private Postgres");
    let pid: String = std::fs::read_to_string(format!("{data}/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let s = hang_session();
    let pool = db::pool_with(&admin_url(), 1, &s).unwrap();
    one_transaction(&pool, &s).await.unwrap();

    // The postmaster and its children (the backends), by pid.
    let mut pids = vec![pid.clone()];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').nth(1));
        if ppid.flatten() == Some(pid.as_str()) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    struct Resume(Vec<String>);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .args(&self.0)
                .status();
        }
    }
    let _resume = Resume(pids.clone());
    assert!(
        std::process::Command::new("kill")
            .arg("-STOP")
            .args(&pids)
            .status()
            .unwrap()
            .success()
    );
    let t = Instant::now();
    let e = one_transaction(&pool, &s).await.unwrap_err();
    let took = t.elapsed();
    eprintln!("SIGSTOPped database noticed after {took:?}: {e}");
    assert!(matches!(e, DbError::Timeout { .. }), "{e}");
    assert!(
        took < s.client_deadline() + Duration::from_secs(1),
        "{took:?}"
    );
}

// ------------------------------------------------------- durable topics ---

/// `payhook topics` on fresh names: created with the settings it promises,
/// read back through DescribeConfigs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payhook_topics_sets_durability_and_keeps_dead_letters_long() {
    use payhook::kafka::topics;
    let env = Env::new().await;
    let id = Uuid::new_v4().simple().to_string();
    let (o, d, q) = (
        format!("it-{id}-t-orders"),
        format!("it-{id}-t-disputes"),
        format!("it-{id}-t-dlq"),
    );
    let cfg = env.config(&[
        ("KAFKA_ORDERS_TOPIC", &o),
        ("KAFKA_DISPUTES_TOPIC", &d),
        ("KAFKA_DLQ_TOPIC", &q),
        ("KAFKA_PARTITIONS", "2"),
        ("KAFKA_DLQ_RETENTION", "30days"),
    ]);
    let reports = payhook::ops::topics::create(&cfg).await.unwrap();
    assert!(reports.iter().all(|r| r.created), "{reports:?}");
    // One broker here: replication factor 1, min.insync.replicas 1, and
    // the warnings that go with them.
    for r in &reports {
        assert_eq!(r.replication_factor, Some(1), "{r:?}");
        assert_eq!(r.min_insync_replicas.as_deref(), Some("1"), "{r:?}");
        assert!(
            r.findings.iter().any(
                |f| matches!(f, topics::Finding::Warn(m) if m.contains("replication factor 1"))
            ),
            "{r:?}"
        );
    }
    let dlq = topics::describe_topic_configs(&cfg.kafka, &q)
        .await
        .unwrap();
    assert_eq!(dlq["retention.ms"], (30 * 86_400_000i64).to_string());
    assert_eq!(dlq["cleanup.policy"], "delete");
    let orders = topics::describe_topic_configs(&cfg.kafka, &o)
        .await
        .unwrap();
    assert_eq!(orders["min.insync.replicas"], "1");
    assert_eq!(orders["cleanup.policy"], "delete");
    // The dead-letter topic has room for the largest record a source topic
    // accepts, with the dlq.* headers.
    let source_max: usize = orders["max.message.bytes"].parse().unwrap();
    assert_eq!(
        dlq["max.message.bytes"],
        (source_max + topics::DLQ_HEADERS_ALLOWANCE).to_string()
    );
    // Run again: nothing is created, nothing changes.
    let again = payhook::ops::topics::create(&cfg).await.unwrap();
    assert!(again.iter().all(|r| !r.created), "{again:?}");
    // More replicas than brokers is refused before anything is made.
    let too_many = env.config(&[("KAFKA_REPLICATION_FACTOR", "3")]);
    let e = payhook::ops::topics::create(&too_many).await.unwrap_err();
    assert!(e.to_string().contains("1 broker(s)"), "{e}");
    for t in [&o, &d, &q] {
        let _ = env.kafka.delete_topic(t).await;
    }
    env.cleanup().await;
}

/// A topic whose messages cannot hold the largest webhook payhook accepts
/// stops `serve` before it answers anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_too_small_for_the_largest_webhook_refuses_start() {
    use payhook::{connect::KafkaTransport, kafka::admin::Admin};
    let env = Env::new().await;
    let small = format!("it-{}-small", Uuid::new_v4().simple());
    let mut admin = Admin::connect(
        &[crate::helpers::brokers()],
        &KafkaTransport::plaintext(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    admin
        .create_topic(&small, 3, 1, &[("max.message.bytes", "100000".into())])
        .await
        .unwrap();
    // Metadata reaches every part of the broker shortly after creation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.describe_topic_configs(&small).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = refused(
        &env,
        &Settings::new(&[
            ("KAFKA_ORDERS_TOPIC", &small),
            ("HTTP_MAX_BODY_BYTES", "262144"),
        ]),
    )
    .await
    .to_string();
    assert!(
        e.contains("max.message.bytes")
            && e.contains("100000")
            && e.contains("HTTP_MAX_BODY_BYTES"),
        "{e}"
    );
    // A body limit that fits starts.
    let app = env
        .start(&[
            ("KAFKA_ORDERS_TOPIC", &small),
            ("HTTP_MAX_BODY_BYTES", "65536"),
        ])
        .await;
    app.stop().await;
    let _ = env.kafka.delete_topic(&small).await;
    env.cleanup().await;
}

/// payhook's sessions carry the statement and idle-in-transaction limits,
/// as the server sees them.
#[tokio::test]
async fn sessions_carry_their_server_side_deadlines() {
    let mut map: HashMap<String, String> = HashMap::new();
    map.insert("DATABASE_URL".into(), admin_url());
    map.insert("DATABASE_STATEMENT_TIMEOUT".into(), "1500ms".into());
    map.insert("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT".into(), "20s".into());
    let cfg = Config::from_map(&map).unwrap();
    let pool = db::pool_from_config(&cfg.database, 1).unwrap();
    let c = pool.get().await.unwrap();
    let show = |name: &'static str| {
        let c = &c;
        async move {
            c.query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(show("statement_timeout").await, "1500ms");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "20s");
    // The server enforces it: a statement longer than the limit is stopped.
    let e = c.simple_query("SELECT pg_sleep(3)").await.unwrap_err();
    assert!(
        DbError::from(e).to_string().contains("statement timeout"),
        "not stopped by statement_timeout"
    );
}
