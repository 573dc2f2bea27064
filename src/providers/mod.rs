//! Providers: the formats payment providers send, and how each maps onto
//! payhook's payment and dispute events.
//!
//! A provider is one module that answers four questions:
//!
//! 1. **How to verify** a request: its signature scheme, on the exact bytes
//!    received (the schemes live here too: [`signature`] for Standard
//!    Webhooks and Stripe, [`adyen`] for Adyen's per-item HMAC).
//! 2. **How to split** a request into events (Stripe: one per request;
//!    Adyen: a batch of items).
//! 3. **How to map** each event onto payhook's payment or dispute event: the
//!    generic shape (`provider_event_id`, `order_id`, `user_id`, `status`,
//!    `amount`, `currency`, `occurred_at`) plus the provider's `object_ids`.
//!    Event types it does not map are [`Accepted::ignored`].
//! 4. **What to answer** once every event is acknowledged by the broker.
//!
//! The edge ([`crate::http::routes`]) stays transport: it reads the body,
//! asks the provider ([`Provider::accept`]), publishes each
//! [`Item`] wrapped in an envelope that carries the provider's raw bytes
//! *and* the mapped event, and answers with [`Provider::answer`]. The
//! consumer never sees provider formats: it reads the mapped event, and
//! stores the raw bytes next to it.
//!
//! [`generic`] is payhook's own normalized format (the
//! `/webhooks/payments/*` endpoints): its body *is* the mapped event.

pub mod adyen;
pub mod generic;
pub mod signature;
pub mod stripe;

use hyper::{HeaderMap, StatusCode};
use serde_json::{Value, value::RawValue};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::domain::types::Mapping;
use crate::domain::{
    ValidationError, disputes::ChargebackWebhook, orders::PaymentWebhook, types::OccurredAt,
};
use crate::kafka::envelope::{EventType, Remap, Remapped};
use signature::SignatureError;

/// Which stream (and so which Kafka topic and service) an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Payment events, applied to `orders`.
    Orders,
    /// Dispute events, applied to `disputes`.
    Disputes,
}

impl Stream {
    /// The envelope type of this stream's events.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Orders => EventType::OrderWebhook,
            Self::Disputes => EventType::DisputeWebhook,
        }
    }
}

/// One event of a request, ready to publish.
#[derive(Debug)]
pub struct Item {
    pub stream: Stream,
    /// The Kafka key: the order id, or for a dispute that names no order
    /// the payment object it names (so one payment's disputes keep their
    /// order).
    pub key: String,
    /// The provider's bytes for this event, exactly as received: the whole
    /// body (Stripe, generic) or the item's object within the batch (Adyen).
    pub raw: Box<RawValue>,
    pub mapping: Mapping,
    /// For payhook's own format: its `occurred_at`, which the edge refuses
    /// (400) when it is more than `OCCURRED_AT_MAX_FUTURE` after acceptance.
    /// A provider's event is not refused for it (a 4xx would only make the
    /// provider retry it): the consumer dead-letters it with the reason.
    pub refuse_if_after: Option<OccurredAt>,
    /// Set when the event is outside the endpoint's scope (another mode,
    /// account or merchant account): it is [`Mapping::Unmappable`] with the
    /// reason, and counted under this label.
    pub out_of_scope: Option<&'static str>,
}

/// What a provider maps one event onto (at the edge, and again in the
/// consumer through [`Mappers`]).
#[derive(Debug)]
pub enum Mapped {
    Item(MappedItem),
    /// A type payhook maps onto nothing: acknowledged, not published.
    Ignored(String),
}

/// One mapped event, before its raw bytes are attached.
#[derive(Debug)]
pub struct MappedItem {
    pub stream: Stream,
    pub key: String,
    pub mapping: Mapping,
    pub out_of_scope: Option<&'static str>,
}

impl MappedItem {
    /// The [`Item`] to publish, carrying `raw`.
    fn item(self, raw: Box<RawValue>) -> Item {
        Item {
            stream: self.stream,
            key: self.key,
            raw,
            mapping: self.mapping,
            refuse_if_after: None,
            out_of_scope: self.out_of_scope,
        }
    }
}

/// What a provider made of a request.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Events to publish, in the order received.
    pub items: Vec<Item>,
    /// Types of the events that map onto nothing; acknowledged and counted.
    pub ignored: Vec<String>,
}

