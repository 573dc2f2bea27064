//! Hostile input at the HTTP layer, as property tests.
//!
//! The router is driven in-process (no socket, no broker) with a recording
//! fake publisher, so hundreds of requests run in well under a second and we
//! can see exactly what would have been published. For every request:
//! no panic, no 5xx, a JSON error with a stable code for every refusal, and
//! nothing published unless the request was correctly signed and valid.
//!
//! Case counts: `HOSTILE_CASES` (default 512 per property, six properties);
//! `cargo test --test it hostile -- --nocapture` prints each property's
//! count, time and the answers it saw.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header::HeaderValue};
use payhook::http::routes::handle;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Value, json};

use crate::helpers::{
    MAX_BODY, ORDERS_SECRET, STRIPE_SECRET, fake_state, sign_standard, sign_stripe, unix_now,
};

const ORDERS: &str = "/webhooks/payments/orders";
const CHARGEBACKS: &str = "/webhooks/payments/chargebacks";

/// A request as the properties describe it; turned into a hyper request only
/// when run, so a failing case prints readably.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

thread_local! {
    /// Answers seen by the property running on this thread, to show that
    /// the cases reach every branch (a property that only ever sees 404 would
    /// prove little).
    static STATUSES: std::cell::RefCell<std::collections::BTreeMap<u16, u32>> =
        Default::default();
}

/// What the service answered and published.
struct Outcome {
    status: u16,
    body: Value,
    published: usize,
}

fn run(rt: &tokio::runtime::Runtime, req: &Req) -> Result<Outcome, TestCaseError> {
    let mut b = Request::builder().method(Method::from_bytes(req.method.as_bytes()).unwrap());
    b = b.uri(req.path.as_str());
    let mut request = b.body(Full::new(Bytes::from(req.body.clone()))).unwrap();
    for (k, v) in &req.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            request.headers_mut().append(k, v);
        }
    }
    let (state, recorder) = fake_state(false);
    let state = Arc::new(state);
    let resp = rt.block_on(handle(state, request));
    let status = resp.status().as_u16();
    let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
        TestCaseError::fail(format!("answer {status} is not JSON ({e}): {bytes:?}"))
    })?;
    prop_assert!(status < 500, "5xx for a bad request: {status} {body}");
    if status >= 400 {
        let code = body["error"].as_str().unwrap_or("");
        prop_assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "refusal without a stable code: {status} {body}"
        );
    }
    STATUSES.with(|m| *m.borrow_mut().entry(status).or_default() += 1);
    let published = recorder.records.lock().unwrap().len();
    prop_assert_eq!(published, usize::from(status == 202), "{} {}", status, body);
    Ok(Outcome {
        status,
        body,
        published,
    })
}

fn runner(rt_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: rt_cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

fn check(
    name: &str,
    strategy: impl Strategy<Value = Req>,
    prop: impl Fn(&tokio::runtime::Runtime, Req) -> Result<(), TestCaseError>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let n = cases();
    STATUSES.with(|m| m.borrow_mut().clear());
    let started = Instant::now();
    let result = runner(n).run(&strategy, |req| prop(&rt, req));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let seen = STATUSES.with(|m| format!("{:?}", m.borrow()));
    eprintln!(
        "{name}: {n} cases in {:?}, answers {seen}",
        started.elapsed()
    );
}

// ---- strategies ----

fn method() -> impl Strategy<Value = String> {
    // Mostly POST, so most cases get past routing to the checks that matter.
    prop_oneof![
        3 => Just("POST".to_owned()),
        1 => prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"
        ])
        .prop_map(str::to_owned),
        1 => "[A-Z]{1,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![ORDERS, CHARGEBACKS]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            ORDERS,
            CHARGEBACKS,
            "/healthz",
            "/webhooks/payments/orders/",
            "/webhooks/payments/ORDERS",
            "//webhooks/payments/orders",
            "/webhooks/payments/orders?x=1",
            "/webhooks/payments",
            "/",
        ])
        .prop_map(str::to_owned),
        1 => "/[a-zA-Z0-9._~%/-]{0,40}",
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "content-type",
            "content-length",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "stripe-signature",
            "transfer-encoding",
            "x-anything",
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,20}",
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
            "text/plain",
            "0",
            "99999999999",
            "v1,",
            "t=1,v1=00",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[ -~]{0,80}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    (name, value)
}

