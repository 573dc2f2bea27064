//! The envelope every webhook travels in, and its Kafka record form.
//!
//! ```json
//! {"event_id":"<uuid>","key":"<order_id>","type":"order.webhook",
//!  "payload":{...the webhook body, byte for byte...},"timestamp":"<RFC 3339>"}
//! ```
//!
//! The record key is the order id, so one order's events share a partition;
//! the headers repeat `event_id` and `type` so tools can route and trace a
//! record without parsing its value.
//!
//! An event from a provider (`crate::providers`) carries two more fields:
//! `provider` (`stripe`, `adyen`) and either `mapped`, the payhook event it
//! maps onto (the generic shape plus `object_ids`), or `unmappable`, why it
//! could not be mapped (the consumer dead-letters it with that reason).
//! `payload` is then the provider's bytes, kept as they were signed. A
//! dispute whose provider names no order (Stripe) is keyed by the payment
//! object it names, and decodes to [`Event::PendingChargeback`].

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::logging::{EXCERPT_BYTES, excerpt};
use uuid::Uuid;

use crate::domain::{
    ValidationError,
    disputes::{ChargebackEvent, ChargebackWebhook, PendingChargeback},
    json::parse_json_body,
    orders::{PaymentEvent, PaymentWebhook, SourcePosition},
    types::{DEFAULT_OCCURRED_AT_MAX_FUTURE, Mapping, OccurredAt, OrderId, Origin},
};

/// Which kind of webhook an envelope carries, and so which service handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A payment webhook (`order.webhook`).
    OrderWebhook,
    /// A chargeback webhook (`dispute.webhook`).
    DisputeWebhook,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderWebhook => "order.webhook",
            Self::DisputeWebhook => "dispute.webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "order.webhook" => Some(Self::OrderWebhook),
            "dispute.webhook" => Some(Self::DisputeWebhook),
            _ => None,
        }
    }
}

/// The wire form of the envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Box<RawValue>,
    pub timestamp: DateTime<Utc>,
    /// The provider whose format `payload` is in; absent for payhook's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The payhook event a provider's payload maps onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<Box<RawValue>>,
    /// Why a provider's payload could not be mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmappable: Option<String>,
}

/// Header names on every record payhook produces.
pub const HEADER_EVENT_ID: &str = "event_id";
pub const HEADER_TYPE: &str = "type";

/// Why a record cannot be turned back into an event. Every variant is
/// permanent: the same bytes will never decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value")]
    NoValue,
    #[error("value is not a valid envelope: {0}")]
    Envelope(#[from] serde_json::Error),
    #[error("unknown envelope type {0:?}")]
    UnknownType(String),
    #[error("payload is not a valid webhook: {0}")]
    Payload(ValidationError),
    #[error("envelope key {key:?} differs from the payload's order_id {order_id:?}")]
    KeyMismatch { key: String, order_id: String },
    #[error("{provider} event cannot be mapped: {reason}")]
    Unmappable { provider: String, reason: String },
    #[error("{provider} event has neither a mapped event nor a reason")]
    NotMapped { provider: String },
    #[error("`object_ids` must be a list of at most 8 ids")]
    ObjectIds,
    #[error("{provider} dispute names no order, and its key {key:?} is not among its object_ids")]
    UnresolvableDispute { provider: String, key: String },
    #[error("signature: {0}")]
    Signature(#[from] crate::kafka::signing::SignatureFault),
    #[error("{provider} payload cannot be mapped again: {reason}")]
    Remap { provider: String, reason: String },
    #[error(
        "{provider} payload maps onto {remapped}, but the record is {recorded}: the record was not \
         written by payhook's edge"
    )]
    RemapMismatch {
        provider: String,
        remapped: String,
        recorded: String,
    },
}

/// The provider mappings, as the consumer re-derives them from the raw
/// payload ([`crate::providers::Mappers`] implements it; this layer cannot
/// name the providers). The envelope's own `mapped` field is never trusted
/// when a `Remap` is given.
pub trait Remap: Send + Sync + std::fmt::Debug {
    /// What `provider`'s `payload` maps onto, mapped as the edge maps it
    /// when it accepts it at `accepted_at`; `Err` with the reason when the
    /// provider is unknown or the payload maps onto no event.
    fn remap(
        &self,
        provider: &str,
        payload: &RawValue,
        accepted_at: DateTime<Utc>,
    ) -> Result<Remapped, String>;
}

