//! A payload accepted with 202 must be storable: whatever the edge accepts,
//! the real Postgres accepts as `jsonb` (the consumer writes the raw body
//! with `$text::jsonb`), and the values of the typed columns fit them.

use chrono::{DateTime, Utc};
use payhook::domain::{
    json::{MAX_JSON_DEPTH, MAX_NUMBER_EXPONENT, parse_json_body},
    orders::PaymentWebhook,
    types::OccurredAt,
};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};

use crate::helpers::Env;

/// What Postgres says to `$1::jsonb`: `None` if it stores it, else the
/// SQLSTATE and message.
async fn pg_verdict(db: &tokio_postgres::Client, text: &str) -> Option<String> {
    match db.query_one("SELECT $1::text::jsonb", &[&text]).await {
        Ok(_) => None,
        Err(e) => Some(match e.as_db_error() {
            Some(d) => format!("{} {}", d.code().code(), d.message()),
            None => e.to_string(),
        }),
    }
}

/// Tricky but valid bodies: the edge accepts each, and so does Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_valid_bodies_are_accepted_by_the_edge_and_by_postgres() {
    let env = Env::new().await;
    let deep = format!(
        "{}1{}",
        "[".repeat(MAX_JSON_DEPTH - 1),
        "]".repeat(MAX_JSON_DEPTH - 1)
    );
    let extras: Vec<String> = vec![
        r#""é ✓ 😀 中文 עברית \u00e9 \u2028 \u2029 \ufeff""#.into(),
        r#""\ud83d\ude00 \uD83D\uDE00 \udbff\udfff \ufffe \uffff""#.into(),
        r#""\u0001\u001f\u007f\u0080\u00ff""#.into(),
        r#""\"\\\/\b\f\n\r\t""#.into(),
        r#""\\u0000 is not an escape here""#.into(),
        r#"{"\u00e9":"key escapes","":"empty key","a\\u0000b":1}"#.into(),
        "[1e-1000, 1e308, -1.7976931348623157e308, 5e-324, -0, 0.0, 1E+5, 12.5e-3, 0e1000, 0e-1000]"
            .into(),
        format!("1{}", "0".repeat(300)),
        format!("0.{}1", "0".repeat(16_382)),
        format!("0.{}1e1000", "0".repeat(17_382)),
        format!("123456789.{}", "9".repeat(16_383)),
        "18446744073709551616".into(),
        "-9223372036854775809".into(),
        deep,
        format!(r#""{}""#, "x".repeat(200_000)),
        "null".into(),
    ];
    for extra in &extras {
        let body = format!(
            r#"{{"provider_event_id":"evt_1","order_id":"ord_1","user_id":"usr_1","status":"pending","amount":1,"currency":"USD","occurred_at":"2026-11-26T10:00:00Z","extra":{extra}}}"#
        );
        let shown = &extra[..extra.len().min(60)];
        let v = parse_json_body(body.as_bytes())
            .unwrap_or_else(|e| panic!("the edge refused {shown}: {e}"));
        PaymentWebhook::from_json(&v).unwrap();
        assert_eq!(
            pg_verdict(&env.db, &body).await,
            None,
            "Postgres refused {shown}"
        );
    }

    // The typed columns: timestamps at chrono's RFC 3339 extremes (the
    // offset carries them past years 0 and 9999) and a leap second are
    // within timestamptz's range, sent as the store sends them (binary).
    for s in [
        "0000-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59-23:59",
        "2016-12-31T23:59:60Z",
        "2026-11-26T10:00:00.123456789Z",
    ] {
        let t: DateTime<Utc> = OccurredAt::parse(s).unwrap().as_datetime();
        let back: DateTime<Utc> = env
            .db
            .query_one("SELECT $1::timestamptz", &[&t])
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .get(0);
        assert!((back - t).num_seconds().abs() <= 1, "{s}: {back}");
    }
    // Ids: any Unicode without control characters, up to 128 bytes; amounts
    // up to i64::MAX.
    let id = "€✓😀\u{fffe}\u{10ffff} \"'\\".repeat(4);
    assert!(id.len() <= 128);
    let row = env
        .db
        .query_one(
            "SELECT $1::text, $2::int8, $3::char(3)",
            &[&id, &i64::MAX, &"XTS"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), id);
    env.cleanup().await;
}

