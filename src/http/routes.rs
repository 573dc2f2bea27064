//! The endpoints.
//!
//! | method | path                             | answer |
//! |--------|----------------------------------|--------|
//! | POST   | `/webhooks/payments/orders`      | 202 `{"event_id"}` once Kafka has the event |
//! | POST   | `/webhooks/payments/chargebacks` | same, for chargebacks |
//! | POST   | `/webhooks/stripe`               | Stripe events: 202 `{"event_id"}`, or 200 for a type payhook does not map |
//! | POST   | `/webhooks/adyen`                | Adyen batches: 200 `[accepted]` once every item is acknowledged |
//! | GET    | `/healthz`                       | 200 while the process runs (liveness) |
//! | GET    | `/readyz`                        | 200 when the broker and the database answer, else 503 naming what is down |
//! | GET    | `/metrics`                       | Prometheus text |
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

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, header};
use serde_json::json;
use tracing::{info, warn};

use super::error::{ApiError, Body, json_response};
use crate::messaging::{
    Kafka,
    envelope::{Envelope, EventType},
    health::{ConsumerHealth, PartitionReport},
    producer::Publish,
};
use crate::metrics::{IgnoredLabels, Metrics, WebhookLabels};
use crate::providers::{self, Provider, Refusal, Stream, generic::Generic, signature::Verifier};
use deadpool_postgres::Pool;
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
    pub metrics: Metrics,
    /// `/webhooks/stripe` and `/webhooks/adyen`, when switched on.
    pub providers: providers::Endpoints,
}

/// One webhook endpoint: where its events go and how they are signed.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub topic: String,
    /// `None` only when verification is switched off (`WEBHOOK_VERIFY=off`).
    pub verifier: Option<Verifier>,
}

