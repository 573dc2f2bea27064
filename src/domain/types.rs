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

    fn invalid(field: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            code: "invalid_field",
            field: Some(field),
            detail: format!("`{field}` {detail}"),
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
    /// The provider's reason code for a chargeback.
    Reason,
    "reason"
);

/// An amount in minor units (cents): a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub fn parse(v: &Value) -> Result<Self, ValidationError> {
        match v.as_i64() {
            Some(n) if n >= 0 => Ok(Self(n)),
            _ if v.is_number() => Err(ValidationError::invalid(
                "amount",
                format_args!("must be a non-negative integer in minor units, got {v}"),
            )),
            _ => Err(ValidationError::invalid(
                "amount",
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
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        use chrono::Timelike;
        DateTime::parse_from_rfc3339(s)
            .map(|t| {
                let utc = t.with_timezone(&Utc);
                // Dropping sub-microsecond digits keeps the nanosecond field
                // in its range (leap seconds included), so this never fails.
                let micros = utc.nanosecond() / 1_000 * 1_000;
                Self(utc.with_nanosecond(micros).unwrap_or(utc))
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

impl Origin {
    pub fn generic() -> Self {
        Self {
            provider: "generic".into(),
            object_ids: Vec::new(),
        }
    }
}

/// Default of `OCCURRED_AT_MAX_FUTURE`: how far after its acceptance an
/// event may say it occurred. Clocks differ by seconds, not days.
pub const DEFAULT_OCCURRED_AT_MAX_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// Deepest nesting of arrays and objects accepted in a webhook body.
///
/// serde_json alone would stop at 128 levels, an implementation detail that
/// could change under us. The payload is parsed again downstream (by the
/// consumer, by Postgres as `jsonb`, by any tool reading the topic), where a
/// body that cannot be parsed stops its partition; a stated, tested limit
/// far below any parser's keeps every later parse safe. Real webhooks nest a
/// few levels; 32 leaves ample room.
pub const MAX_JSON_DEPTH: usize = 32;

/// Largest payload accepted anywhere: the ceiling of `HTTP_MAX_BODY_BYTES`,
/// and what the consumer accepts from a record written by another client.
/// It keeps every string and container far below `jsonb`'s own limit of
/// 268,435,455 bytes each, so size is never what makes Postgres refuse one.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;
const _: () = assert!(MAX_PAYLOAD_BYTES < 0x0FFF_FFFF);

/// Largest decimal exponent (either sign) written in a JSON number.
/// PostgreSQL up to 14 refuses `numeric` input whose exponent is beyond
/// ±1000 (15 accepts more); 1000 keeps the payload storable on either.
pub const MAX_NUMBER_EXPONENT: i64 = 1000;

/// Most digits after the decimal point a JSON number may have once its
/// exponent is applied (`1.5e-3` has 4): Postgres `numeric`'s display scale
/// is at most 16383 (`NUMERIC_DSCALE_MAX`); `1e-16384` and `0.` followed by
/// 16384 digits are refused ("value overflows numeric format").
pub const MAX_NUMBER_SCALE: i64 = 16383;

/// Most digits before the decimal point (`numeric`'s weight limit). serde_json
/// already refuses numbers beyond `f64` (about 1.8e308), so this is stated
/// for completeness of the rule.
pub const MAX_NUMBER_INTEGER_DIGITS: i64 = 131_072;

/// Parses a webhook body: valid JSON nested at most [`MAX_JSON_DEPTH`]
/// levels, that Postgres can store as `jsonb` exactly as received.
///
/// The same function checks the body at the edge and the payload when the
/// consumer decodes a record, so a payload that Postgres would refuse is a
/// `400` at the edge and a permanent decode failure (dead letter) in the
/// consumer, never a write that fails and is retried forever.
///
/// A lexical scan runs first and uses no recursion, so no input can make the
/// parser recurse deeply. It refuses, as `invalid_json`:
/// - nesting deeper than [`MAX_JSON_DEPTH`];
/// - the escape `\u0000` anywhere (key or value): `jsonb` cannot hold a NUL
///   character (SQLSTATE 22P05);
/// - a UTF-16 surrogate escape that is not a high one followed by a low one
///   (`\ud800`, `\udc00`, `\ud800\u0041`): not a Unicode character,
///   refused by Postgres (22P02) and by serde_json;
/// - a number Postgres `numeric` cannot hold, or that PostgreSQL 14 and older
///   would refuse: exponent beyond ±[`MAX_NUMBER_EXPONENT`], more than
///   [`MAX_NUMBER_SCALE`] digits after the point once the exponent is applied,
///   or more than [`MAX_NUMBER_INTEGER_DIGITS`] before it;
/// - a body over [`MAX_PAYLOAD_BYTES`].
///
/// What is left is storable: a raw NUL or other control character and
/// invalid UTF-8 are invalid JSON (serde_json refuses them), and every other
/// escape and character is a Unicode scalar value that `jsonb` keeps
/// (`tests/it/storable.rs` checks this against the real database).
pub fn parse_json_body(body: &[u8]) -> Result<Value, ValidationError> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(ValidationError::invalid_json(format!(
            "the body is larger than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    match scan_json(body) {
        Scan::Fine => {}
        Scan::TooDeep => {
            return Err(ValidationError::invalid_json(format!(
                "the body is nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Scan::Unstorable(detail) => return Err(ValidationError::invalid_json(detail)),
    }
    serde_json::from_slice(body)
        .map_err(|e| ValidationError::invalid_json(format!("the body is not valid JSON: {e}")))
}

/// What the lexical scan of a body found.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Fine,
    TooDeep,
    /// Valid-looking JSON that Postgres would refuse to store; says why.
    Unstorable(String),
}

/// One pass over the bytes, outside and inside strings. Exact for valid
/// JSON; for invalid JSON whatever it reports is still true of the text, and
/// otherwise the parser that runs next reports the error.
fn scan_json(body: &[u8]) -> Scan {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => match scan_string(body, i + 1) {
                Ok(next) => i = next,
                Err(detail) => return Scan::Unstorable(detail),
            },
            b'-' | b'0'..=b'9' => match scan_number(body, i) {
                Ok(next) => i = next,
                Err(detail) => return Scan::Unstorable(detail),
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Scan::TooDeep;
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Scan::Fine
}

/// The four hex digits of a `\u` escape at `at` (pointing at the `\`).
fn unicode_escape(body: &[u8], at: usize) -> Option<u16> {
    let hex = body.get(at + 2..at + 6)?;
    if body.get(at + 1) != Some(&b'u') {
        return None;
    }
    let hex = std::str::from_utf8(hex).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

/// Scans a string from just after its opening quote; returns the index just
/// after its closing quote (or the end), or why Postgres would refuse it.
fn scan_string(body: &[u8], mut i: usize) -> Result<usize, String> {
    while i < body.len() {
        match body[i] {
            b'"' => return Ok(i + 1),
            b'\\' => match body.get(i + 1) {
                Some(b'u') => {
                    let Some(unit) = unicode_escape(body, i) else {
                        // Malformed: the parser reports it.
                        i += 2;
                        continue;
                    };
                    match unit {
                        0 => {
                            return Err(format!(
                                "the body contains the escape \\u0000 (at byte {i}): \
                                 Postgres cannot store a NUL character in JSON"
                            ));
                        }
                        0xD800..=0xDBFF => {
                            match unicode_escape(body, i + 6) {
                                Some(0xDC00..=0xDFFF) => i += 12,
                                _ => return Err(lone_surrogate(unit, i)),
                            }
                            continue;
                        }
                        0xDC00..=0xDFFF => return Err(lone_surrogate(unit, i)),
                        _ => i += 6,
                    }
                }
                Some(_) => i += 2,
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    Ok(i)
}

fn lone_surrogate(unit: u16, at: usize) -> String {
    format!(
        "the body contains the escape \\u{unit:04x} (at byte {at}), half of a UTF-16 \
         surrogate pair without its other half: not a Unicode character"
    )
}

/// Scans a number starting at `start`; returns the index after it, or why
/// Postgres `numeric` cannot hold it.
fn scan_number(body: &[u8], start: usize) -> Result<usize, String> {
    let mut i = start;
    if body.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let from = *i;
        while body.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        (*i - from) as i64
    };
    let int_start = i;
    let mut int_digits = digits(&mut i);
    // Leading zeros carry no weight (JSON allows one, before a point).
    int_digits -= body[int_start..i]
        .iter()
        .take_while(|&&b| b == b'0')
        .count() as i64;
    let mut frac_digits = 0;
    if body.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = digits(&mut i);
    }
    let mut exponent: i64 = 0;
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = match body.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        while let Some(d) = body.get(i).filter(|b| b.is_ascii_digit()) {
            // Saturates far beyond any limit below.
            exponent = (exponent * 10 + i64::from(d - b'0')).min(1 << 40);
            i += 1;
        }
        if negative {
            exponent = -exponent;
        }
    }
    let why = if exponent.abs() > MAX_NUMBER_EXPONENT {
        Some(format!("its exponent is beyond ±{MAX_NUMBER_EXPONENT}"))
    } else if frac_digits - exponent > MAX_NUMBER_SCALE {
        Some(format!(
            "it has more than {MAX_NUMBER_SCALE} digits after the decimal point"
        ))
    } else if int_digits + exponent > MAX_NUMBER_INTEGER_DIGITS {
        Some(format!(
            "it has more than {MAX_NUMBER_INTEGER_DIGITS} digits before the decimal point"
        ))
    } else {
        None
    };
    match why {
        None => Ok(i.max(start + 1)),
        Some(why) => {
            let text = String::from_utf8_lossy(&body[start..i]);
            let shown: String = text.chars().take(24).collect();
            let more = if shown.len() < text.len() { "..." } else { "" };
            Err(format!(
                "the body contains the number {shown}{more} (at byte {start}), which Postgres \
                 cannot store: {why}"
            ))
        }
    }
}

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
    fn json_bodies_are_bounded_in_depth() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_json_body(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let e = parse_json_body(nested(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert!(e.detail.contains("nested deeper than 32"), "{}", e.detail);
        // Far beyond serde_json's own limit and any stack: a clean refusal.
        let e = parse_json_body("[".repeat(1 << 20).as_bytes()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_json_body(r#"{"a":"#.repeat(100_000).as_bytes()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        // Brackets inside strings, escaped quotes included, do not count.
        let deep_string = format!(r#"{{"a":"\"{}"}}"#, "[{".repeat(100));
        assert!(parse_json_body(deep_string.as_bytes()).is_ok());
        let e = parse_json_body(b"{not json").unwrap_err();
        assert!(e.detail.contains("not valid JSON"), "{}", e.detail);
    }

    /// Every case Postgres refuses to store as `jsonb` (established against
    /// PostgreSQL 15: SQLSTATE 22P05 for `\u0000`, 22P02 for surrogates,
    /// 22003 for the numbers) is refused here with a detail saying why.
    #[test]
    fn bodies_postgres_cannot_store_are_refused() {
        let zeros = |n: usize| "0".repeat(n);
        let cases: Vec<(String, &str)> = vec![
            (r#"{"a":"\u0000"}"#.into(), "\\u0000"),
            (r#"{"a":"x\u0000y"}"#.into(), "\\u0000"),
            (r#"{"\u0000":1}"#.into(), "\\u0000"),
            (r#"{"a":["ok","\u0000"]}"#.into(), "NUL"),
            (r#"{"a":"\ud800"}"#.into(), "\\ud800"),
            (r#"{"a":"\udc00"}"#.into(), "\\udc00"),
            (r#"{"a":"\udc00\ud800"}"#.into(), "surrogate"),
            (r#"{"a":"\ud800\u0041"}"#.into(), "surrogate"),
            (r#"{"a":"\uD83Dx"}"#.into(), "surrogate"),
            (r#"{"a":1e-16384}"#.into(), "exponent"),
            (r#"{"a":1e-1001}"#.into(), "exponent"),
            (r#"{"a":0e2000}"#.into(), "exponent"),
            (r#"{"a":1E+1001}"#.into(), "exponent"),
            (r#"{"a":1e-99999999999999999999999}"#.into(), "exponent"),
            (format!(r#"{{"a":0.{}1}}"#, zeros(16383)), "16383 digits"),
            (format!(r#"{{"a":1.{}}}"#, zeros(16384)), "16383 digits"),
            (
                format!(r#"{{"a":-0.{}e-1000}}"#, zeros(15384)),
                "16383 digits",
            ),
            (
                format!(r#"{{"a":1{}}}"#, zeros(131_072)),
                "before the decimal point",
            ),
        ];
        for (body, why) in &cases {
            let e = parse_json_body(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_json", "{}", &body[..body.len().min(40)]);
            assert!(e.detail.contains(why), "{why}: {}", e.detail);
            assert!(e.detail.len() < 300, "a bounded detail: {}", e.detail.len());
        }
        // The same checks in a field the validators read.
        let e = parse_json_body(br#"{"order_id":"o\u0000"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        // Too large for any payload, whatever the body limit says.
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        let e = parse_json_body(big.as_bytes()).unwrap_err();
        assert!(e.detail.contains("larger than"), "{}", e.detail);
    }

    /// The refusals are exact: the neighbours of each limit, and text that
    /// only looks like a hazard, are accepted.
    #[test]
    fn storable_bodies_are_accepted() {
        let zeros = |n: usize| "0".repeat(n);
        let ok: Vec<String> = vec![
            r#"{"a":"\\u0000"}"#.into(),
            r#"{"a":"\\\\u0000"}"#.into(),
            r#"{"a":"\u0001\u001f\u007f"}"#.into(),
            r#"{"a":"\ud83d\ude00 \uD83D\uDE00 \ufffe\uffff"}"#.into(),
            r#"{"a":"é ✓ 😀 \u00e9 \u2028"}"#.into(),
            r#"{"a":"\"\\\/\b\f\n\r\t"}"#.into(),
            r#"{"a":[1e-1000, 1e308, -0, 0.0, 1E+5, 12.5e-3, -1.7976931348623157e308]}"#.into(),
            format!(r#"{{"a":0.{}1}}"#, zeros(16382)),
            format!(r#"{{"a":0.{}1e1000}}"#, zeros(17382)),
            format!(r#"{{"a":1{}}}"#, zeros(300)),
            r#"{"1e-99999":"1e-99999 \\ud800 [[[[ \\u0000"}"#.into(),
        ];
        for body in &ok {
            let r = parse_json_body(body.as_bytes());
            assert!(r.is_ok(), "{}: {r:?}", &body[..body.len().min(60)]);
        }
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