/// A valid payment or chargeback body (as JSON text).
fn valid_body(chargeback: bool) -> impl Strategy<Value = Vec<u8>> {
    (
        "[a-z0-9_]{1,24}",
        "[a-z0-9_]{1,24}",
        0i64..10_000_000,
        prop::sample::select(vec!["USD", "EUR", "JPY"]),
        0u32..86_400,
    )
        .prop_map(move |(event, order, amount, currency, secs)| {
            let at = format!(
                "2026-11-26T{:02}:{:02}:{:02}Z",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            let v = if chargeback {
                json!({"provider_event_id": event, "order_id": order, "status": "opened",
                       "reason": "fraudulent", "amount": amount, "currency": currency,
                       "occurred_at": at})
            } else {
                json!({"provider_event_id": event, "order_id": order, "user_id": "usr_1",
                       "status": "succeeded", "amount": amount, "currency": currency,
                       "occurred_at": at})
            };
            v.to_string().into_bytes()
        })
}

/// Byte-level damage: flip, cut, insert.
#[derive(Clone, Debug)]
enum Damage {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        any::<usize>().prop_map(Damage::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    match d {
        Damage::Flip(i, x) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        Damage::Cut(i) if !bytes.is_empty() => bytes.truncate(i % bytes.len()),
        Damage::Insert(i, b) => {
            let i = i % (bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        _ => bytes.push(b'x'),
    }
}

/// Correct signature headers for `body` on `path`'s endpoint, at `ts`.
fn signed_headers(path: &str, body: &[u8], ts: i64) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![("content-type".to_owned(), b"application/json".to_vec())];
    if path == ORDERS {
        h.push(("webhook-id".into(), b"msg_1".to_vec()));
        h.push(("webhook-timestamp".into(), ts.to_string().into_bytes()));
        h.push((
            "webhook-signature".into(),
            sign_standard(ORDERS_SECRET, "msg_1", ts, body).into_bytes(),
        ));
    } else {
        let sig = sign_stripe(STRIPE_SECRET, ts, body);
        h.push((
            "stripe-signature".into(),
            format!("t={ts},v1={sig}").into_bytes(),
        ));
    }
    h
}

fn endpoint() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![ORDERS, CHARGEBACKS])
}

// ---- properties ----

#[test]
fn arbitrary_requests_never_crash_never_5xx_never_publish() {
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_BODY + 512),
        (any::<bool>(), prop::collection::vec(damage(), 0..4)).prop_flat_map(|(cb, ds)| {
            valid_body(cb).prop_map(move |mut b| {
                ds.iter().for_each(|d| apply(&mut b, d));
                b
            })
        }),
    ];
    let strategy = (
        method(),
        path(),
        prop::collection::vec(header(), 0..8),
        prop::bool::weighted(0.8),
        body,
    )
        .prop_map(|(method, path, mut headers, json, body)| {
            if json {
                headers.insert(0, ("content-type".into(), b"application/json".to_vec()));
            }
            Req {
                method,
                path,
                headers,
                body,
            }
        });
    check("arbitrary requests", strategy, |rt, req| {
        let out = run(rt, &req)?;
        // Nobody here holds a secret: nothing may be accepted.
        prop_assert_eq!(out.published, 0);
        prop_assert!(out.status != 202);
        Ok(())
    });
}

