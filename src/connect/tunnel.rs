//! The TLS tunnel to Kafka: a SOCKS5 server inside payhook, on a loopback
//! port only payhook knows, through which rskafka reaches every broker.
//!
//! # Why
//!
//! rskafka 0.6 can speak TLS only through its `transport-tls` feature, which
//! hard-enables rustls's `ring` provider, and ring compiles C. Its
//! `transport-socks5` feature is pure Rust: with
//! `ClientBuilder::socks5_proxy(addr)` it opens every broker connection (the
//! bootstrap brokers and each broker it learns from metadata) as a SOCKS5
//! `CONNECT host:port` through `addr`, and then speaks Kafka, SASL included,
//! over the stream it gets. This module is that proxy: for each `CONNECT` it
//! dials the broker, wraps the connection in TLS with tokio-rustls on the
//! graviola provider (payhook's own [`rustls::ClientConfig`]: CA file or
//! Mozilla's roots, the client certificate for mutual TLS, SNI = the host
//! rskafka asked for), answers success, and copies bytes both ways. rskafka
//! sees a plaintext stream; on the network the bytes are TLS.
//!
//! # What it lets through
//!
//! - Only loopback: it listens on `127.0.0.1`, on a port the kernel picks.
//! - On Linux, only payhook's own sockets: the peer's socket is looked up in
//!   `/proc/net/tcp` and must be among the open files of this process
//!   (`/proc/self/fd`). rskafka's SOCKS5 client sends no credentials, so on
//!   other systems another local process that finds the port could use the
//!   tunnel (docs/security.md says what that allows).
//! - Only brokers: a destination must be a bootstrap address or a broker the
//!   cluster's metadata names. rskafka learns brokers from its own Metadata
//!   answers, which the tunnel does not read; on a destination it does not
//!   know, the tunnel asks the cluster for its brokers (the `brokers` lookup
//!   it was given: payhook's admin connection) at most once per
//!   [`MIN_LOOKUP_INTERVAL`], and refuses what is still not among them.
//!
//! # Sockets
//!
//! The broker socket gets `TCP_NODELAY` and keepalives ([`KEEPALIVE_IDLE`],
//! then a probe a second, three misses); the loopback socket gets
//! `TCP_NODELAY` for the answers, and on Linux `TCP_QUICKACK` after each
//! read, because rskafka writes the 4-byte length of a request and then the
//! request on a socket without `TCP_NODELAY`: Nagle's algorithm then holds
//! the request until the length is acknowledged, which a delayed
//! acknowledgement would put off by 40 ms (docs/performance.md, "The TLS
//! tunnel").
//!
//! When either side closes or fails, both are closed. Dropping the
//! [`Tunnel`] stops it: the listener and every connection it carries.

use std::{
    collections::HashSet,
    fmt,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a broker socket may be idle before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// The least time between two broker lookups, so a stream of unknown
/// destinations cannot make payhook hammer the cluster.
pub const MIN_LOOKUP_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes read at once from either side.
const BUFFER: usize = 64 * 1024;

/// Why the tunnel could not start, or could not carry one connection.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot open the TLS tunnel's loopback port: {0}")]
    Listen(#[source] std::io::Error),
    #[error("refused a tunnel connection from {peer}: its socket belongs to another process")]
    ForeignPeer { peer: SocketAddr },
    #[error("cannot tell which process {peer} belongs to: {source}")]
    PeerCheck {
        peer: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("SOCKS5 request: {0}")]
    Socks(&'static str),
    #[error("SOCKS5 request: {0}")]
    SocksIo(#[source] std::io::Error),
    #[error(
        "refused to tunnel to {broker}: neither a bootstrap broker nor a broker the cluster's metadata names"
    )]
    NotABroker { broker: Destination },
    #[error("connecting to broker {broker}: {source}")]
    Connect {
        broker: Destination,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {broker} did not finish within {}", humantime::format_duration(*.after))]
    Timeout {
        what: &'static str,
        broker: Destination,
        after: Duration,
    },
    #[error(
        "TLS handshake with broker {broker}: {source}{}",
        wrong_protocol_hint(source)
    )]
    Tls {
        broker: Destination,
        #[source]
        source: std::io::Error,
    },
}