/// A JSON value built to hit the hazards and their neighbours.
fn value() -> impl Strategy<Value = String> {
    let escape = prop_oneof![
        Just(r"\u0000".to_owned()),
        Just(r"\\u0000".to_owned()),
        (0xd7f0u32..0xe010).prop_map(|u| format!(r"\u{u:04x}")),
        (0xd800u32..0xdc00, 0xdc00u32..0xe000).prop_map(|(h, l)| format!(r"\u{h:04x}\u{l:04X}")),
        (0u32..0x20).prop_map(|u| format!(r"\u{u:04x}")),
        "[a-zA-Z0-9 é✓😀\\\\\"/]{0,8}".prop_map(|s| s.replace('\\', r"\\").replace('"', r#"\""#)),
    ];
    let string =
        prop::collection::vec(escape, 0..4).prop_map(|parts| format!("\"{}\"", parts.concat()));
    let number = (
        any::<bool>(),
        prop_oneof![Just("0".to_owned()), "[1-9][0-9]{0,20}"],
        prop_oneof![
            Just(String::new()),
            (0usize..17_000, "[0-9]{0,3}").prop_map(|(z, d)| format!(".{}{d}1", "0".repeat(z)))
        ],
        prop_oneof![
            Just(String::new()),
            (
                prop::sample::select(vec!["e", "E", "e+", "e-", "E-"]),
                0i64..20_000
            )
                .prop_map(|(e, n)| format!("{e}{n}")),
            (prop::sample::select(vec!["e", "e-"]), 990i64..1010)
                .prop_map(|(e, n)| format!("{e}{n}")),
        ],
    )
        .prop_map(|(neg, int, frac, exp)| {
            format!("{}{int}{frac}{exp}", if neg { "-" } else { "" })
        });
    prop_oneof![string, number]
}

/// Property, against the real database: every body the edge accepts,
/// Postgres stores; and every body the edge refuses as unstorable, Postgres
/// refuses too, except numbers with an exponent beyond ±1000, which only
/// PostgreSQL 14 and older refuse (the edge holds to the stricter rule), and
/// numbers beyond `f64` (about ±1.8e308), which serde_json refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_and_postgres_agree_on_what_is_storable() {
    let env = Env::new().await;
    let cases = std::env::var("STORABLE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(value(), 1..4);
    // Generate first (proptest is synchronous), then ask Postgres.
    let mut bodies = Vec::new();
    for _ in 0..cases {
        let parts = strategy.new_tree(&mut runner).unwrap().current();
        bodies.push(format!("{{\"k\":[{}]}}", parts.join(",")));
    }
    let (mut accepted, mut refused, mut stricter) = (0, 0, 0);
    for body in &bodies {
        let edge = parse_json_body(body.as_bytes());
        let pg = pg_verdict(&env.db, body).await;
        let shown = &body[..body.len().min(120)];
        match (&edge, &pg) {
            (Ok(_), None) => accepted += 1,
            (Ok(_), Some(why)) => panic!("the edge accepts what Postgres refuses ({why}): {shown}"),
            (Err(_), Some(_)) => refused += 1,
            (Err(e), None) => {
                // Only the two stated stricter rules may differ: the
                // exponent bound, and numbers beyond f64 (serde_json's).
                assert!(
                    e.detail
                        .contains(&format!("exponent is beyond ±{MAX_NUMBER_EXPONENT}"))
                        || e.detail.contains("number out of range"),
                    "the edge refuses what Postgres stores ({}): {shown}",
                    e.detail
                );
                stricter += 1;
            }
        }
    }
    eprintln!(
        "storable: {cases} bodies: {accepted} accepted by both, {refused} refused by both, \
         {stricter} refused only by the edge's stricter number rules"
    );
    assert!(
        accepted > cases / 10 && refused > cases / 10,
        "the cases reach both sides"
    );
    env.cleanup().await;
}