/// What a provider's payload maps onto.
#[derive(Debug)]
pub struct Remapped {
    pub kind: EventType,
    /// The record key it is published under.
    pub key: String,
    pub mapping: Mapping,
}

/// The checks of [`Envelope::checked`] beyond those of the edge.
#[derive(Clone, Copy, Debug)]
pub struct Checks<'a> {
    /// `OCCURRED_AT_MAX_FUTURE`.
    pub max_future: Duration,
    /// The broker's timestamp of the record: the envelope's `timestamp` is
    /// taken as at most this (plus the millisecond the record form drops),
    /// so a written envelope cannot date itself later to lift the
    /// `occurred_at` bound.
    pub record_timestamp: Option<DateTime<Utc>>,
    /// Re-derive a provider's mapping from its payload.
    pub remap: Option<&'a dyn Remap>,
}

/// A decoded record, ready for its service.
#[derive(Clone, Debug)]
pub enum Event {
    Payment(PaymentEvent),
    Chargeback(ChargebackEvent),
    /// A dispute whose order is found from the payment events stored
    /// (`crate::consume::waiting`).
    PendingChargeback(PendingChargeback),
}

impl Envelope {
    /// Wraps a validated webhook body. `payload` must be the raw body, which
    /// the caller has already parsed as JSON.
    pub fn new(kind: EventType, key: &str, payload: Box<RawValue>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            key: key.to_owned(),
            kind: kind.as_str().to_owned(),
            payload,
            timestamp: Utc::now(),
            provider: None,
            mapped: None,
            unmappable: None,
        }
    }

    /// Wraps one event of a provider: its raw bytes and what they map onto.
    pub fn from_provider(
        kind: EventType,
        key: &str,
        payload: Box<RawValue>,
        provider: &str,
        mapping: Mapping,
    ) -> Self {
        let mut e = Self::new(kind, key, payload);
        e.set_mapping(provider, mapping);
        e
    }

    /// `provider`, `mapped` and `unmappable` as `mapping` says (payhook's
    /// own format: none of them).
    fn set_mapping(&mut self, provider: &str, mapping: Mapping) {
        self.mapped = None;
        self.unmappable = None;
        match mapping {
            Mapping::Generic => {}
            Mapping::Mapped(v) => {
                self.provider = Some(provider.to_owned());
                self.mapped = serde_json::value::to_raw_value(&v).ok();
            }
            Mapping::Unmappable(reason) => {
                self.provider = Some(provider.to_owned());
                // It may quote the provider's input: an excerpt, within
                // the envelope's bound for mapped fields.
                self.unmappable = Some(excerpt(&reason, 4 * EXCERPT_BYTES).into_owned());
            }
        }
    }

    /// The Kafka record: key = order id, value = envelope JSON, headers
    /// `event_id` and `type`, timestamp = the envelope's.
    pub fn to_record(&self) -> Record {
        let value = serde_json::to_vec(self).expect("an envelope always serializes");
        let mut headers = BTreeMap::new();
        headers.insert(
            HEADER_EVENT_ID.to_owned(),
            self.event_id.to_string().into_bytes(),
        );
        headers.insert(HEADER_TYPE.to_owned(), self.kind.clone().into_bytes());
        Record {
            key: Some(self.key.clone().into_bytes()),
            value: Some(value),
            headers,
            timestamp: self.timestamp,
        }
    }

    /// Parses a record value.
    pub fn decode(value: Option<&[u8]>) -> Result<Self, DecodeError> {
        let value = value.ok_or(DecodeError::NoValue)?;
        Ok(serde_json::from_slice(value)?)
    }

    /// Validates the payload again (topics can be written by anyone) and
    /// builds the event for the matching service, with the default
    /// `OCCURRED_AT_MAX_FUTURE`; see [`Self::into_event_within`].
    pub fn into_event(self, source: SourcePosition) -> Result<Event, DecodeError> {
        self.into_event_within(source, DEFAULT_OCCURRED_AT_MAX_FUTURE)
    }

    /// Validates the payload again with the checks of the edge, and builds
    /// the event for the matching service:
    /// - the payload must pass [`parse_json_body`] (JSON that Postgres can
    ///   store as `jsonb`) and its type's validator;
    /// - its `occurred_at` may be at most `max_future` after this envelope's
    ///   `timestamp` (when the webhook was accepted), never the clock of the
    ///   reader, so the verdict is the same on every read;
    /// - the envelope key must be the payload's `order_id`.
    ///
    /// Every failure is permanent: the same bytes fail the same way.
    pub fn into_event_within(
        self,
        source: SourcePosition,
        max_future: Duration,
    ) -> Result<Event, DecodeError> {
        self.checked(
            source,
            Checks {
                max_future,
                record_timestamp: None,
                remap: None,
            },
        )
    }

    /// [`Self::into_event_within`] for a record read from a topic: the
    /// envelope's `timestamp` is bounded by the record's, and a provider's
    /// mapping is derived again from its raw payload (`mapped` and
    /// `unmappable` are replaced by what the payload maps onto; a payload
    /// that maps onto another stream or key than the record's is refused).
    pub fn checked(
        mut self,
        source: SourcePosition,
        checks: Checks<'_>,
    ) -> Result<Event, DecodeError> {
        if let Some(ts) = checks.record_timestamp {
            let bound = ts + chrono::Duration::milliseconds(1);
            if self.timestamp > bound {
                self.timestamp = bound;
            }
        }
        if let (Some(remap), Some(provider)) = (checks.remap, self.provider.clone()) {
            self.remap_with(remap, &provider)?;
        }
        let max_future = checks.max_future;
        let kind = EventType::parse(&self.kind).ok_or_else(|| {
            DecodeError::UnknownType(excerpt(&self.kind, EXCERPT_BYTES).into_owned())
        })?;
        // The payload is stored as `jsonb` whoever sent it: the edge's checks.
        let payload_json =
            parse_json_body(self.payload.get().as_bytes()).map_err(DecodeError::Payload)?;
        // payhook's own format is its payload; a provider's is `mapped`.
        let (json, origin) = match &self.provider {
            None => (payload_json, Origin::generic()),
            Some(provider) => {
                if let Some(reason) = &self.unmappable {
                    return Err(DecodeError::Unmappable {
                        provider: excerpt(provider, EXCERPT_BYTES).into_owned(),
                        reason: excerpt(reason, 4 * EXCERPT_BYTES).into_owned(),
                    });
                }
                let mapped = self.mapped.as_ref().ok_or_else(|| DecodeError::NotMapped {
                    provider: excerpt(provider, EXCERPT_BYTES).into_owned(),
                })?;
                let json =
                    parse_json_body(mapped.get().as_bytes()).map_err(DecodeError::Payload)?;
                let object_ids = object_ids(&json)?;
                (
                    json,
                    Origin {
                        provider: provider.clone(),
                        object_ids,
                    },
                )
            }
        };
        let not_too_late = |occurred_at: OccurredAt| {
            occurred_at
                .check_not_after(self.timestamp, max_future)
                .map_err(DecodeError::Payload)
        };
        let check = |order_id: &str, occurred_at: OccurredAt| {
            not_too_late(occurred_at)?;
            if order_id == self.key {
                Ok(())
            } else {
                Err(DecodeError::KeyMismatch {
                    key: excerpt(&self.key, EXCERPT_BYTES).into_owned(),
                    order_id: excerpt(order_id, EXCERPT_BYTES).into_owned(),
                })
            }
        };
        match kind {
            EventType::OrderWebhook => {
                // payhook's own format requires what a provider's mapped
                // event may leave out (user, amount, currency).
                let webhook = if origin.is_generic() {
                    PaymentWebhook::from_json(&json)
                } else {
                    PaymentWebhook::from_mapped(&json)
                }
                .map_err(DecodeError::Payload)?;
                check(webhook.order_id.as_str(), webhook.occurred_at)?;
                Ok(Event::Payment(PaymentEvent {
                    event_id: self.event_id,
                    webhook,
                    payload: self.payload.get().to_owned(),
                    source,
                    origin,
                }))
            }
            EventType::DisputeWebhook if !origin.is_generic() && !has_order(&json) => {
                // Keyed by a payment object it names; the order comes later.
                if !origin.object_ids.contains(&self.key) {
                    return Err(DecodeError::UnresolvableDispute {
                        provider: excerpt(&origin.provider, EXCERPT_BYTES).into_owned(),
                        key: excerpt(&self.key, EXCERPT_BYTES).into_owned(),
                    });
                }
                let mut with_key = json;
                with_key["order_id"] = serde_json::Value::from(self.key.as_str());
                let webhook =
                    ChargebackWebhook::from_json(&with_key).map_err(DecodeError::Payload)?;
                not_too_late(webhook.occurred_at)?;
                let record_value =
                    serde_json::to_string(&self).expect("an envelope always serializes");
                Ok(Event::PendingChargeback(PendingChargeback {
                    event: ChargebackEvent {
                        event_id: self.event_id,
                        webhook,
                        payload: self.payload.get().to_owned(),
                        source,
                        origin,
                    },
                    record_key: self.key,
                    record_value,
                }))
            }
            EventType::DisputeWebhook => {
                let webhook = ChargebackWebhook::from_json(&json).map_err(DecodeError::Payload)?;
                check(webhook.order_id.as_str(), webhook.occurred_at)?;
                Ok(Event::Chargeback(ChargebackEvent {
                    event_id: self.event_id,
                    webhook,
                    payload: self.payload.get().to_owned(),
                    source,
                    origin,
                }))
            }
        }
    }
}