#[test]
fn unsigned_valid_webhooks_are_401() {
    let strategy = (endpoint(), any::<bool>())
        .prop_flat_map(|(path, cb)| {
            (
                Just(path),
                valid_body(cb),
                prop::collection::vec(header(), 0..6),
            )
        })
        .prop_map(|(path, body, mut headers)| {
            // Random signature-looking headers, but a JSON content type and no
            // Content-Length: only the signature decides.
            headers.retain(|(k, _)| k != "content-type" && k != "content-length");
            headers.push(("content-type".into(), b"application/json".to_vec()));
            Req {
                method: "POST".into(),
                path: path.into(),
                headers,
                body,
            }
        });
    check("unsigned valid webhooks", strategy, |rt, req| {
        let out = run(rt, &req)?;
        prop_assert_eq!(out.status, 401, "{}", out.body);
        prop_assert_eq!(
            out.body,
            json!({"error": "unauthorized", "detail": "invalid or missing signature"})
        );
        Ok(())
    });
}

/// Where a signed request is damaged after signing.
#[derive(Clone, Debug)]
enum Tamper {
    Body(Damage),
    /// Replace one character of the signature with a digit that differs.
    SignatureChar(usize, u8),
    SignatureCut(usize),
    Timestamp(i64),
    DropHeader(usize),
    DuplicateHeader(usize),
    /// Right signature, other endpoint's secret and scheme.
    WrongEndpoint,
}

#[test]
fn signed_then_tampered_webhooks_are_401() {
    let tamper = prop_oneof![
        damage().prop_map(Tamper::Body),
        (any::<usize>(), 0u8..10).prop_map(|(i, d)| Tamper::SignatureChar(i, d)),
        any::<usize>().prop_map(Tamper::SignatureCut),
        prop_oneof![-1_000_000i64..-301, 301i64..1_000_000, -1i64..=1,].prop_map(Tamper::Timestamp),
        any::<usize>().prop_map(Tamper::DropHeader),
        any::<usize>().prop_map(Tamper::DuplicateHeader),
        Just(Tamper::WrongEndpoint),
    ];
    let strategy = endpoint()
        .prop_flat_map(move |path| (Just(path), valid_body(path == CHARGEBACKS), tamper.clone()));
    let rt_strategy = strategy.prop_map(|(path, body, t)| {
        let now = unix_now();
        let mut headers = signed_headers(path, &body, now);
        let mut body = body;
        // Index of the header that carries the signature.
        let sig_at = headers.len() - 1;
        match &t {
            Tamper::Body(d) => {
                let before = body.clone();
                apply(&mut body, d);
                if body == before {
                    body.push(b' ');
                }
            }
            Tamper::SignatureChar(i, digit) => {
                let sig = &mut headers[sig_at].1;
                let i = i % sig.len();
                let d = b'0' + digit;
                sig[i] = if sig[i] == d {
                    b'0' + (digit + 1) % 10
                } else {
                    d
                };
            }
            Tamper::SignatureCut(i) => {
                let sig = &mut headers[sig_at].1;
                let keep = i % sig.len();
                sig.truncate(keep);
            }
            Tamper::Timestamp(shift) => {
                // Signed at a moment out of tolerance, or (shift of -1..=1)
                // signed correctly but with the timestamp header changed.
                if shift.abs() > 1 {
                    headers = signed_headers(path, &body, now + shift);
                } else if path == ORDERS {
                    headers[2].1 = (now + shift + 2).to_string().into_bytes();
                } else {
                    let v = String::from_utf8(headers[1].1.clone()).unwrap();
                    let v = v.replacen(&format!("t={now}"), &format!("t={}", now + shift + 2), 1);
                    headers[1].1 = v.into_bytes();
                }
            }
            Tamper::DropHeader(i) => {
                // Never the content type: that is a 415, tested elsewhere.
                let i = 1 + i % (headers.len() - 1);
                headers.remove(i);
            }
            Tamper::DuplicateHeader(i) => {
                let i = 1 + i % (headers.len() - 1);
                let h = headers[i].clone();
                headers.push(h);
            }
            Tamper::WrongEndpoint => {
                let other = if path == ORDERS { CHARGEBACKS } else { ORDERS };
                headers = signed_headers(other, &body, now);
            }
        }
        (
            Req {
                method: "POST".into(),
                path: path.into(),
                headers,
                body,
            },
            t,
        )
    });
    let req_only = rt_strategy.prop_map(|(r, _)| r);
    check("signed then tampered", req_only, |rt, req| {
        let out = run(rt, &req)?;
        prop_assert_eq!(out.status, 401, "{}", out.body);
        Ok(())
    });
}