/// A listener of another protocol (plaintext Kafka reads the TLS greeting
/// as a request too large, and hangs up) just closes the connection.
fn wrong_protocol_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted => {
            " (does this listener expect another security protocol? \
             check KAFKA_SECURITY_PROTOCOL and the port)"
        }
        _ => "",
    }
}

/// A broker address as rskafka names it: host (a DNS name or an IP address,
/// lowercased) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// `host:port`, or `[v6]:port`.
    pub fn parse(s: &str) -> Option<Self> {
        let (host, port) = s.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Self {
            host: host.to_ascii_lowercase(),
            port: port.parse().ok()?,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An error of the broker lookup, whatever the caller's type.
pub type LookupError = Box<dyn std::error::Error + Send + Sync>;

/// Asks the cluster for its brokers (`host:port` each), as its metadata
/// names them.
pub type BrokerLookup = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<String>, LookupError>> + Send>>
        + Send
        + Sync,
>;

/// What a tunnel needs.
pub struct TunnelSettings {
    /// The configured bootstrap brokers (`host:port`).
    pub bootstrap: Vec<String>,
    pub tls: Arc<ClientConfig>,
    /// Bounds dialling a broker, and then its TLS handshake, each.
    pub timeout: Duration,
    pub brokers: BrokerLookup,
}

/// A running tunnel. Dropping it stops the listener and every connection.
pub struct Tunnel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("addr", &self.addr).finish()
    }
}

struct Shared {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
    lookup: BrokerLookup,
    allowed: Mutex<HashSet<Destination>>,
    /// When the brokers were last looked up; held while a lookup runs, so
    /// concurrent misses wait for one lookup.
    last_lookup: tokio::sync::Mutex<Option<Instant>>,
    /// The outcome of the latest broker connection: its failure, or `None`
    /// once one succeeded.
    last_failure: Mutex<Option<Arc<TunnelError>>>,
}

impl Tunnel {
    /// Listens on a random loopback port and serves until dropped.
    pub async fn start(settings: TunnelSettings) -> Result<Self, TunnelError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(TunnelError::Listen)?;
        let addr = listener.local_addr().map_err(TunnelError::Listen)?;
        let shared = Arc::new(Shared {
            tls: tokio_rustls::TlsConnector::from(settings.tls),
            timeout: settings.timeout,
            lookup: settings.brokers,
            allowed: Mutex::new(
                settings
                    .bootstrap
                    .iter()
                    .filter_map(|b| Destination::parse(b))
                    .collect(),
            ),
            last_lookup: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::clone(&shared), stop.clone()));
        Ok(Self {
            addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// Where rskafka's SOCKS5 client connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Why the latest broker connection failed, unless one succeeded since.
    pub fn last_failure(&self) -> Option<Arc<TunnelError>> {
        self.shared
            .last_failure
            .lock()
            .expect("not poisoned")
            .clone()
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (local, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!("TLS tunnel: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = serve(&shared, local, peer) => if let Err(e) = r {
                    tracing::warn!("TLS tunnel: {e}");
                    if !matches!(*e, TunnelError::ForeignPeer { .. } | TunnelError::PeerCheck { .. }) {
                        *shared.last_failure.lock().expect("not poisoned") = Some(e);
                    }
                }
            }
        });
    }
}