impl Envelope {
    /// Replaces `mapped`/`unmappable` with what `remap` derives from the
    /// payload, after checking it lands on this record's stream and key.
    fn remap_with(&mut self, remap: &dyn Remap, provider: &str) -> Result<(), DecodeError> {
        let shown = || excerpt(provider, EXCERPT_BYTES).into_owned();
        let r = remap
            .remap(provider, &self.payload, self.timestamp)
            .map_err(|reason| DecodeError::Remap {
                provider: shown(),
                reason: excerpt(&reason, 4 * EXCERPT_BYTES).into_owned(),
            })?;
        if r.kind.as_str() != self.kind || r.key != self.key {
            return Err(DecodeError::RemapMismatch {
                provider: shown(),
                remapped: format!(
                    "{} keyed {:?}",
                    r.kind.as_str(),
                    excerpt(&r.key, EXCERPT_BYTES)
                ),
                recorded: format!(
                    "{} keyed {:?}",
                    excerpt(&self.kind, EXCERPT_BYTES),
                    excerpt(&self.key, EXCERPT_BYTES)
                ),
            });
        }
        self.set_mapping(provider, r.mapping);
        if self.mapped.is_none() && self.unmappable.is_none() {
            return Err(DecodeError::Remap {
                provider: shown(),
                reason: "it maps onto payhook's own format".into(),
            });
        }
        Ok(())
    }
}