#[test]
fn signed_garbage_is_a_clean_400_and_signed_valid_is_202() {
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_BODY),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        (any::<bool>(), prop::collection::vec(damage(), 0..3)).prop_flat_map(|(cb, ds)| {
            valid_body(cb).prop_map(move |mut b| {
                ds.iter().for_each(|d| apply(&mut b, d));
                b.truncate(MAX_BODY);
                b
            })
        }),
        // Deep nesting, inside a valid object.
        (1usize..400).prop_map(|n| {
            format!(r#"{{"x":{}{}}}"#, "[".repeat(n), "]".repeat(n)).into_bytes()
        }),
    ];
    let strategy = (endpoint(), body).prop_map(|(path, body)| Req {
        method: "POST".into(),
        path: path.into(),
        headers: signed_headers(path, &body, unix_now()),
        body,
    });
    check("signed bodies", strategy, |rt, req| {
        let out = run(rt, &req)?;
        match out.status {
            202 => prop_assert!(out.body["event_id"].is_string()),
            400 => {
                let code = out.body["error"].as_str().unwrap_or_default();
                prop_assert!(
                    ["invalid_json", "missing_field", "invalid_field"].contains(&code),
                    "{}",
                    out.body
                );
            }
            s => prop_assert!(false, "signed body answered {s}: {}", out.body),
        }
        Ok(())
    });
}