/// SOCKS5 reply codes (RFC 1928, section 6).
mod reply {
    pub const SUCCEEDED: u8 = 0x00;
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// One connection from rskafka: check the peer, read the request, check the
/// destination, dial it with TLS, answer, copy until either side closes.
async fn serve(
    shared: &Shared,
    mut local: TcpStream,
    peer: SocketAddr,
) -> Result<(), Arc<TunnelError>> {
    let _ = local.set_nodelay(true);
    quickack(&local);
    check_peer(&local, peer).await.map_err(Arc::new)?;
    let broker = match tokio::time::timeout(shared.timeout, read_request(&mut local)).await {
        Ok(Ok(broker)) => broker,
        Ok(Err((code, e))) => {
            if let Some(code) = code {
                let _ = answer(&mut local, code).await;
            }
            return Err(Arc::new(e));
        }
        Err(_) => {
            return Err(Arc::new(TunnelError::Socks(
                "no request within the timeout",
            )));
        }
    };
    if !shared.allows(&broker).await {
        let _ = answer(&mut local, reply::NOT_ALLOWED).await;
        return Err(Arc::new(TunnelError::NotABroker { broker }));
    }
    let remote = match shared.dial(&broker).await {
        Ok(remote) => remote,
        Err(e) => {
            let code = match e {
                TunnelError::Connect { .. } => reply::HOST_UNREACHABLE,
                _ => reply::GENERAL_FAILURE,
            };
            let _ = answer(&mut local, code).await;
            return Err(Arc::new(e));
        }
    };
    *shared.last_failure.lock().expect("not poisoned") = None;
    if answer(&mut local, reply::SUCCEEDED).await.is_err() {
        return Ok(());
    }
    tracing::debug!("TLS tunnel: connected to broker {broker}");
    relay(local, remote).await;
    tracing::debug!("TLS tunnel: closed the connection to broker {broker}");
    Ok(())
}

impl Shared {
    /// Whether `broker` is a bootstrap broker or one the metadata names,
    /// looking the brokers up again when it is neither (at most once per
    /// [`MIN_LOOKUP_INTERVAL`]).
    async fn allows(&self, broker: &Destination) -> bool {
        let known = |this: &Self| this.allowed.lock().expect("not poisoned").contains(broker);
        if known(self) {
            return true;
        }
        let mut last = self.last_lookup.lock().await;
        if known(self) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < MIN_LOOKUP_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(self.timeout, (self.lookup)()).await {
            Ok(Ok(brokers)) => {
                let mut allowed = self.allowed.lock().expect("not poisoned");
                allowed.extend(brokers.iter().filter_map(|b| Destination::parse(b)));
            }
            Ok(Err(e)) => tracing::warn!("TLS tunnel: looking up the cluster's brokers: {e}"),
            Err(_) => tracing::warn!(
                "TLS tunnel: looking up the cluster's brokers did not finish within {}",
                humantime::format_duration(self.timeout)
            ),
        }
        known(self)
    }