/// The largest record batch (Kafka's unit for `max.message.bytes`) that a
/// webhook body of `max_body` bytes can become, measured on a worst-case
/// envelope: the longest, most-escaped order id (128 bytes of `"`, each
/// escaped to two in JSON), the longer event type, a timestamp with
/// nanoseconds, plus Kafka's record-batch framing with every varint at its
/// widest, plus [`PROVIDER_MAPPING_MAX`] for the mapped fields a provider's
/// envelope carries beside the raw payload. A broker whose limit is at least
/// this accepts every webhook payhook acknowledges.
pub fn worst_case_batch_bytes(max_body: usize) -> usize {
    /// Record batch header (magic 2): base offset .. records count.
    const BATCH_HEADER: usize = 61;
    /// Length, attributes, timestamp delta, offset delta, key length, value
    /// length, header count: varints at their widest.
    const RECORD_FRAMING: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
    /// Key length and value length varints of one header.
    const HEADER_FRAMING: usize = 5 + 5;
    let key = "\"".repeat(crate::domain::types::MAX_ID_BYTES);
    // A JSON string is a valid payload of any length >= 2.
    let body = format!("\"{}\"", "a".repeat(max_body.saturating_sub(2)));
    let payload = RawValue::from_string(body).expect("a JSON string");
    let mut env = Envelope::new(EventType::DisputeWebhook, &key, payload);
    env.timestamp = DateTime::from_timestamp(253_402_300_799, 999_999_999).expect("valid");
    let record = env.to_record();
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| HEADER_FRAMING + k.len() + v.len())
        .sum();
    BATCH_HEADER
        + PROVIDER_MAPPING_MAX
        + RECORD_FRAMING
        + record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + headers
}

/// An upper bound of the `provider` and `mapped` fields of a provider's
/// envelope (ids of at most 128 bytes, each escaped to at most twice that,
/// [`MAX_OBJECT_IDS`] object ids, the fixed fields).
pub const PROVIDER_MAPPING_MAX: usize = 16 * 1024;