/// Routes one request. Never fails: every error becomes an answer.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match (req.uri().path(), req.method()) {
        ("/webhooks/payments/orders", &Method::POST) => {
            let generic = Generic {
                stream: Stream::Orders,
                verifier: state.orders.verifier.as_ref(),
            };
            let r = ingest(&state, req, &generic).await;
            count(&state, "orders", r)
        }
        ("/webhooks/payments/chargebacks", &Method::POST) => {
            let generic = Generic {
                stream: Stream::Disputes,
                verifier: state.chargebacks.verifier.as_ref(),
            };
            let r = ingest(&state, req, &generic).await;
            count(&state, "chargebacks", r)
        }
        ("/webhooks/stripe", &Method::POST) => {
            let r = match &state.providers.stripe {
                Some(p) => ingest(&state, req, p).await,
                None => Err(ApiError::NotFound),
            };
            count(&state, "stripe", r)
        }
        ("/webhooks/adyen", &Method::POST) => {
            let r = match &state.providers.adyen {
                Some(p) => ingest(&state, req, p).await,
                None => Err(ApiError::NotFound),
            };
            count(&state, "adyen", r)
        }
        (
            "/webhooks/payments/orders"
            | "/webhooks/payments/chargebacks"
            | "/webhooks/stripe"
            | "/webhooks/adyen",
            _,
        ) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        ("/healthz", &Method::GET | &Method::HEAD) => {
            Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
        }
        ("/healthz", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/readyz", &Method::GET | &Method::HEAD) => Ok(readyz(&state).await),
        ("/readyz", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let mut resp = Response::new(Body::new(Bytes::from(state.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(resp)
        }
        ("/metrics", _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
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

/// How long each readiness check may take.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` asks: each dependency that does not answer, with why.
/// The service's probe asks the broker and the database; tests use a fake.
pub trait Readiness: Send + Sync + std::fmt::Debug {
    fn down(&self) -> BoxFuture<'_, Vec<(&'static str, String)>>;

    /// Partitions that are stalled or stopped (none by default).
    fn unhealthy_partitions(&self) -> Vec<PartitionReport> {
        Vec::new()
    }
}

/// The real probe: the broker answers a metadata request and the database a
/// query, each within [`READY_CHECK_TIMEOUT`].
#[derive(Clone, Debug)]
pub struct ServiceProbe {
    pub kafka: Kafka,
    pub pool: Pool,
    /// A topic whose metadata is asked for.
    pub topic: String,
    /// What the partition consumers report.
    pub health: ConsumerHealth,
}

impl Readiness for ServiceProbe {
    fn down(&self) -> BoxFuture<'_, Vec<(&'static str, String)>> {
        Box::pin(async move {
            let (kafka, db) = tokio::join!(
                tokio::time::timeout(READY_CHECK_TIMEOUT, self.kafka.partitions(&self.topic)),
                tokio::time::timeout(READY_CHECK_TIMEOUT, crate::db::ping(&self.pool)),
            );
            let late = || format!("no answer within {READY_CHECK_TIMEOUT:?}");
            let mut down = Vec::new();
            match kafka {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => down.push(("kafka", e.to_string())),
                Err(_) => down.push(("kafka", late())),
            }
            match db {
                Ok(Ok(())) => {}
                Ok(Err(e)) => down.push(("database", e.to_string())),
                Err(_) => down.push(("database", late())),
            }
            down
        })
    }

    fn unhealthy_partitions(&self) -> Vec<PartitionReport> {
        self.health.unhealthy()
    }
}

/// Readiness as a status report rather than an error, so it is answered
/// here and not through `ApiError`.
///
/// Stalled or stopped partitions do not make the service unready: taking
/// webhooks needs only the broker, and refusing them would not move a stuck
/// partition. They turn `status` into `degraded` and are listed under
/// `partitions`, with the offset each is stuck on and why; the
/// `payhook_consumer_stalled` / `_stopped` gauges carry the same.
async fn readyz(state: &AppState) -> Response<Body> {
    let down = state.readiness.down().await;
    let stuck = state.readiness.unhealthy_partitions();
    if down.is_empty() {
        if stuck.is_empty() {
            return json_response(StatusCode::OK, &json!({"status": "ready"}));
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

fn is_json(req: &Request<impl Sized>) -> bool {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
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
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

/// Verifies, splits and maps a webhook through its provider, publishes
/// every event, and answers only once the broker has acknowledged them all.
async fn ingest<B>(
    state: &AppState,
    req: Request<B>,
    provider: &dyn Provider,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !is_json(&req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let (parts, body) = req.into_parts();
    let body = read_body(
        &parts.headers,
        body,
        state.max_body_bytes,
        state.request_timeout,
    )
    .await?;
    let name = provider.name();
    let accepted = match provider.accept(&parts.headers, &body, unix_now()) {
        Ok(a) => a,
        Err(Refusal::Unauthorized(reason)) => {
            warn!(provider = name, %reason, "webhook signature refused");
            return Err(ApiError::Unauthorized(reason));
        }
        Err(Refusal::Invalid(e)) => return Err(e.into()),
    };
    drop(body);
    for t in &accepted.ignored {
        info!(provider = name, r#type = %t, "webhook of a type payhook does not map; acknowledged");
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
    let envelopes: Vec<(&str, Envelope)> = accepted
        .items
        .into_iter()
        .map(|item| {
            let (kind, topic) = match item.stream {
                Stream::Orders => (EventType::OrderWebhook, &state.orders.topic),
                Stream::Disputes => (EventType::DisputeWebhook, &state.chargebacks.topic),
            };
            let env = Envelope::from_provider(kind, &item.key, item.raw, name, item.mapping);
            (topic.as_str(), env)
        })
        .collect();
    let started = std::time::Instant::now();
    let published = futures::future::join_all(
        envelopes
            .iter()
            .map(|(topic, env)| state.publisher.publish(topic, env.to_record())),
    )
    .await;
    if !envelopes.is_empty() {
        state
            .metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    let mut first_error = None;
    for ((_, env), r) in envelopes.iter().zip(published) {
        match r {
            Ok(p) => {
                info!(event_id = %env.event_id, key = %env.key, provider = name, r#type = %env.kind,
                      partition = p.partition, offset = p.offset, "webhook accepted")
            }
            Err(source) => {
                warn!(event_id = %env.event_id, key = %env.key, provider = name, r#type = %env.kind,
                      error = %source, "webhook not accepted");
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

/// The local clock in Unix seconds, for signature timestamps.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