    /// TCP to the broker (`TCP_NODELAY`, keepalives), then TLS, each within
    /// the timeout.
    async fn dial(
        &self,
        broker: &Destination,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TunnelError> {
        let timeout = |what| TunnelError::Timeout {
            what,
            broker: broker.clone(),
            after: self.timeout,
        };
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((broker.host.as_str(), broker.port)),
        )
        .await
        .map_err(|_| timeout("connecting to broker"))?
        .map_err(|source| TunnelError::Connect {
            broker: broker.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive());
        let name = ServerName::try_from(broker.host.clone()).map_err(|e| TunnelError::Tls {
            broker: broker.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        tokio::time::timeout(self.timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| timeout("TLS handshake with broker"))?
            .map_err(|source| TunnelError::Tls {
                broker: broker.clone(),
                source,
            })
    }
}

fn keepalive() -> socket2::TcpKeepalive {
    let k = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(1));
    #[cfg(any(target_os = "linux", target_os = "windows"))]
    let k = k.with_retries(3);
    k
}

/// Acknowledge what arrives on the loopback socket at once (see the module
/// doc). Linux clears the flag as it sees fit, so it is set again after
/// every read.
fn quickack(local: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(local).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = local;
}

/// Reads the method selection (answering "no authentication") and the
/// request. An error carries the reply code to send, if any.
async fn read_request(local: &mut TcpStream) -> Result<Destination, (Option<u8>, TunnelError)> {
    let io = |e| (None, TunnelError::SocksIo(e));
    let [version, methods] = read_array(local).await.map_err(io)?;
    if version != 5 {
        return Err((None, TunnelError::Socks("not SOCKS version 5")));
    }
    let mut offered = vec![0; usize::from(methods)];
    read_exact(local, &mut offered).await.map_err(io)?;
    if !offered.contains(&0x00) {
        // "No acceptable methods."
        let _ = local.write_all(&[5, 0xff]).await;
        return Err((
            None,
            TunnelError::Socks("the client does not offer 'no authentication'"),
        ));
    }
    local.write_all(&[5, 0x00]).await.map_err(io)?;
    let [version, command, _reserved, address_type] = read_array(local).await.map_err(io)?;
    if version != 5 {
        return Err((None, TunnelError::Socks("not SOCKS version 5")));
    }
    let host = match address_type {
        0x01 => Ipv4Addr::from(read_array::<4>(local).await.map_err(io)?).to_string(),
        0x03 => {
            let [len] = read_array(local).await.map_err(io)?;
            let mut name = vec![0; usize::from(len)];
            read_exact(local, &mut name).await.map_err(io)?;
            String::from_utf8(name)
                .map_err(|_| {
                    (
                        Some(reply::GENERAL_FAILURE),
                        TunnelError::Socks("a host name that is not UTF-8"),
                    )
                })?
                .to_ascii_lowercase()
        }
        // rskafka sends names (even for IP addresses), and cannot name an
        // IPv6 broker at all (it splits `host:port` at the first colon).
        _ => {
            return Err((
                Some(reply::ADDRESS_TYPE_NOT_SUPPORTED),
                TunnelError::Socks("an address type other than IPv4 or a name"),
            ));
        }
    };
    let port = u16::from_be_bytes(read_array(local).await.map_err(io)?);
    if command != 0x01 {
        return Err((
            Some(reply::COMMAND_NOT_SUPPORTED),
            TunnelError::Socks("a command other than CONNECT"),
        ));
    }
    Ok(Destination { host, port })
}

/// Reads exactly `N` bytes, and acknowledges them at once: rskafka's SOCKS5
/// client writes its request a byte or a field at a time, and Nagle holds
/// each write until the one before is acknowledged.
async fn read_array<const N: usize>(r: &mut TcpStream) -> std::io::Result<[u8; N]> {
    let mut buf = [0; N];
    read_exact(r, &mut buf).await?;
    Ok(buf)
}

async fn read_exact(r: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
        quickack(r);
    }
    Ok(())
}

/// A reply with an unspecified bound address (0.0.0.0:0): rskafka does not
/// read it.
async fn answer(local: &mut TcpStream, code: u8) -> std::io::Result<()> {
    local.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// Copies both ways until either side closes or fails, then closes both
/// (the broker side with TLS's close_notify, within a second).
async fn relay<S: AsyncRead + AsyncWrite>(mut local: TcpStream, remote: S) {
    let (mut local_read, mut local_write) = local.split();
    let (mut remote_read, mut remote_write) = tokio::io::split(remote);
    tokio::select! {
        _ = copy(&mut local_read, &mut remote_write, Some(local_read_socket)) => {}
        _ = copy(&mut remote_read, &mut local_write, None) => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), remote_write.shutdown()).await;
    let _ = local_write.shutdown().await;
}

fn local_read_socket(r: &tokio::net::tcp::ReadHalf<'_>) {
    quickack(r.as_ref());
}

/// Copies `from` into `to` until `from` ends or either fails. `after_read`
/// runs on `from` after each read.
async fn copy<R, W>(from: &mut R, to: &mut W, after_read: Option<fn(&R)>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(f) = after_read {
            f(from);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// On Linux, refuses a peer whose socket is not among this process's open
/// files; elsewhere, accepts every loopback peer.
async fn check_peer(local: &TcpStream, peer: SocketAddr) -> Result<(), TunnelError> {
    #[cfg(target_os = "linux")]
    {
        let me = local
            .local_addr()
            .map_err(|source| TunnelError::PeerCheck { peer, source })?;
        let ours = tokio::task::spawn_blocking(move || peer_is_ours(peer, me))
            .await
            .map_err(|e| TunnelError::PeerCheck {
                peer,
                source: std::io::Error::other(e),
            })?
            .map_err(|source| TunnelError::PeerCheck { peer, source })?;
        if !ours {
            return Err(TunnelError::ForeignPeer { peer });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (local, peer);
    Ok(())
}

/// Whether the socket connected from `peer` to `me` is one of this
/// process's open files: its inode, from `/proc/net/tcp`, among the
/// `socket:[inode]` links in `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn peer_is_ours(peer: SocketAddr, me: SocketAddr) -> std::io::Result<bool> {
    let (SocketAddr::V4(peer), SocketAddr::V4(me)) = (peer, me) else {
        return Ok(false);
    };
    // The kernel prints each address as its 32-bit value in the machine's
    // byte order, and the port in hex.
    let hex = |a: std::net::SocketAddrV4| {
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )
    };
    let (peer, me) = (hex(peer), hex(me));
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&peer.as_str()) && fields.get(2) == Some(&me.as_str()))
            .then(|| fields.get(9).map(|s| s.to_string()))
            .flatten()
    });
    let Some(inode) = inode else {
        return Ok(false);
    };
    let link = format!("socket:[{inode}]");
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = fd else { continue };
        if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tunnel whose lookup answers `brokers` and counts its calls.
    async fn tunnel(
        bootstrap: &[&str],
        brokers: &[&str],
        timeout: Duration,
    ) -> (Tunnel, Arc<AtomicUsize>) {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&lookups);
        let brokers: Vec<String> = brokers.iter().map(|b| b.to_string()).collect();
        let lookup: BrokerLookup = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let brokers = brokers.clone();
            Box::pin(async move { Ok(brokers) })
        });
        let tls = crate::connect::tls_config(None, None, crate::connect::Verify::Full).unwrap();
        let t = Tunnel::start(TunnelSettings {
            bootstrap: bootstrap.iter().map(|b| b.to_string()).collect(),
            tls,
            timeout,
            brokers: lookup,
        })
        .await
        .unwrap();
        (t, lookups)
    }

    /// What rskafka's SOCKS5 client sends (a name, even for an IP address),
    /// and the reply code.
    async fn socks_connect(tunnel: SocketAddr, host: &str, port: u16) -> (TcpStream, u8) {
        let mut s = TcpStream::connect(tunnel).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut method = [0; 2];
        s.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 0]);
        let mut req = vec![5, 1, 0, 3, host.len() as u8];
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut reply = [0; 10];
        s.read_exact(&mut reply).await.unwrap();
        (s, reply[1])
    }

    /// The failure the tunnel recorded, once its task has recorded it.
    async fn failure(t: &Tunnel) -> Arc<TunnelError> {
        for _ in 0..100 {
            if let Some(e) = t.last_failure() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no failure recorded");
    }

    #[test]
    fn destinations_are_parsed_as_rskafka_names_them() {
        let d = Destination::parse("Broker-1.Example.com:9093").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("broker-1.example.com", 9093));
        assert_eq!(d.to_string(), "broker-1.example.com:9093");
        assert_eq!(
            Destination::parse("[::1]:9092").unwrap().to_string(),
            "[::1]:9092"
        );
        for bad in ["no-port", ":9092", "host:port", "host:70000"] {
            assert_eq!(Destination::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_destination_neither_bootstrap_nor_in_the_metadata_is_refused() {
        let (t, lookups) = tunnel(
            &["kafka.example.com:9093"],
            &["b-1.kafka.example.com:9093"],
            Duration::from_secs(5),
        )
        .await;
        let (mut s, code) = socks_connect(t.addr(), "127.0.0.1", 5432).await;
        assert_eq!(code, reply::NOT_ALLOWED);
        // The tunnel closed it.
        assert_eq!(s.read(&mut [0; 1]).await.unwrap(), 0);
        let e = failure(&t).await;
        assert!(matches!(*e, TunnelError::NotABroker { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:5432"), "{e}");
        // It asked the cluster once; asked again at once, it does not.
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        let (_, code) = socks_connect(t.addr(), "evil.example.com", 443).await;
        assert_eq!(code, reply::NOT_ALLOWED);
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        // A port of a known host is not the broker either.
        let (_, code) = socks_connect(t.addr(), "kafka.example.com", 22).await;
        assert_eq!(code, reply::NOT_ALLOWED);
    }

    /// A broker the metadata names is let through (here it then stays
    /// silent, so the handshake times out and says so, naming the broker).
    #[tokio::test]
    async fn a_broker_from_the_metadata_is_let_through_and_a_silent_one_times_out() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let broker = format!("127.0.0.1:{port}");
        let (t, lookups) = tunnel(
            &["kafka.example.com:9093"],
            &[&broker],
            Duration::from_millis(300),
        )
        .await;
        let started = Instant::now();
        let (_, code) = socks_connect(t.addr(), "127.0.0.1", port).await;
        assert_eq!(code, reply::GENERAL_FAILURE);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        let e = failure(&t).await.to_string();
        assert_eq!(
            e,
            format!("TLS handshake with broker {broker} did not finish within 300ms")
        );
        held.abort();
    }

    /// A plaintext Kafka listener reads the TLS greeting as a request and
    /// closes the connection: the handshake fails at once, with the broker
    /// named.
    #[tokio::test]
    async fn a_listener_that_does_not_speak_tls_fails_the_handshake() {
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = plain.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s.read(&mut [0; 512]).await;
            }
        });
        let broker = format!("127.0.0.1:{port}");
        let (t, _) = tunnel(&[&broker], &[], Duration::from_secs(5)).await;
        let (_, code) = socks_connect(t.addr(), "127.0.0.1", port).await;
        assert_eq!(code, reply::GENERAL_FAILURE);
        let e = failure(&t).await;
        assert!(matches!(*e, TunnelError::Tls { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.starts_with(&format!("TLS handshake with broker {broker}: "))
                && e.contains("another security protocol"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn other_socks_requests_are_refused() {
        let (t, _) = tunnel(&["127.0.0.1:9"], &[], Duration::from_secs(5)).await;
        // Username and password only: "no acceptable methods".
        let mut s = TcpStream::connect(t.addr()).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        let mut method = [0; 2];
        s.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 0xff]);
        // BIND instead of CONNECT.
        let mut s = TcpStream::connect(t.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        s.read_exact(&mut method).await.unwrap();
        s.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 9])
            .await
            .unwrap();
        let mut reply = [0; 10];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], reply::COMMAND_NOT_SUPPORTED);
        // SOCKS4: closed without an answer (reset, as it was not all read).
        let mut s = TcpStream::connect(t.addr()).await.unwrap();
        s.write_all(&[4, 1, 0, 9, 127, 0, 0, 1, 0]).await.unwrap();
        assert!(matches!(s.read(&mut [0; 8]).await, Ok(0) | Err(_)));
    }

    /// Bytes go both ways, and when either side closes, so does the other.
    #[tokio::test]
    async fn relay_copies_both_ways_and_closes_both_sides() {
        for local_closes in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (local, _) = listener.accept().await.unwrap();
            let (remote, mut broker) = tokio::io::duplex(1024);
            let relay = tokio::spawn(relay(local, remote));

            client.write_all(b"request").await.unwrap();
            let mut got = [0; 7];
            broker.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"request");
            broker.write_all(b"answer").await.unwrap();
            let mut got = [0; 6];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"answer");

            if local_closes {
                drop(client);
                // The broker side sees the end, though it never closed.
                let n = tokio::time::timeout(Duration::from_secs(5), broker.read(&mut [0; 8]))
                    .await
                    .expect("the broker side was not closed");
                assert_eq!(n.unwrap(), 0);
            } else {
                drop(broker);
                let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut [0; 8]))
                    .await
                    .expect("the local side was not closed");
                assert_eq!(n.unwrap(), 0);
            }
            tokio::time::timeout(Duration::from_secs(5), relay)
                .await
                .expect("the relay did not end")
                .unwrap();
        }
    }

    /// Dropping the tunnel stops its listener.
    #[tokio::test]
    async fn a_dropped_tunnel_stops_listening() {
        let (t, _) = tunnel(&["127.0.0.1:9"], &[], Duration::from_secs(5)).await;
        let addr = t.addr();
        drop(t);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A socket of another process (a shell's `/dev/tcp`) is closed before
    /// anything is answered; payhook's own sockets are served.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_socket_of_another_process_is_refused() {
        let (t, _) = tunnel(&["127.0.0.1:9"], &[], Duration::from_secs(5)).await;
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{}; printf '\\005\\001\\000' >&3; \
             timeout 5 od -An -tx1 -N2 <&3 || true",
            t.addr().port()
        );
        let out = tokio::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .await
            .unwrap();
        // Closed (reset, as it wrote what was never read) with no answer.
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "{out:?}");
        // This process's own connection gets the method selection.
        let mut s = TcpStream::connect(t.addr()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut method = [0; 2];
        s.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 0]);
    }
}
