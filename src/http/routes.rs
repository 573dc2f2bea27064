//! The endpoints.
//!
//! | method | path                             | answer |
//! |--------|----------------------------------|--------|
//! | POST   | `/webhooks/payments/orders`      | 202 `{"event_id"}` once Kafka has the event |
//! | POST   | `/webhooks/payments/chargebacks` | same, for chargebacks |
//! | GET    | `/healthz`                       | 200 while the process runs (liveness) |
//! | GET    | `/readyz`                        | 200 when the broker and the database answer, else 503 naming what is down |

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde_json::{Value, json, value::RawValue};
use tracing::{info, warn};

use super::error::{ApiError, Body, json_response};
use crate::metrics::{Metrics, WebhookLabels};
use crate::{
    domain::{ValidationError, disputes::ChargebackWebhook, orders::PaymentWebhook},
    messaging::{
        Kafka,
        envelope::{Envelope, EventType},
        producer::Producer,
    },
};
use deadpool_postgres::Pool;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub producer: Producer,
    /// For `/readyz`.
    pub kafka: Kafka,
    /// For `/readyz`.
    pub pool: Pool,
    pub orders_topic: String,
    pub disputes_topic: String,
    pub max_body_bytes: usize,
    pub retry_after: Duration,
    pub metrics: Metrics,
}

/// Routes one request. Never fails: every error becomes an answer.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match (req.uri().path(), req.method()) {
        ("/webhooks/payments/orders", &Method::POST) => {
            let r = ingest(&state, req, EventType::OrderWebhook).await;
            count(&state, "orders", r)
        }
        ("/webhooks/payments/chargebacks", &Method::POST) => {
            let r = ingest(&state, req, EventType::DisputeWebhook).await;
            count(&state, "chargebacks", r)
        }
        ("/webhooks/payments/orders" | "/webhooks/payments/chargebacks", _) => {
            Err(ApiError::MethodNotAllowed { allow: "POST" })
        }
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

/// Readiness: the broker answers a metadata request and the database a
/// query, each within [`READY_CHECK_TIMEOUT`]. A status report rather than
/// an error, so it is answered here and not through `ApiError`.
async fn readyz(state: &AppState) -> Response<Body> {
    let (kafka, db) = tokio::join!(
        tokio::time::timeout(
            READY_CHECK_TIMEOUT,
            state.kafka.partitions(&state.orders_topic)
        ),
        tokio::time::timeout(READY_CHECK_TIMEOUT, crate::db::ping(&state.pool)),
    );
    let describe = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer within {READY_CHECK_TIMEOUT:?}")),
    };
    let kafka = describe(kafka.map(|r| r.map(|_| ()).map_err(|e| e.to_string())));
    let database = describe(db.map(|r| r.map_err(|e| e.to_string())));
    let mut down = serde_json::Map::new();
    if let Some(e) = kafka {
        warn!(error = %e, "readiness: kafka is down");
        down.insert("kafka".into(), json!(e));
    }
    if let Some(e) = database {
        warn!(error = %e, "readiness: database is down");
        down.insert("database".into(), json!(e));
    }
    if down.is_empty() {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "down": down}),
        )
    }
}

/// The type hyper hands us.
pub type IncomingRequest = Request<Incoming>;

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

async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Refuse a declared oversize body before reading any of it.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

/// Validates a webhook and publishes it; 202 only after the broker's ack.
async fn ingest<B>(
    state: &AppState,
    req: Request<B>,
    kind: EventType,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !is_json(&req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = read_body(req, state.max_body_bytes).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ValidationError::invalid_json(format!("the body is not valid JSON: {e}")))?;
    let (order_id, topic) = match kind {
        EventType::OrderWebhook => (
            PaymentWebhook::from_json(&value)?.order_id,
            &state.orders_topic,
        ),
        EventType::DisputeWebhook => (
            ChargebackWebhook::from_json(&value)?.order_id,
            &state.disputes_topic,
        ),
    };
    drop(value);
    // The payload travels byte for byte as the provider sent it.
    let raw: Box<RawValue> = serde_json::from_slice(&body)
        .map_err(|e| ValidationError::invalid_json(format!("the body is not valid JSON: {e}")))?;
    let envelope = Envelope::new(kind, order_id.as_str(), raw);
    let event_id = envelope.event_id;
    let started = std::time::Instant::now();
    let published = state.producer.publish(topic, envelope.to_record()).await;
    state
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    match published {
        Ok(p) => {
            info!(%event_id, %order_id, r#type = kind.as_str(), partition = p.partition, offset = p.offset, "webhook accepted");
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({ "event_id": event_id }),
            ))
        }
        Err(source) => {
            warn!(%event_id, %order_id, r#type = kind.as_str(), error = %source, "webhook not accepted");
            Err(ApiError::Unavailable {
                source,
                retry_after: state.retry_after,
            })
        }
    }
}
