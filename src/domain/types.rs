//! Validated value types shared by both kinds of webhook.
//!
//! Each type has one constructor that checks its input; once a value exists it
//! is valid, so the rest of the code never checks again.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Why a webhook body was refused: a stable `code`, the `field` at fault (if
/// any) and a human-readable `detail`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ValidationError {
    pub code: &'static str,
    pub field: Option<&'static str>,
    pub detail: String,
}

impl ValidationError {
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self {
            code: "invalid_json",
            field: None,
            detail: detail.into(),
        }
    }

    fn missing(field: &'static str) -> Self {
        Self {
            code: "missing_field",
            field: Some(field),
            detail: format!("`{field}` is required"),
        }
    }

    /// `detail` may quote the input; it is kept to an excerpt.
    fn invalid(field: &'static str, detail: impl fmt::Display) -> Self {
        let detail = detail.to_string();
        Self {
            code: "invalid_field",
            field: Some(field),
            detail: format!(
                "`{field}` {}",
                crate::logging::excerpt(&detail, 2 * crate::logging::EXCERPT_BYTES)
            ),
        }
    }
}

/// Longest identifier accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

fn check_id(field: &'static str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(ValidationError::invalid(
            field,
            format_args!("must be at most {MAX_ID_BYTES} bytes, got {}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks: non-empty, at most 128 bytes, no control characters.
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                check_id($field, s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The merchant's order identifier; also the Kafka record key, so all
    /// events of one order share a partition and keep their order.
    OrderId,
    "order_id"
);
id_type!(
    /// The provider's identifier for the event; unique per event, the key of
    /// idempotency.
    ProviderEventId,
    "provider_event_id"
);
id_type!(
    /// The customer the order belongs to.
    UserId,
    "user_id"
);
id_type!(
    /// The provider's payment an event is about (a Stripe payment intent, an
    /// Adyen `pspReference`); for payhook's own events, the order itself.
    PaymentId,
    "payment_id"
);
id_type!(
    /// What one refund is known by, within its payment (an Adyen refund's
    /// `pspReference`; `charge:<id>` for a Stripe charge's refunded total).
    RefundKey,
    "refund_key"
);
id_type!(
    /// The provider's reason code for a chargeback.
    Reason,
    "reason"
);

/// An amount in minor units (cents): a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(v: &Value) -> Result<Self, ValidationError> {
        Self::parse_field("amount", v)
    }

    /// As [`Self::parse`], naming `field` in the error.
    pub fn parse_field(field: &'static str, v: &Value) -> Result<Self, ValidationError> {
        match v.as_i64() {
            Some(n) if n >= 0 => Ok(Self(n)),
            _ if v.is_number() => Err(ValidationError::invalid(
                field,
                format_args!("must be a non-negative integer in minor units, got {v}"),
            )),
            _ => Err(ValidationError::invalid(
                field,
                "must be a number (an integer in minor units)",
            )),
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

/// An ISO 4217-shaped currency code: three upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(ValidationError::invalid(
                "currency",
                format_args!("must be three upper-case letters like USD, got {s:?}"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // The constructor admits ASCII letters only.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

/// When the provider says the event happened (RFC 3339), normalised to UTC
/// and truncated to microseconds: the precision Postgres stores, so that
/// the event order compares the same values in Rust and in SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OccurredAt(DateTime<Utc>);

impl OccurredAt {
    /// Parses RFC 3339, keeping the instant Postgres will store: whole
    /// microseconds (digits beyond are dropped), and a leap second
    /// (`23:59:60`, which chrono keeps as `23:59:59` plus a second of
    /// nanoseconds, ordered *before* the next minute) as the first instant
    /// of the next minute, as Postgres does. Both sides of the event order
    /// then see the same instants in the same order.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| {
                let utc = t.with_timezone(&Utc);
                // Micros since the epoch count a leap second's extra
                // nanoseconds as the next second.
                Self(DateTime::from_timestamp_micros(utc.timestamp_micros()).unwrap_or(utc))
            })
            .map_err(|e| {
                ValidationError::invalid(
                    "occurred_at",
                    format_args!("must be an RFC 3339 timestamp like 2026-11-26T10:00:00Z ({e})"),
                )
            })
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Refuses a time more than `max_future` after `accepted_at`, the moment
    /// the webhook was accepted (the envelope's `timestamp`).
    ///
    /// The state of an order follows its latest event, so one event dated
    /// far ahead would freeze the order until that date. The edge checks
    /// against the envelope it is about to publish (its clock, now); the
    /// consumer checks the same envelope again against the same timestamp,
    /// so the verdict never depends on when or how often a record is read.
    pub fn check_not_after(
        self,
        accepted_at: DateTime<Utc>,
        max_future: std::time::Duration,
    ) -> Result<Self, ValidationError> {
        let ahead = chrono::TimeDelta::from_std(max_future).unwrap_or(chrono::TimeDelta::MAX);
        match accepted_at.checked_add_signed(ahead) {
            Some(latest) if self.0 > latest => Err(ValidationError::invalid(
                "occurred_at",
                format_args!(
                    "is {}, more than {} after the webhook was accepted ({}): \
                     an event cannot happen that far in the future (OCCURRED_AT_MAX_FUTURE)",
                    self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    humantime::format_duration(max_future),
                    accepted_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                ),
            )),
            _ => Ok(self),
        }
    }

    /// Whole Unix seconds, as Stripe's `created`.
    pub fn from_unix_seconds(secs: i64) -> Option<Self> {
        DateTime::from_timestamp(secs, 0).map(Self)
    }

    /// RFC 3339 in UTC, with as many fraction digits as needed.
    pub fn to_rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

/// Which provider sent an event, and the provider's ids of the objects it
/// is about (Stripe: the payment intent and the charge; Adyen: the
/// `pspReference` and `originalReference`). Stored with the event; a
/// dispute that names no order is resolved through them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// `generic` for payhook's own format.
    pub provider: String,
    pub object_ids: Vec<String>,
}

/// The provider name of payhook's own format (the `/webhooks/payments/*`
/// endpoints), as events and metrics carry it.
pub const GENERIC: &str = "generic";

impl Origin {
    pub fn generic() -> Self {
        Self {
            provider: GENERIC.into(),
            object_ids: Vec::new(),
        }
    }

    /// Whether the event came in payhook's own format (it names its order
    /// and no provider objects).
    pub fn is_generic(&self) -> bool {
        self.provider == GENERIC
    }
}

/// How a provider's event maps onto payhook's.
#[derive(Clone, Debug, PartialEq)]
pub enum Mapping {
    /// payhook's own format: the raw body is the event.
    Generic,
    /// The mapped event, in the generic shape plus `object_ids` (a dispute
    /// may lack `order_id`: the consumer resolves it from `object_ids`).
    Mapped(Value),
    /// The event is of a mapped type but cannot be mapped (for example a
    /// payment without the configured metadata key). It is published all the
    /// same, and the consumer dead-letters it with this reason: the provider
    /// would only retry it for days, and nothing is lost this way.
    Unmappable(String),
}

/// Default of `OCCURRED_AT_MAX_FUTURE`: how far after its acceptance an
/// event may say it occurred. Clocks differ by seconds, not days.
pub const DEFAULT_OCCURRED_AT_MAX_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Field access over a parsed JSON object, with errors that name the field.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// The body must be a JSON object.
    pub fn of(v: &'a Value) -> Result<Self, ValidationError> {
        v.as_object()
            .map(Fields)
            .ok_or_else(|| ValidationError::invalid_json("the body must be a JSON object"))
    }

    fn value(&self, field: &'static str) -> Result<&'a Value, ValidationError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Err(ValidationError::missing(field)),
            Some(v) => Ok(v),
        }
    }

    pub fn string(&self, field: &'static str) -> Result<&'a str, ValidationError> {
        self.value(field)?
            .as_str()
            .ok_or_else(|| ValidationError::invalid(field, "must be a string"))
    }

    pub fn optional_string(&self, field: &'static str) -> Result<Option<&'a str>, ValidationError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ValidationError::invalid(field, "must be a string")),
        }
    }

    pub fn amount(&self) -> Result<Amount, ValidationError> {
        Amount::parse(self.value("amount")?)
    }

    /// The amount in `field`, required.
    pub fn amount_at(&self, field: &'static str) -> Result<Amount, ValidationError> {
        Amount::parse_field(field, self.value(field)?)
    }

    /// The amount in `field`, if given.
    pub fn optional_amount(&self, field: &'static str) -> Result<Option<Amount>, ValidationError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Amount::parse_field(field, v).map(Some),
        }
    }

    pub fn currency(&self) -> Result<Currency, ValidationError> {
        Currency::parse(self.string("currency")?)
    }

    pub fn occurred_at(&self) -> Result<OccurredAt, ValidationError> {
        OccurredAt::parse(self.string("occurred_at")?)
    }

    /// A string that must be one of `allowed`.
    pub fn one_of<T: Copy>(
        &self,
        field: &'static str,
        allowed: &[(&str, T)],
    ) -> Result<T, ValidationError> {
        let s = self.string(field)?;
        allowed
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                ValidationError::invalid(
                    field,
                    format_args!("must be one of {}, got {s:?}", names.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_checked() {
        assert!(OrderId::parse("ord_42").is_ok());
        assert_eq!(OrderId::parse("").unwrap_err().field, Some("order_id"));
        assert!(OrderId::parse(&"x".repeat(128)).is_ok());
        let e = OrderId::parse(&"x".repeat(129)).unwrap_err();
        assert!(e.detail.contains("at most 128 bytes"), "{}", e.detail);
        // 43 three-byte characters = 129 bytes: the limit is bytes, not chars.
        assert!(UserId::parse(&"€".repeat(43)).is_err());
        assert!(ProviderEventId::parse("evt\n1").is_err());
        assert!(ProviderEventId::parse("evt\u{7f}").is_err());
        assert!(ProviderEventId::parse("évt ✓").is_ok());
    }

    #[test]
    fn amounts_are_non_negative_integers() {
        assert_eq!(Amount::parse(&json!(1999)).unwrap().minor_units(), 1999);
        assert_eq!(Amount::parse(&json!(0)).unwrap().minor_units(), 0);
        assert!(Amount::parse(&json!(-1)).is_err());
        assert!(Amount::parse(&json!(19.99)).is_err());
        assert!(Amount::parse(&json!(1e3)).is_err());
        assert!(Amount::parse(&json!("1999")).is_err());
        assert!(Amount::parse(&json!(u64::MAX)).is_err());
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
        for bad in ["usd", "US", "USDT", "U$D", "", "ÜSD"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let a = OccurredAt::parse("2026-11-26T10:00:00Z").unwrap();
        let b = OccurredAt::parse("2026-11-26T11:00:00+01:00").unwrap();
        assert_eq!(a, b);
        for bad in [
            "2026-11-26",
            "yesterday",
            "2026-11-26 10:00:00",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(OccurredAt::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_leap_second_is_the_first_instant_of_the_next_minute_as_in_postgres() {
        let at = |s: &str| OccurredAt::parse(s).unwrap();
        let midnight = at("2017-01-01T00:00:00Z");
        assert_eq!(at("2016-12-31T23:59:60Z"), midnight);
        assert!(at("2016-12-31T23:59:59.999999Z") < midnight);
        assert_eq!(
            at("2016-12-31T23:59:60.5Z"),
            at("2017-01-01T00:00:00.500000Z")
        );
        assert_eq!(
            at("2026-11-26T10:00:00.1234567Z"),
            at("2026-11-26T10:00:00.123456Z")
        );
    }

    #[test]
    fn occurred_at_may_not_be_far_ahead_of_acceptance() {
        let accepted = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .to_utc();
        let day = DEFAULT_OCCURRED_AT_MAX_FUTURE;
        let at = |s: &str| OccurredAt::parse(s).unwrap();
        assert!(
            at("2026-11-27T10:00:00Z")
                .check_not_after(accepted, day)
                .is_ok()
        );
        assert!(
            at("1999-01-01T00:00:00Z")
                .check_not_after(accepted, day)
                .is_ok()
        );
        let e = at("2026-11-27T10:00:00.001Z")
            .check_not_after(accepted, day)
            .unwrap_err();
        assert_eq!((e.code, e.field), ("invalid_field", Some("occurred_at")));
        assert!(e.detail.contains("OCCURRED_AT_MAX_FUTURE"), "{}", e.detail);
        assert!(e.detail.contains("2026-11-26T10:00:00Z"), "{}", e.detail);
        let e = at("9999-12-31T23:59:59Z")
            .check_not_after(accepted, day)
            .unwrap_err();
        assert!(e.detail.contains("1day"), "{}", e.detail);
        // The bound is the setting's, and never overflows.
        let hour = std::time::Duration::from_secs(3600);
        assert!(
            at("2026-11-26T11:00:01Z")
                .check_not_after(accepted, hour)
                .is_err()
        );
        assert!(
            at("9999-12-31T23:59:59Z")
                .check_not_after(accepted, std::time::Duration::MAX)
                .is_ok()
        );
    }

    #[test]
    fn fields_name_what_is_wrong() {
        let v = json!({"a": 1, "n": null});
        let f = Fields::of(&v).unwrap();
        assert_eq!(f.string("missing").unwrap_err().code, "missing_field");
        assert_eq!(f.string("n").unwrap_err().code, "missing_field");
        let e = f.string("a").unwrap_err();
        assert_eq!((e.code, e.field), ("invalid_field", Some("a")));
        assert!(Fields::of(&json!([1])).is_err());
    }
}
