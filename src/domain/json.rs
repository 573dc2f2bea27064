//! JSON that payhook accepts: what every later reader can parse and hold.
//!
//! A webhook body is parsed once at the edge and again wherever its
//! envelope is decoded (the consumer, `payhook dlq`, any tool reading the
//! topic), and it ends up in Postgres as `jsonb`. The promise "what is
//! accepted can be stored" is a rule about the data itself, so it lives here
//! in the domain, stated as limits: nesting depth, size, the escapes and
//! numbers `jsonb` refuses. No SQL runs here; `tests/it/storable.rs` holds
//! the rule against the real database.

use serde_json::Value;

use super::types::ValidationError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
