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

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use rskafka::record::Record;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::{
    ValidationError,
    disputes::{ChargebackEvent, ChargebackWebhook},
    orders::{PaymentEvent, PaymentWebhook, SourcePosition},
    types::{DEFAULT_OCCURRED_AT_MAX_FUTURE, OccurredAt, parse_json_body},
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
}

/// A decoded record, ready for its service.
#[derive(Debug)]
pub enum Event {
    Payment(PaymentEvent),
    Chargeback(ChargebackEvent),
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
        let kind = EventType::parse(&self.kind)
            .ok_or_else(|| DecodeError::UnknownType(self.kind.clone()))?;
        let json = parse_json_body(self.payload.get().as_bytes()).map_err(DecodeError::Payload)?;
        let payload = self.payload.get().to_owned();
        let check = |order_id: &str, occurred_at: OccurredAt| {
            occurred_at
                .check_not_after(self.timestamp, max_future)
                .map_err(DecodeError::Payload)?;
            if order_id == self.key {
                Ok(())
            } else {
                Err(DecodeError::KeyMismatch {
                    key: self.key.clone(),
                    order_id: order_id.to_owned(),
                })
            }
        };
        match kind {
            EventType::OrderWebhook => {
                let webhook = PaymentWebhook::from_json(&json).map_err(DecodeError::Payload)?;
                check(webhook.order_id.as_str(), webhook.occurred_at)?;
                Ok(Event::Payment(PaymentEvent {
                    event_id: self.event_id,
                    webhook,
                    payload,
                    source,
                }))
            }
            EventType::DisputeWebhook => {
                let webhook = ChargebackWebhook::from_json(&json).map_err(DecodeError::Payload)?;
                check(webhook.order_id.as_str(), webhook.occurred_at)?;
                Ok(Event::Chargeback(ChargebackEvent {
                    event_id: self.event_id,
                    webhook,
                    payload,
                    source,
                }))
            }
        }
    }
}

/// The largest record batch (Kafka's unit for `max.message.bytes`) that a
/// webhook body of `max_body` bytes can become, measured on a worst-case
/// envelope: the longest, most-escaped order id (128 bytes of `"`, each
/// escaped to two in JSON), the longer event type, a timestamp with
/// nanoseconds, plus Kafka's record-batch framing with every varint at its
/// widest. A broker whose limit is at least this accepts every webhook
/// payhook acknowledges.
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
        + RECORD_FRAMING
        + record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_case_batch_bounds_real_envelopes() {
        let max_body = 262_144;
        let bound = worst_case_batch_bytes(max_body);
        // The overhead over the body: escaped key twice, JSON skeleton,
        // headers, framing. About 0.7 KiB, whatever the body size.
        let overhead = bound - max_body;
        assert!((600..1000).contains(&overhead), "{overhead}");
        assert_eq!(worst_case_batch_bytes(1024) - 1024, overhead);
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
}