/// Why a request was refused as a whole; nothing of it is published.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("invalid or missing signature")]
    Unauthorized(#[source] SignatureError),
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

/// One provider: verify, split, map, answer.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Lower-case name: the envelope's `provider` and the metrics label.
    fn name(&self) -> &'static str;

    /// Verifies the request (unless verification is switched off) and
    /// splits and maps it. `now` is the local clock in Unix seconds.
    fn accept(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Accepted, Refusal>;

    /// The answer once every item is acknowledged by the broker: status,
    /// content type and body. `event_ids` are the envelopes' ids.
    fn answer(&self, event_ids: &[Uuid]) -> (StatusCode, &'static str, Vec<u8>);
}

/// How an endpoint that is on takes requests.
#[derive(Clone, Debug)]
pub enum Intake<K> {
    /// Its secrets are set: every request is verified with them, whatever
    /// else is configured.
    Verify(K),
    /// It has no secrets, and `WEBHOOK_VERIFY=off` chose unsigned intake.
    Unsigned,
}

impl<K> Intake<K> {
    /// The keys to verify with; `None` when unsigned.
    pub fn keys(&self) -> Option<&K> {
        match self {
            Self::Verify(k) => Some(k),
            Self::Unsigned => None,
        }
    }

    pub fn is_unsigned(&self) -> bool {
        matches!(self, Self::Unsigned)
    }
}

/// The one decision of whether and how an endpoint takes webhooks (fail
/// closed): with secrets it verifies; without, it is off (404) unless
/// unsigned intake was chosen (`WEBHOOK_VERIFY=off`).
pub fn intake<K>(keys: Option<K>, unsigned_chosen: bool) -> Option<Intake<K>> {
    match keys {
        Some(k) => Some(Intake::Verify(k)),
        None if unsigned_chosen => Some(Intake::Unsigned),
        None => None,
    }
}

/// The provider endpoints that are switched on, besides the generic ones.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// `/webhooks/stripe`; `None` answers 404.
    pub stripe: Option<stripe::Stripe>,
    /// `/webhooks/adyen`; `None` answers 404.
    pub adyen: Option<adyen::Adyen>,
}

impl Endpoints {
    /// Each endpoint as [`intake`] decides from its secrets.
    pub fn from_config(webhooks: &crate::config::WebhookSettings) -> Self {
        let unsigned = !webhooks.verify;
        let stripe = signature::Verifier::new(
            signature::Scheme::Stripe,
            webhooks.stripe_keys(),
            webhooks.tolerance,
        );
        let adyen_keys = Some(webhooks.adyen_keys()).filter(|k| !k.is_empty());
        let mappers = Mappers::from_config(webhooks);
        Self {
            stripe: intake(stripe, unsigned).map(|intake| stripe::Stripe {
                intake,
                mapping: mappers.stripe,
            }),
            adyen: intake(adyen_keys, unsigned).map(|intake| adyen::Adyen {
                intake,
                mapping: mappers.adyen,
            }),
        }
    }
}

/// Every provider's mapping, whichever endpoints are on: what the consumer
/// uses to map a provider's stored payload again instead of trusting the
/// `mapped` field of the record ([`Remap`]).
#[derive(Clone, Debug)]
pub struct Mappers {
    pub stripe: stripe::StripeMapping,
    pub adyen: adyen::AdyenMapping,
}

impl Mappers {
    pub fn from_config(webhooks: &crate::config::WebhookSettings) -> Self {
        Self {
            stripe: stripe::StripeMapping {
                order_id_key: webhooks.stripe_order_id_key.clone(),
                user_id_key: webhooks.stripe_user_id_key.clone(),
                livemode: webhooks.stripe_livemode,
                accounts: webhooks.stripe_accounts.clone(),
            },
            adyen: adyen::AdyenMapping {
                user_id_key: webhooks.adyen_user_id_key.clone(),
                merchant_accounts: webhooks.adyen_merchant_accounts.clone(),
            },
        }
    }
}

impl Remap for Mappers {
    fn remap(
        &self,
        provider: &str,
        payload: &RawValue,
        accepted_at: DateTime<Utc>,
    ) -> Result<Remapped, String> {
        let mapped = match provider {
            "stripe" => self
                .stripe
                .map(payload.get().as_bytes())
                .map_err(|e| e.to_string())?,
            "adyen" => {
                let item: Value = serde_json::from_str(payload.get()).map_err(|e| e.to_string())?;
                self.adyen.map_item(&item, accepted_at.timestamp())
            }
            other => {
                return Err(format!(
                    "unknown provider {:?}",
                    crate::logging::excerpt(other, 64)
                ));
            }
        };
        match mapped {
            Mapped::Item(m) => Ok(Remapped {
                kind: m.stream.event_type(),
                key: m.key,
                mapping: m.mapping,
            }),
            Mapped::Ignored(t) => Err(format!(
                "its type {:?} maps onto no payhook event",
                crate::logging::excerpt(&t, 64)
            )),
        }
    }
}

/// A type name as a metrics label: at most 64 bytes of `[A-Za-z0-9._:-]`,
/// else `other`, so a label never carries arbitrary text.
pub fn type_label(t: &str) -> String {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok { t.to_owned() } else { "other".into() }
}

/// A mapped payment event, checked with the same validation as the generic
/// endpoint. A failure is the event's data (`Unmappable`), not the request's.
fn payment(fields: Value) -> Mapping {
    match PaymentWebhook::from_mapped(&fields) {
        Ok(_) => Mapping::Mapped(fields),
        Err(e) => Mapping::Unmappable(format!("mapped payment event is invalid: {e}")),
    }
}

/// A mapped dispute event. Without `order_id` it is validated with a
/// stand-in order (the consumer resolves the real one).
fn dispute(fields: Value) -> Mapping {
    let mut check = fields.clone();
    if check.get("order_id").is_none_or(Value::is_null) {
        check["order_id"] = Value::from("unresolved");
    }
    match ChargebackWebhook::from_json(&check) {
        Ok(_) => Mapping::Mapped(fields),
        Err(e) => Mapping::Unmappable(format!("mapped dispute event is invalid: {e}")),
    }
}

/// Unix seconds as the generic `occurred_at` text.
fn rfc3339(secs: i64) -> Option<String> {
    OccurredAt::from_unix_seconds(secs).map(|t| t.to_rfc3339())
}

fn raw_of(bytes: &[u8]) -> Result<Box<RawValue>, ValidationError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ValidationError::invalid_json(format!("the body is not valid JSON: {e}")))
}
