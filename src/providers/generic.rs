//! The generic provider: payhook's own normalized format, posted to
//! `/webhooks/payments/orders` and `/webhooks/payments/chargebacks`.
//!
//! - **Verify**: the endpoint's scheme (Standard Webhooks or Stripe, see
//!   [`super::signature`]), unless `WEBHOOK_VERIFY=off`.
//! - **Split**: one event per request.
//! - **Map**: none; the body is the event (validated as
//!   [`PaymentWebhook`] or [`ChargebackWebhook`]; Postgres-storable JSON,
//!   and `occurred_at` at most `OCCURRED_AT_MAX_FUTURE` ahead, else 400).
//! - **Answer**: `202 {"event_id": "<uuid>"}`.

use hyper::{HeaderMap, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::{Accepted, Item, Mapping, Provider, Refusal, Stream, raw_of, signature::Verifier};
use crate::domain::{disputes::ChargebackWebhook, json::parse_json_body, orders::PaymentWebhook};

/// One generic endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Generic<'a> {
    pub stream: Stream,
    /// `None` only when verification is switched off.
    pub verifier: Option<&'a Verifier>,
}

impl Provider for Generic<'_> {
    fn name(&self) -> &'static str {
        crate::domain::types::GENERIC
    }

    fn accept(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Accepted, Refusal> {
        // The signature covers the bytes as received: check it before
        // anything looks inside them.
        if let Some(v) = self.verifier {
            v.verify(headers, body, now)
                .map_err(Refusal::Unauthorized)?;
        }
        let value = parse_json_body(body)?;
        let (order_id, occurred_at) = match self.stream {
            Stream::Orders => {
                let w = PaymentWebhook::from_json(&value)?;
                (w.order_id, w.occurred_at)
            }
            Stream::Disputes => {
                let w = ChargebackWebhook::from_json(&value)?;
                (w.order_id, w.occurred_at)
            }
        };
        Ok(Accepted {
            items: vec![Item {
                stream: self.stream,
                key: order_id.into_string(),
                raw: raw_of(body)?,
                mapping: Mapping::Generic,
                out_of_scope: None,
                refuse_if_after: Some(occurred_at),
            }],
            ignored: Vec::new(),
        })
    }

    fn answer(&self, event_ids: &[Uuid]) -> (StatusCode, &'static str, Vec<u8>) {
        let body = json!({ "event_id": event_ids.first() });
        (
            StatusCode::ACCEPTED,
            "application/json",
            body.to_string().into_bytes(),
        )
    }
}
