//! The no-op HTTP server: the ceiling the load generator and the machine
//! allow, measured in the same run as payhook.
//!
//! It is this bench binary started again with [`ADDR_VAR`] set: `main`
//! checks that variable before anything else and then only serves. hyper 1,
//! HTTP/1.1 with keep-alive, a multi-thread tokio runtime with the default
//! number of workers; each request's whole body is read, and the answer is
//! a `202` with a small JSON body shaped like payhook's (`{"event_id":
//! "<uuid>"}`). It stops when its standard input closes (the bench holds
//! the other end), so it never outlives the bench.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Set to `host:port` to make this binary the no-op server.
pub const ADDR_VAR: &str = "PAYHOOK_BENCH_NOOP_ADDR";

/// Serves until standard input closes. Runs its own runtime; called from
/// `main` before anything else.
pub fn serve(addr: &str) {
    let addr: SocketAddr = addr.parse().expect("PAYHOOK_BENCH_NOOP_ADDR is host:port");
    exit_with_parent();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the no-op server");
        let accept = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
        };
        accept.await;
    });
}

/// Exits the process once standard input closes: the bench holds the
/// other end, so EOF (or an error) means it is gone.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    std::hint::black_box(&body);
    let id = uuid::Uuid::now_v7();
    let mut resp = Response::new(Full::new(Bytes::from(format!(r#"{{"event_id":"{id}"}}"#))));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Starts the no-op server as a child process on `addr`.
pub fn spawn(addr: SocketAddr) -> Child {
    Command::new(std::env::current_exe().expect("the bench binary's path"))
        .env(ADDR_VAR, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the no-op server")
}
