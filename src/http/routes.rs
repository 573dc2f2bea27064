//! The endpoints.
//!
//! | method | path                             | answer |
//! |--------|----------------------------------|--------|
//! | POST   | `/webhooks/payments/orders`      | 202 `{"event_id"}` once Kafka has the event |
//! | POST   | `/webhooks/payments/chargebacks` | same, for chargebacks |
//! | POST   | `/webhooks/stripe`               | Stripe events: 202 `{"event_id"}`, or 200 for a type payhook does not map |
//! | POST   | `/webhooks/adyen`                | Adyen batches: 200 `[accepted]` once every item is acknowledged |
//! | GET    | `/healthz`                       | 200 while the process runs (liveness) |
//! | GET    | `/readyz`                        | 200 when the broker answers (intake needs nothing else), else 503; lists stalled or stopped partitions |
//! | GET    | `/metrics`                       | Prometheus text |
//! | GET    | `/status`                        | the consumer side: database, owned partitions, their offsets, lag and health |
//!
//! With `ADMIN_ADDR` set, `/metrics` and `/status` are served only on that
//! listener ([`handle_admin`]), so they need not face the internet;
//! `/healthz` and `/readyz` are on both, for load balancers.
//!
//! A webhook goes through the checks cheapest first, and nothing is published
//! unless all pass: the path and method (404, 405), `Content-Type` (415), the
//! body's size (413, refused from `Content-Length` before reading) and its
//! arrival within the request timeout (408), the signature over the exact
//! bytes received (401), and only then the JSON and its fields (400).
//!
//! What a request means is the provider's business ([`crate::providers`]):
//! this module reads the body, asks the provider to verify, split and map
//! it, publishes every event, and answers as the provider says once the
//! broker has acknowledged them all.
//!
//! A refusal must reach a client that is still sending its body. Closing a
//! socket with unread data makes the kernel answer with a reset, which the
//! client sees instead of the answer (typically a broken pipe while it
//! writes). So when a request is refused before its body was read to the
//! end — 404, 405, 415, 413, 408 — the rest of the body is read and thrown
//! away in the background, as nginx's lingering close does: at most
//! [`LINGER_MAX_BYTES`] for at most [`LINGER_TIMEOUT`]. hyper writes the
//! answer meanwhile; once the body is drained the connection is kept alive
//! as usual, and if a bound runs out first hyper closes it. A client that
//! sent `Expect: 100-continue` has sent nothing yet and is not asked to.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::json;
use tracing::{debug, info, warn};

use super::error::{ApiError, Body, json_response};
use crate::consume::health::PartitionReport;
use crate::kafka::{envelope::Envelope, producer::Publish, signing::Signer};
use crate::metrics::{IgnoredLabels, Metrics, ScopeLabels, WebhookLabels};
use crate::providers::{
    self, Intake, Provider, Refusal, Stream, generic::Generic, signature::Verifier,
};
use futures::future::BoxFuture;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The Kafka producer in the service; a recording fake in tests.
    pub publisher: Arc<dyn Publish>,
    /// `/webhooks/payments/orders`.
    pub orders: Endpoint,
    /// `/webhooks/payments/chargebacks`.
    pub chargebacks: Endpoint,
    /// What `/readyz` asks.
    pub readiness: Arc<dyn Readiness>,
    pub max_body_bytes: usize,
    /// How long the body may take to arrive.
    pub request_timeout: Duration,
    pub retry_after: Duration,
    /// How far after its acceptance a webhook's `occurred_at` may be
    /// (`OCCURRED_AT_MAX_FUTURE`).
    pub occurred_at_max_future: Duration,
    pub metrics: Metrics,
    /// Whether `/metrics` and `/status` are served with the webhooks
    /// (false when `ADMIN_ADDR` gives them a listener of their own).
    pub ops_on_public: bool,
    /// `/webhooks/stripe` and `/webhooks/adyen`, when switched on.
    pub providers: providers::Endpoints,
    /// `ENVELOPE_SIGNING_KEYS`: signs every record published.
    pub signer: Option<Signer>,
}