fn has_order(json: &serde_json::Value) -> bool {
    json.get("order_id").is_some_and(|v| !v.is_null())
}

/// Most object ids an event may name.
const MAX_OBJECT_IDS: usize = 8;

/// `object_ids`: absent, or a short list of valid ids.
fn object_ids(json: &serde_json::Value) -> Result<Vec<String>, DecodeError> {
    let Some(v) = json.get("object_ids") else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or(DecodeError::ObjectIds)?;
    if list.len() > MAX_OBJECT_IDS {
        return Err(DecodeError::ObjectIds);
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .filter(|s| OrderId::parse(s).is_ok())
                .map(str::to_owned)
                .ok_or(DecodeError::ObjectIds)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_batch_bounds_real_envelopes() {
        let max_body = 262_144;
        let bound = worst_case_batch_bytes(max_body);
        // The overhead over the body: escaped key twice, JSON skeleton,
        // headers, framing (about 0.7 KiB), and room for a provider's mapped
        // fields; whatever the body size.
        let overhead = bound - max_body - PROVIDER_MAPPING_MAX;
        assert!((600..1000).contains(&overhead), "{overhead}");
        assert_eq!(
            worst_case_batch_bytes(1024) - 1024 - PROVIDER_MAPPING_MAX,
            overhead
        );
        // A real envelope with a plain order id and a full-size body stays
        // under the bound.
        let body = format!(
            r#"{{"order_id":"ord_1","pad":"{}"}}"#,
            "x".repeat(max_body - 29)
        );
        assert_eq!(body.len(), max_body);
        let env = Envelope::new(
            EventType::OrderWebhook,
            "ord_1",
            RawValue::from_string(body).unwrap(),
        );
        let r = env.to_record();
        assert!(r.value.unwrap().len() + r.key.unwrap().len() < bound);
    }

    const BODY: &str = r#"{"provider_event_id":"evt_1","order_id":"ord_42","user_id":"usr_7","status":"succeeded","amount":1999,"currency":"USD","occurred_at":"2026-11-26T10:00:00Z","z":  [1, 2]}"#;

    fn src() -> SourcePosition {
        SourcePosition {
            topic: "t".into(),
            partition: 2,
            offset: 9,
        }
    }

    #[test]
    fn round_trip_keeps_the_payload_byte_for_byte() {
        let raw = RawValue::from_string(BODY.to_owned()).unwrap();
        let env = Envelope::new(EventType::OrderWebhook, "ord_42", raw);
        let record = env.to_record();
        assert_eq!(record.key.as_deref(), Some(&b"ord_42"[..]));
        assert_eq!(record.headers[HEADER_TYPE], b"order.webhook");
        assert_eq!(
            record.headers[HEADER_EVENT_ID],
            env.event_id.to_string().into_bytes()
        );

        let back = Envelope::decode(record.value.as_deref()).unwrap();
        assert_eq!(back.event_id, env.event_id);
        assert_eq!(back.timestamp, env.timestamp);
        assert_eq!(back.payload.get(), BODY);
        let text: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(text["type"], "order.webhook");
        assert_eq!(text["key"], "ord_42");

        match back.into_event(src()).unwrap() {
            Event::Payment(p) => {
                assert_eq!(p.payload, BODY);
                assert_eq!(p.event_id, env.event_id);
                assert_eq!(p.source, src());
            }
            other => panic!("expected a payment, got {other:?}"),
        }
    }

    #[test]
    fn bad_records_are_decode_errors() {
        assert!(matches!(Envelope::decode(None), Err(DecodeError::NoValue)));
        assert!(matches!(
            Envelope::decode(Some(b"not json")),
            Err(DecodeError::Envelope(_))
        ));
        assert!(matches!(
            Envelope::decode(Some(br#"{"event_id":"x"}"#)),
            Err(DecodeError::Envelope(_))
        ));

        let raw = RawValue::from_string(BODY.to_owned()).unwrap();
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw);
        env.kind = "refund.webhook".into();
        assert!(
            matches!(env.into_event(src()), Err(DecodeError::UnknownType(t)) if t == "refund.webhook")
        );

        let raw = RawValue::from_string(BODY.to_owned()).unwrap();
        let env = Envelope::new(EventType::OrderWebhook, "ord_other", raw);
        assert!(matches!(
            env.into_event(src()),
            Err(DecodeError::KeyMismatch { .. })
        ));

        let raw = RawValue::from_string(BODY.to_owned()).unwrap();
        let env = Envelope::new(EventType::DisputeWebhook, "ord_42", raw);
        // A payment body is not a valid chargeback (status "succeeded").
        assert!(matches!(
            env.into_event(src()),
            Err(DecodeError::Payload(_))
        ));
    }

    const STRIPE_BODY: &str = "{\n  \"id\": \"evt_1\",\n  \"type\": \"x\"\n}";

    fn provider_env(kind: EventType, key: &str, mapping: Mapping) -> Envelope {
        let raw = RawValue::from_string(STRIPE_BODY.to_owned()).unwrap();
        let env = Envelope::from_provider(kind, key, raw, "stripe", mapping);
        // Through the wire form, as the consumer sees it.
        Envelope::decode(env.to_record().value.as_deref()).unwrap()
    }

    #[test]
    fn a_provider_event_decodes_from_its_mapping_and_keeps_its_bytes() {
        let mapped = serde_json::json!({"provider_event_id": "evt_1", "order_id": "ord_42",
            "user_id": "u", "status": "succeeded", "amount": 5, "currency": "EUR",
            "occurred_at": "2026-11-26T10:00:00Z", "object_ids": ["pi_1", "ch_1"]});
        let env = provider_env(EventType::OrderWebhook, "ord_42", Mapping::Mapped(mapped));
        match env.into_event(src()).unwrap() {
            Event::Payment(p) => {
                assert_eq!(p.payload, STRIPE_BODY);
                assert_eq!(p.origin.provider, "stripe");
                assert_eq!(p.origin.object_ids, ["pi_1", "ch_1"]);
                assert_eq!(p.webhook.order_id.as_str(), "ord_42");
            }
            other => panic!("{other:?}"),
        }
        // The generic envelope has none of the provider fields on the wire.
        let raw = RawValue::from_string(BODY.to_owned()).unwrap();
        let record = Envelope::new(EventType::OrderWebhook, "ord_42", raw).to_record();
        let wire: serde_json::Value = serde_json::from_slice(&record.value.unwrap()).unwrap();
        let keys: Vec<&String> = wire.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["event_id", "key", "payload", "timestamp", "type"]);
    }

    #[test]
    fn a_dispute_without_order_is_pending_under_one_of_its_objects() {
        let mapped = serde_json::json!({"provider_event_id": "evt_d", "status": "opened",
            "amount": 5, "currency": "EUR", "occurred_at": "2026-11-26T10:00:00Z",
            "object_ids": ["pi_1", "ch_1"]});
        let env = provider_env(
            EventType::DisputeWebhook,
            "pi_1",
            Mapping::Mapped(mapped.clone()),
        );
        let value = serde_json::to_string(&env).unwrap();
        match env.into_event(src()).unwrap() {
            Event::PendingChargeback(d) => {
                assert_eq!(d.record_key, "pi_1");
                assert_eq!(d.record_value, value);
                let c = d.resolve(OrderId::parse("ord_9").unwrap());
                assert_eq!(c.webhook.order_id.as_str(), "ord_9");
                assert_eq!(c.payload, STRIPE_BODY);
            }
            other => panic!("{other:?}"),
        }
        let env = provider_env(
            EventType::DisputeWebhook,
            "pi_other",
            Mapping::Mapped(mapped),
        );
        assert!(matches!(
            env.into_event(src()),
            Err(DecodeError::UnresolvableDispute { .. })
        ));
    }

    #[test]
    fn an_unmappable_provider_event_is_a_decode_error_with_its_reason() {
        let env = provider_env(
            EventType::OrderWebhook,
            "pi_1",
            Mapping::Unmappable("no metadata.order_id".into()),
        );
        let e = env.into_event(src()).unwrap_err();
        assert!(e.to_string().contains("no metadata.order_id"), "{e}");
        let mut env = provider_env(
            EventType::OrderWebhook,
            "pi_1",
            Mapping::Unmappable("x".into()),
        );
        env.unmappable = None;
        assert!(matches!(
            env.into_event(src()),
            Err(DecodeError::NotMapped { .. })
        ));
        let bad_ids = serde_json::json!({"provider_event_id": "e", "order_id": "o",
            "user_id": "u", "status": "pending", "amount": 1, "currency": "EUR",
            "occurred_at": "2026-11-26T10:00:00Z", "object_ids": "pi_1"});
        let env = provider_env(EventType::OrderWebhook, "o", Mapping::Mapped(bad_ids));
        assert!(matches!(env.into_event(src()), Err(DecodeError::ObjectIds)));
    }

    /// A record written straight to the topic with a payload the edge would
    /// refuse is a permanent decode failure, not a write Postgres refuses.
    #[test]
    fn payloads_postgres_cannot_store_do_not_decode() {
        for hazard in [r#""\u0000""#, r#""\udc00""#, "1e-20000"] {
            let body = BODY.replace("[1, 2]", hazard);
            let raw = RawValue::from_string(body).unwrap();
            let env = Envelope::new(EventType::OrderWebhook, "ord_42", raw);
            match env.into_event(src()) {
                Err(DecodeError::Payload(e)) => assert_eq!(e.code, "invalid_json", "{hazard}"),
                other => panic!("{hazard}: {other:?}"),
            }
        }
        let deep = BODY.replace("[1, 2]", &format!("{}{}", "[".repeat(40), "]".repeat(40)));
        let env = Envelope::new(
            EventType::OrderWebhook,
            "ord_42",
            RawValue::from_string(deep).unwrap(),
        );
        assert!(matches!(
            env.into_event(src()),
            Err(DecodeError::Payload(_))
        ));
    }

    /// The future bound is checked against the envelope's own timestamp, so
    /// the verdict does not depend on when the record is read.
    #[test]
    fn occurred_at_is_bounded_by_the_envelope_timestamp() {
        let raw = || RawValue::from_string(BODY.to_owned()).unwrap();
        let accepted = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        // occurred_at is 2026-11-26T10:00:00Z.
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = accepted("2026-11-25T09:59:59Z");
        match env.into_event(src()) {
            Err(DecodeError::Payload(e)) => {
                assert_eq!(e.field, Some("occurred_at"));
                assert!(e.detail.contains("2026-11-25T09:59:59Z"), "{}", e.detail);
            }
            other => panic!("{other:?}"),
        }
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = accepted("2026-11-25T10:00:00Z");
        assert!(env.into_event(src()).is_ok());
        // A shorter setting moves the bound.
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = accepted("2026-11-25T10:00:00Z");
        assert!(matches!(
            env.into_event_within(src(), Duration::from_secs(3600)),
            Err(DecodeError::Payload(_))
        ));
        // Read long after acceptance, an old envelope still decodes.
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = accepted("2026-11-26T09:00:00Z");
        assert!(env.into_event(src()).is_ok());
    }

    /// A record's broker timestamp bounds its envelope's: an envelope that
    /// dates itself in year 9999 does not lift the `occurred_at` bound.
    #[test]
    fn the_record_timestamp_bounds_the_envelope_timestamp() {
        let raw = || RawValue::from_string(BODY.to_owned()).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let checks = |record: &str| Checks {
            max_future: DEFAULT_OCCURRED_AT_MAX_FUTURE,
            record_timestamp: Some(at(record)),
            remap: None,
        };
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = at("9999-12-31T23:59:59Z");
        // occurred_at 2026-11-26T10:00:00Z is more than a day after a
        // record of 2026-11-25T09:00:00Z.
        match env.checked(src(), checks("2026-11-25T09:00:00Z")) {
            Err(DecodeError::Payload(e)) => assert_eq!(e.field, Some("occurred_at")),
            other => panic!("{other:?}"),
        }
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = at("9999-12-31T23:59:59Z");
        assert!(env.checked(src(), checks("2026-11-26T09:00:00Z")).is_ok());
        // The record form keeps milliseconds: a real envelope, a few
        // hundred microseconds after its record's timestamp, keeps its own.
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = at("2026-11-25T10:00:00.000900Z");
        assert!(env.checked(src(), checks("2026-11-25T10:00:00Z")).is_ok());
        let mut env = Envelope::new(EventType::OrderWebhook, "ord_42", raw());
        env.timestamp = at("2026-11-25T10:00:00.001900Z");
        assert!(
            env.checked(src(), checks("2026-11-25T09:59:59.998Z"))
                .is_err()
        );
    }

    /// A fake of the providers' mapping: maps every payload onto one fixed
    /// event, or refuses.
    #[derive(Debug)]
    struct FixedRemap(Result<(EventType, &'static str, serde_json::Value), &'static str>);

    impl Remap for FixedRemap {
        fn remap(
            &self,
            provider: &str,
            payload: &RawValue,
            _accepted_at: DateTime<Utc>,
        ) -> Result<Remapped, String> {
            assert_eq!(provider, "stripe");
            assert_eq!(payload.get(), STRIPE_BODY);
            match &self.0 {
                Ok((kind, key, v)) => Ok(Remapped {
                    kind: *kind,
                    key: (*key).to_owned(),
                    mapping: Mapping::Mapped(v.clone()),
                }),
                Err(e) => Err((*e).to_owned()),
            }
        }
    }

    fn payment_json(status: &str) -> serde_json::Value {
        serde_json::json!({"provider_event_id": "evt_1", "order_id": "ord_42",
            "user_id": "u", "status": status, "amount": 5, "currency": "EUR",
            "occurred_at": "2026-11-26T10:00:00Z", "object_ids": ["pi_1"]})
    }

    #[test]
    fn with_a_remap_the_mapped_field_is_never_trusted() {
        fn checks(remap: &FixedRemap) -> Checks<'_> {
            Checks {
                max_future: DEFAULT_OCCURRED_AT_MAX_FUTURE,
                record_timestamp: None,
                remap: Some(remap),
            }
        }
        // The record says "succeeded"; its payload maps onto "failed".
        let forged = || {
            provider_env(
                EventType::OrderWebhook,
                "ord_42",
                Mapping::Mapped(payment_json("succeeded")),
            )
        };
        let honest = FixedRemap(Ok((
            EventType::OrderWebhook,
            "ord_42",
            payment_json("failed"),
        )));
        match forged().checked(src(), checks(&honest)).unwrap() {
            Event::Payment(p) => assert_eq!(p.webhook.status.as_str(), "failed"),
            other => panic!("{other:?}"),
        }
        // No remap: the old behaviour, the field is read.
        match forged().into_event(src()).unwrap() {
            Event::Payment(p) => assert_eq!(p.webhook.status.as_str(), "succeeded"),
            other => panic!("{other:?}"),
        }
        // A payload that maps onto another key or stream is refused.
        let other_key = FixedRemap(Ok((
            EventType::OrderWebhook,
            "ord_43",
            payment_json("failed"),
        )));
        let e = forged().checked(src(), checks(&other_key)).unwrap_err();
        assert!(matches!(e, DecodeError::RemapMismatch { .. }), "{e}");
        assert!(e.to_string().contains("ord_43"), "{e}");
        let other_stream = FixedRemap(Ok((
            EventType::DisputeWebhook,
            "ord_42",
            payment_json("failed"),
        )));
        assert!(matches!(
            forged().checked(src(), checks(&other_stream)),
            Err(DecodeError::RemapMismatch { .. })
        ));
        // A payload that maps onto nothing is refused with the reason, even
        // when the record claims a mapping.
        let refused = FixedRemap(Err("its type \"x\" maps onto no payhook event"));
        let e = forged().checked(src(), checks(&refused)).unwrap_err();
        assert!(matches!(e, DecodeError::Remap { .. }), "{e}");
        assert!(e.to_string().contains("maps onto no payhook event"), "{e}");
        // A pending dispute is parked with the mapping derived, not the
        // record's (it is decoded again later without a remap).
        let dispute = serde_json::json!({"provider_event_id": "evt_d", "status": "opened",
            "amount": 5, "currency": "EUR", "occurred_at": "2026-11-26T10:00:00Z",
            "object_ids": ["pi_1"]});
        let mut claimed = dispute.clone();
        claimed["status"] = "won".into();
        let env = provider_env(EventType::DisputeWebhook, "pi_1", Mapping::Mapped(claimed));
        let remap = FixedRemap(Ok((EventType::DisputeWebhook, "pi_1", dispute)));
        match env.checked(src(), checks(&remap)).unwrap() {
            Event::PendingChargeback(d) => {
                assert_eq!(d.event.webhook.status.as_str(), "opened");
                let parked = Envelope::decode(Some(d.record_value.as_bytes())).unwrap();
                assert!(parked.mapped.unwrap().get().contains("\"opened\""));
            }
            other => panic!("{other:?}"),
        }
    }
}