/// Something Postgres cannot store as `jsonb`, as JSON text.
fn unstorable() -> impl Strategy<Value = String> {
    prop_oneof![
        // \u0000 inside a string, with text around it.
        ("[a-z ]{0,6}", "[a-z ]{0,6}").prop_map(|(a, b)| format!(r#""{a}\u0000{b}""#)),
        // A surrogate half without its other half.
        (0xd800u32..0xe000, "[a-z]{0,3}").prop_map(|(u, t)| format!(r#""\u{u:04x}{t}""#)),
        (0xdc00u32..0xe000, 0xd800u32..0xdc00)
            .prop_map(|(l, h)| format!(r#""\u{l:04x}\u{h:04x}""#)),
        // Numbers numeric cannot hold (or PostgreSQL 14 refuses).
        (16_384i64..1_000_000).prop_map(|e| format!("1e-{e}")),
        (1_001i64..5_000).prop_map(|e| format!("0e{e}")),
        (1usize..40, 16_345i64..17_000).prop_map(|(n, e)| format!("0.{}e-{e}", "1".repeat(n))),
    ]
}

#[test]
fn signed_valid_webhooks_carrying_unstorable_json_are_400() {
    let strategy = (endpoint(), unstorable(), any::<bool>())
        .prop_flat_map(|(path, hazard, as_key)| {
            (
                Just(path),
                valid_body(path == CHARGEBACKS),
                Just(hazard),
                Just(as_key),
            )
        })
        .prop_map(|(path, body, hazard, as_key)| {
            // The hazard in an extra field the validators never read (or,
            // for strings, as the key of one).
            let mut text = String::from_utf8(body).unwrap();
            text.pop();
            if as_key && hazard.starts_with('"') {
                text.push_str(&format!(",{hazard}:1}}"));
            } else {
                text.push_str(&format!(r#","extra":{{"v":[{hazard}]}}}}"#));
            }
            let body = text.into_bytes();
            Req {
                method: "POST".into(),
                path: path.into(),
                headers: signed_headers(path, &body, unix_now()),
                body,
            }
        });
    check("signed unstorable bodies", strategy, |rt, req| {
        let out = run(rt, &req)?;
        prop_assert_eq!(out.status, 400, "{}", out.body);
        prop_assert_eq!(
            out.body["error"].as_str(),
            Some("invalid_json"),
            "{}",
            out.body
        );
        Ok(())
    });
}

// ---- providers ----

/// A Stripe event of a mapped or unknown type, with or without metadata.
fn stripe_event() -> impl Strategy<Value = Vec<u8>> {
    (
        "[a-zA-Z0-9_]{1,24}",
        prop::sample::select(vec![
            "payment_intent.succeeded",
            "payment_intent.created",
            "payment_intent.payment_failed",
            "charge.refunded",
            "charge.dispute.created",
            "charge.dispute.closed",
            "customer.created",
            "invoice.paid",
        ]),
        any::<bool>(),
        0i64..10_000_000,
        prop::sample::select(vec!["usd", "eur", "EUR", "x"]),
        prop::sample::select(vec!["won", "lost", "needs_response", ""]),
    )
        .prop_map(|(id, t, metadata, amount, currency, status)| {
            let meta = if metadata {
                json!({"order_id": "ord_1", "user_id": "usr_1"})
            } else {
                json!({})
            };
            json!({"id": format!("evt_{id}"), "object": "event", "type": t,
                   "created": 1_764_151_200, "data": {"object": {
                       "id": "pi_1", "object": "payment_intent", "amount": amount,
                       "currency": currency, "metadata": meta, "status": status,
                       "refunded": true, "charge": "ch_1", "payment_intent": "pi_1"}}})
            .to_string()
            .into_bytes()
        })
}

/// An Adyen batch whose items are signed with a key payhook does not hold.
fn adyen_batch() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            (
                "[0-9]{16}",
                prop::sample::select(vec!["AUTHORISATION", "REFUND", "CHARGEBACK", "CAPTURE"]),
                prop::sample::select(vec!["true", "false"]),
                "[A-Za-z0-9+/]{43}=",
            ),
            1..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(items, wrapped)| {
            let items: Vec<Value> = items
                .into_iter()
                .map(|(psp, code, success, sig)| {
                    let item = json!({"pspReference": psp, "eventCode": code, "success": success,
                        "merchantAccountCode": "Shop", "merchantReference": "ord_1",
                        "amount": {"value": 100, "currency": "EUR"},
                        "eventDate": "2026-11-26T10:00:00Z",
                        "additionalData": {"hmacSignature": sig}});
                    if wrapped {
                        json!({ "NotificationRequestItem": item })
                    } else {
                        item
                    }
                })
                .collect();
            json!({"live": "false", "notificationItems": items})
                .to_string()
                .into_bytes()
        })
}

#[test]
fn provider_bodies_never_crash_never_5xx_and_publish_only_when_signed() {
    let stripe_body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_BODY),
        (stripe_event(), prop::collection::vec(damage(), 0..3)).prop_map(|(mut b, ds)| {
            ds.iter().for_each(|d| apply(&mut b, d));
            b.truncate(MAX_BODY);
            b
        }),
    ];
    let adyen_body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..MAX_BODY),
        (adyen_batch(), prop::collection::vec(damage(), 0..2)).prop_map(|(mut b, ds)| {
            ds.iter().for_each(|d| apply(&mut b, d));
            b.truncate(MAX_BODY);
            b
        }),
    ];
    let strategy = prop_oneof![
        stripe_body.prop_map(|body| Req {
            method: "POST".into(),
            path: "/webhooks/stripe".into(),
            headers: signed_headers("/webhooks/stripe", &body, unix_now()),
            body,
        }),
        adyen_body.prop_map(|body| Req {
            method: "POST".into(),
            path: "/webhooks/adyen".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body,
        }),
    ];
    check("provider bodies", strategy, |rt, req| {
        let out = run(rt, &req)?;
        if req.path == "/webhooks/stripe" {
            // Signed: accepted (mapped or dead-lettered later), ignored, or
            // not a Stripe event.
            match out.status {
                202 => prop_assert!(out.body["event_id"].is_string()),
                200 => prop_assert_eq!(&out.body, &json!({"ignored": true})),
                400 => prop_assert_eq!(out.body["error"].as_str(), Some("invalid_json")),
                s => prop_assert!(false, "signed Stripe body answered {s}: {}", out.body),
            }
        } else {
            // No item is signed with payhook's key: never accepted.
            prop_assert!(
                [400, 401].contains(&out.status),
                "Adyen body answered {}: {}",
                out.status,
                out.body
            );
        }
        Ok(())
    });
}