/// One webhook endpoint: where its events go and how they are signed.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub topic: String,
    /// How requests are taken; `None`: the endpoint is off (404). The
    /// topic is the stream's all the same (providers publish to it).
    pub intake: Option<Intake<Verifier>>,
}

/// Most bytes of an unread body read and thrown away after an early
/// refusal, so that the client can finish sending and read the answer.
pub const LINGER_MAX_BYTES: u64 = 4 << 20;
/// Longest time spent on that (nginx's `lingering_timeout` default).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body and how far it has been read.
struct RequestBody<B> {
    body: B,
    /// Whether anyone asked for its data yet (hyper sends `100 Continue` on
    /// the first read).
    polled: bool,
    finished: bool,
}

impl<B> RequestBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// After the answer is decided: if the body was not read to its end,
    /// drain the rest in the background (bounded), unless the client waits
    /// for `100 Continue` and so has sent none of it.
    fn linger(self, headers: &HeaderMap) {
        if self.finished || self.body.is_end_stream() {
            return;
        }
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && !self.polled {
            return;
        }
        tokio::spawn(drain(self.body, LINGER_MAX_BYTES, LINGER_TIMEOUT));
    }
}

/// Reads and discards `body` until its end, `max_bytes`, an error or
/// `timeout`, whichever comes first. Returns the bytes read.
async fn drain<B>(mut body: B, max_bytes: u64, timeout: Duration) -> u64
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut read = 0u64;
    let _ = tokio::time::timeout(timeout, async {
        while read < max_bytes {
            match body.frame().await {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    read
}

/// Routes one request. Never fails: every error becomes an answer.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let mut body = RequestBody {
        body,
        polled: false,
        finished: false,
    };
    let resp = route(&state, &parts, &mut body).await;
    body.linger(&parts.headers);
    resp
}

async fn route<B>(
    state: &AppState,
    parts: &hyper::http::request::Parts,
    body: &mut RequestBody<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let result = match (parts.uri.path(), &parts.method) {
        ("/webhooks/payments/orders", &Method::POST) => {
            let r = match &state.orders.intake {
                Some(intake) => {
                    let generic = Generic {
                        stream: Stream::Orders,
                        verifier: intake.keys(),
                    };
                    ingest(state, parts, body, &generic).await
                }
                None => Err(ApiError::NotFound),
            };
            count(state, "orders", r)
        }
        ("/webhooks/payments/chargebacks", &Method::POST) => {
            let r = match &state.chargebacks.intake {
                Some(intake) => {
                    let generic = Generic {
                        stream: Stream::Disputes,
                        verifier: intake.keys(),
                    };
                    ingest(state, parts, body, &generic).await
                }
                None => Err(ApiError::NotFound),
            };
            count(state, "chargebacks", r)
        }
        ("/webhooks/stripe", &Method::POST) => {
            let r = match &state.providers.stripe {
                Some(p) => ingest(state, parts, body, p).await,
                None => Err(ApiError::NotFound),
            };
            count(state, "stripe", r)
        }
        ("/webhooks/adyen", &Method::POST) => {
            let r = match &state.providers.adyen {
                Some(p) => ingest(state, parts, body, p).await,
                None => Err(ApiError::NotFound),
            };
            count(state, "adyen", r)
        }
        (
            "/webhooks/payments/orders"
            | "/webhooks/payments/chargebacks"
            | "/webhooks/stripe"
            | "/webhooks/adyen",
            _,
        ) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        // With an admin listener, the public probe says the word only: the
        // detail (broker errors, stalled partitions' errors) is for operators.
        ("/healthz" | "/readyz", &Method::GET | &Method::HEAD) => {
            Ok(probe(state, parts.uri.path(), state.ops_on_public).await)
        }
        ("/healthz" | "/readyz", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/metrics" | "/status", m) if state.ops_on_public => ops(state, m, parts.uri.path()).await,
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Routes one request on the admin listener (`ADMIN_ADDR`): probes,
/// metrics and status, nothing else.
pub async fn handle_admin<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let result = match (path, req.method()) {
        ("/healthz" | "/readyz", &Method::GET | &Method::HEAD) => {
            Ok(probe(&state, path, true).await)
        }
        ("/healthz" | "/readyz", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/metrics" | "/status", m) => ops(&state, m, path).await,
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// `/healthz`, or `/readyz` with its detail or (`detail` false) its status
/// word only.
async fn probe(state: &AppState, path: &str, detail: bool) -> Response<Body> {
    if path == "/healthz" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    readyz(state, detail).await
}

/// `/metrics` and `/status`.
async fn ops(state: &AppState, method: &Method, path: &str) -> Result<Response<Body>, ApiError> {
    if !matches!(method, &Method::GET | &Method::HEAD) {
        return Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" });
    }
    if path == "/status" {
        return Ok(json_response(
            StatusCode::OK,
            &state.readiness.status().await,
        ));
    }
    let mut resp = Response::new(Body::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// Counts a webhook answer by endpoint and status.
fn count(
    state: &AppState,
    endpoint: &'static str,
    r: Result<Response<Body>, ApiError>,
) -> Result<Response<Body>, ApiError> {
    let status = match &r {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            endpoint,
            status: status.as_u16(),
        })
        .inc();
    r
}

/// What `/readyz` asks: each dependency that does not answer, with why.
/// The service's probe asks the broker and the database; tests use a fake.
pub trait Readiness: Send + Sync + std::fmt::Debug {
    fn down(&self) -> BoxFuture<'_, Vec<(&'static str, String)>>;

    /// Partitions that are stalled or stopped (none by default).
    fn unhealthy_partitions(&self) -> Vec<PartitionReport> {
        Vec::new()
    }

    /// The consumer side, for `/status` (nothing by default).
    fn status(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async { json!({"partitions": []}) })
    }
}

/// Readiness as a status report rather than an error, so it is answered
/// here and not through `ApiError`.
///
/// Stalled or stopped partitions do not make the service unready: taking
/// webhooks needs only the broker, and refusing them would not move a stuck
/// partition. They turn `status` into `degraded` and are listed under
/// `partitions`, with the offset each is stuck on and why; the
/// `payhook_consumer_stalled` / `_stopped` gauges carry the same. Without
/// `detail` (the public listener when there is an admin listener) only the
/// status word is given, and a 503's fixed `error` and `detail`.
async fn readyz(state: &AppState, detail: bool) -> Response<Body> {
    let down = state.readiness.down().await;
    let stuck = state.readiness.unhealthy_partitions();
    if down.is_empty() {
        if stuck.is_empty() {
            return json_response(StatusCode::OK, &json!({"status": "ready"}));
        }
        if !detail {
            return json_response(StatusCode::OK, &json!({"status": "degraded"}));
        }
        return json_response(
            StatusCode::OK,
            &json!({
                "status": "degraded",
                "detail": format!("{} partition(s) stalled or stopped", stuck.len()),
                "partitions": stuck,
            }),
        );
    }
    let mut map = serde_json::Map::new();
    for (what, why) in &down {
        warn!(error = %why, "readiness: {what} is down");
        map.insert((*what).into(), json!(why));
    }
    if !detail {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "status": "unavailable",
                "error": "not_ready",
                "detail": "not ready (the admin listener's /readyz says why)",
            }),
        );
    }
    let names: Vec<&str> = down.iter().map(|(w, _)| *w).collect();
    // The same `error`/`detail` shape as every other refusal.
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "status": "unavailable",
            "error": "not_ready",
            "detail": format!("not ready: {}", names.join(", ")),
            "down": map,
            "partitions": stuck,
        }),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else { return false };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body<B>(
    headers: &HeaderMap,
    body: &mut RequestBody<B>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // Refuse a declared oversize body before reading any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // A slow client must not hold a connection (and a permit) forever.
    let collect = async {
        // Most bodies arrive in one chunk: keep it as it is.
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut len = 0usize;
        loop {
            body.polled = true;
            let Some(frame) = body.body.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| ApiError::BadBody(e.into().to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len();
            if len > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            match &first {
                None => first = Some(data),
                Some(f) => {
                    if rest.is_empty() {
                        rest.extend_from_slice(f);
                    }
                    rest.extend_from_slice(&data);
                }
            }
        }
        body.finished = true;
        Ok(if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            rest.freeze()
        })
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?
}

/// Verifies, splits and maps a webhook through its provider, publishes
/// every event, and answers only once the broker has acknowledged them all.
async fn ingest<B>(
    state: &AppState,
    parts: &hyper::http::request::Parts,
    body: &mut RequestBody<B>,
    provider: &dyn Provider,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = read_body(
        &parts.headers,
        body,
        state.max_body_bytes,
        state.request_timeout,
    )
    .await?;
    let name = provider.name();
    // The provider checks the signature on the bytes as received before
    // anything looks inside them, then splits and maps.
    // One instant: the signatures' clock, the mapping's and the envelope's
    // (the consumer maps the payload again at the envelope's timestamp).
    let accepted_at = chrono::Utc::now();
    let accepted = match provider.accept(&parts.headers, &body, accepted_at.timestamp()) {
        Ok(a) => a,
        Err(Refusal::Unauthorized(reason)) => {
            warn!(provider = name, %reason, "webhook signature refused");
            return Err(ApiError::Unauthorized(reason));
        }
        Err(Refusal::Invalid(e)) => return Err(e.into()),
    };
    drop(body);
    for t in &accepted.ignored {
        info!(provider = name, r#type = %crate::logging::excerpt(t, crate::logging::EXCERPT_BYTES),
              "webhook of a type payhook does not map; acknowledged");
        state
            .metrics
            .provider_events_ignored
            .get_or_create(&IgnoredLabels {
                provider: name,
                event_type: providers::type_label(t),
            })
            .inc();
    }
    // The payload travels byte for byte as the provider sent it.
    let mut envelopes: Vec<(&str, Envelope)> = Vec::with_capacity(accepted.items.len());
    let mut out_of_scope = Vec::new();
    for item in accepted.items {
        let kind = item.stream.event_type();
        let topic = match item.stream {
            Stream::Orders => &state.orders.topic,
            Stream::Disputes => &state.chargebacks.topic,
        };
        let refuse_if_late = item.refuse_if_after;
        out_of_scope.extend(item.out_of_scope);
        let mut env = Envelope::from_provider(kind, &item.key, item.raw, name, item.mapping);
        env.timestamp = accepted_at;
        // The consumer checks the same bound against the same timestamp.
        if let Some(occurred_at) = refuse_if_late {
            occurred_at.check_not_after(env.timestamp, state.occurred_at_max_future)?;
        }
        envelopes.push((topic.as_str(), env));
    }
    let started = std::time::Instant::now();
    let published = futures::future::join_all(envelopes.iter().map(|(topic, env)| {
        let mut record = env.to_record();
        if let Some(signer) = &state.signer {
            signer.sign(&mut record);
        }
        state.publisher.publish(topic, record)
    }))
    .await;
    if !envelopes.is_empty() {
        state
            .metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    let mut first_error = None;
    for ((topic, env), r) in envelopes.iter().zip(published) {
        match r {
            // Counted by payhook_webhooks_total; a line per webhook only
            // when asked for (RUST_LOG=payhook=debug).
            Ok(p) => {
                debug!(event_id = %env.event_id, key = %env.key, provider = name, r#type = %env.kind,
                       %topic, partition = p.partition, offset = p.offset, "webhook accepted")
            }
            Err(source) => {
                warn!(event_id = %env.event_id, key = %env.key, provider = name, r#type = %env.kind,
                      %topic, error = %source, "webhook not accepted");
                first_error.get_or_insert(source);
            }
        }
    }
    // All or nothing for the answer: the provider sends the whole request
    // again, and what was published already is applied once (events are
    // idempotent by provider_event_id).
    if let Some(source) = first_error {
        return Err(ApiError::Unavailable {
            source,
            retry_after: state.retry_after,
        });
    }
    // Counted once acknowledged (a refused request is sent again).
    for reason in out_of_scope {
        warn!(
            provider = name,
            reason, "webhook from outside the endpoint's scope; acknowledged and dead-lettered"
        );
        state
            .metrics
            .provider_events_out_of_scope
            .get_or_create(&ScopeLabels {
                provider: name,
                reason,
            })
            .inc();
    }
    let ids: Vec<uuid::Uuid> = envelopes.iter().map(|(_, e)| e.event_id).collect();
    let (status, content_type, body) = provider.answer(&ids);
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}
