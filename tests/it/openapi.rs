//! `openapi.yaml` matches the server: every route, method, status and error
//! code it documents is what the router does, and vice versa; its examples
//! pass the real parsers and are accepted end to end (in-process, with a
//! fake publisher).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Method, Request, body::Frame};
use payhook::{
    domain::{disputes::ChargebackWebhook, json::parse_json_body, orders::PaymentWebhook},
    http::routes::handle,
};
use serde_json::{Value, json};

use crate::helpers::{
    ADYEN_DOC_KEY, ORDERS_SECRET, STRIPE_SECRET, fake_state, sign_standard, sign_stripe, unix_now,
};

const ORDERS: &str = "/webhooks/payments/orders";
const CHARGEBACKS: &str = "/webhooks/payments/chargebacks";
const STRIPE: &str = "/webhooks/stripe";
const ADYEN: &str = "/webhooks/adyen";
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml at the repository root");
    serde_norway::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// Follows a local `$ref` (`#/a/b/c`).
fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = spec
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(spec, target)
        }
        None => v,
    }
}

/// The `error` codes a documented response allows.
fn documented_codes(spec: &Value, response: &Value) -> BTreeSet<String> {
    let schema = resolve(
        spec,
        &resolve(spec, response)["content"]["application/json"]["schema"],
    );
    let mut out = BTreeSet::new();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        for c in resolve(spec, part)["properties"]["error"]["enum"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.insert(c.as_str().unwrap().to_owned());
        }
    }
    out
}

/// `(status, error code or "")` pairs a documented operation may answer.
fn documented_answers(spec: &Value, op: &Value) -> BTreeSet<(u16, String)> {
    let mut out = BTreeSet::new();
    for (status, response) in op["responses"].as_object().unwrap() {
        let status: u16 = status.parse().unwrap();
        if status < 400 {
            out.insert((status, String::new()));
        } else {
            let codes = documented_codes(spec, response);
            assert!(!codes.is_empty(), "{status} documents no error code");
            out.extend(codes.into_iter().map(|c| (status, c)));
        }
    }
    out
}

struct Answer {
    status: u16,
    code: String,
    allow: Option<String>,
    published: usize,
}

async fn send<B>(req: Request<B>, fail_publish: bool, request_timeout: Duration) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send_to(req, fail_publish, request_timeout, true).await
}

/// As [`send`]; `providers` false switches the provider endpoints off.
async fn send_to<B>(
    req: Request<B>,
    fail_publish: bool,
    request_timeout: Duration,
    providers: bool,
) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut state, recorder) = fake_state(fail_publish);
    state.request_timeout = request_timeout;
    if !providers {
        state.providers = Default::default();
    }
    let resp = handle(Arc::new(state), req).await;
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    // Every answer is JSON but the Prometheus text of /metrics.
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Answer {
        status,
        code: v["error"].as_str().unwrap_or_default().to_owned(),
        allow,
        published: recorder.records.lock().unwrap().len(),
    }
}

fn request(
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

fn signed(path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let now = unix_now();
    let mut h = vec![("content-type", "application/json".to_owned())];
    if path == ADYEN {
        // Adyen signs each item inside the body.
    } else if path == ORDERS {
        h.push(("webhook-id", "msg_1".into()));
        h.push(("webhook-timestamp", now.to_string()));
        h.push((
            "webhook-signature",
            sign_standard(ORDERS_SECRET, "msg_1", now, body),
        ));
    } else {
        let sig = sign_stripe(STRIPE_SECRET, now, body);
        h.push(("stripe-signature", format!("t={now},v1={sig}")));
    }
    h
}

#[test]
fn the_document_is_openapi_3_1() {
    let spec = spec();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1."));
    assert!(spec["info"]["title"].is_string());
    // Every $ref resolves.
    fn walk(spec: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(spec, v);
                }
                m.values().for_each(|x| walk(spec, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(spec, x)),
            _ => {}
        }
    }
    walk(&spec, &spec);
}

#[tokio::test]
async fn routes_and_methods_match_the_router() {
    let spec = spec();
    let paths = spec["paths"].as_object().unwrap();
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        documented,
        BTreeSet::from([
            ORDERS,
            CHARGEBACKS,
            STRIPE,
            ADYEN,
            "/healthz",
            "/readyz",
            "/metrics",
            "/status"
        ])
    );
    for (path, item) in paths {
        let allowed: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| item.get(m.to_ascii_lowercase()).is_some())
            .collect();
        assert!(
            item.get("x-method-not-allowed").is_some(),
            "{path}: the 405 for other methods is not documented"
        );
        let not_allowed_codes = documented_codes(&spec, &item["x-method-not-allowed"]);
        for m in METHODS {
            let a = send(request(m, path, &[], vec![]), false, Duration::from_secs(5)).await;
            if allowed.contains(&m) {
                assert!(![404, 405].contains(&a.status), "{m} {path}: {}", a.status);
            } else {
                assert_eq!(a.status, 405, "{m} {path} is not documented but served");
                assert!(
                    not_allowed_codes.contains(&a.code),
                    "{m} {path}: {}",
                    a.code
                );
                assert_eq!(a.allow.as_deref(), Some(allowed.join(", ").as_str()));
            }
        }
    }
    // Anything else is the documented 404.
    let not_found = documented_codes(&spec, &spec["x-not-found"]);
    for path in ["/", "/webhooks", "/webhooks/payments/orders/", "/healthz/x"] {
        let a = send(
            request("GET", path, &[], vec![]),
            false,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(a.status, 404, "{path}");
        assert!(not_found.contains(&a.code));
    }
}

#[tokio::test]
async fn healthz_answers_as_documented() {
    let spec = spec();
    for m in ["get", "head"] {
        let want = documented_answers(&spec, &spec["paths"]["/healthz"][m]);
        let a = send(
            request(&m.to_ascii_uppercase(), "/healthz", &[], vec![]),
            false,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(BTreeSet::from([(a.status, a.code)]), want);
    }
}

#[tokio::test]
async fn readyz_and_metrics_answer_as_documented() {
    let spec = spec();
    for m in ["get", "head"] {
        for path in ["/readyz", "/metrics", "/status"] {
            let want = documented_answers(&spec, &spec["paths"][path][m]);
            let a = send(
                request(&m.to_ascii_uppercase(), path, &[], vec![]),
                false,
                Duration::from_secs(5),
            )
            .await;
            assert!(
                want.contains(&(a.status, a.code.clone())),
                "{m} {path}: {}",
                a.status
            );
        }
    }
    // The 503 of /readyz is only reachable with a dependency down: the real
    // one is exercised by the fault-injection suite; its code is checked here.
    let codes = documented_codes(&spec, &spec["components"]["responses"]["NotReady"]);
    assert_eq!(codes, BTreeSet::from(["not_ready".to_owned()]));
}

/// Drives one webhook endpoint into every answer it can give and compares
/// the set with the document, both ways.
async fn webhook_answers(path: &'static str, valid: Value) -> BTreeSet<(u16, String)> {
    let five = Duration::from_secs(5);
    let body = valid.to_string().into_bytes();
    // The answer that means "published": Adyen's is 200 `[accepted]`.
    let accepted = if path == ADYEN { 200 } else { 202 };
    let mut seen = BTreeMap::new();
    let mut note = |what: &str, a: Answer| {
        assert_eq!(a.published, usize::from(a.status == accepted), "{what}");
        seen.insert((a.status, a.code), what.to_owned());
    };

    note(
        "valid",
        send(
            request("POST", path, &signed(path, &body), body.clone()),
            false,
            five,
        )
        .await,
    );
    note(
        "broker down",
        send(
            request("POST", path, &signed(path, &body), body.clone()),
            true,
            five,
        )
        .await,
    );
    for (what, b) in [
        ("not JSON", b"{nope".to_vec()),
        ("missing field", br#"{"order_id":"o"}"#.to_vec()),
        ("invalid field", {
            let mut v = valid.clone();
            v["currency"] = json!("usd");
            v.to_string().into_bytes()
        }),
    ] {
        note(
            what,
            send(
                request("POST", path, &signed(path, &b), b.clone()),
                false,
                five,
            )
            .await,
        );
    }
    // Adyen's signature is in the body: drop it there.
    let unsigned = if path == ADYEN {
        let mut v = valid.clone();
        v["notificationItems"][0]["NotificationRequestItem"]["additionalData"] = json!({});
        v.to_string().into_bytes()
    } else {
        body.clone()
    };
    note(
        "unsigned",
        send(
            request(
                "POST",
                path,
                &[("content-type", "application/json".into())],
                unsigned,
            ),
            false,
            five,
        )
        .await,
    );
    note(
        "text/plain",
        send(
            request(
                "POST",
                path,
                &[("content-type", "text/plain".into())],
                body.clone(),
            ),
            false,
            five,
        )
        .await,
    );
    note(
        "too large",
        send(
            request("POST", path, &signed(path, &[]), vec![b' '; 5000]),
            false,
            five,
        )
        .await,
    );
    // A body that never arrives.
    let mut stalled = Request::builder()
        .method("POST")
        .uri(path)
        .body(StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >()))
        .unwrap();
    stalled
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    note(
        "slow body",
        send(stalled, false, Duration::from_millis(50)).await,
    );
    // A body that breaks off (e.g. bad chunked encoding).
    let mut broken = Request::builder()
        .method("POST")
        .uri(path)
        .body(StreamBody::new(futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"{"))),
            Err(std::io::Error::other("connection reset")),
        ])))
        .unwrap();
    broken
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    note("broken body", send(broken, false, five).await);
    if path == STRIPE || path == ADYEN {
        // A type payhook does not map: acknowledged, nothing published.
        let ignored = if path == STRIPE {
            let mut v = valid.clone();
            v["type"] = json!("customer.created");
            v
        } else {
            let mut v = valid.clone();
            v["notificationItems"][0]["NotificationRequestItem"]["eventCode"] =
                json!("REPORT_AVAILABLE");
            v["notificationItems"][0]["NotificationRequestItem"]["additionalData"]["hmacSignature"] = json!(
                adyen_signature(&v["notificationItems"][0]["NotificationRequestItem"])
            );
            v
        };
        let b = ignored.to_string().into_bytes();
        let a = send(
            request("POST", path, &signed(path, &b), b.clone()),
            false,
            five,
        )
        .await;
        assert_eq!((a.status, a.published), (200, 0), "ignored type");
        seen.insert((a.status, a.code), "ignored".into());
        // Without secrets the endpoint is off.
        let a = send_to(
            request("POST", path, &signed(path, &body), body.clone()),
            false,
            five,
            false,
        )
        .await;
        assert_eq!(a.published, 0);
        seen.insert((a.status, a.code), "not configured".into());
    }
    seen.into_keys().collect()
}

#[tokio::test]
async fn webhook_statuses_and_error_codes_match_the_document() {
    let spec = spec();
    for (path, example) in [
        (ORDERS, "succeeded"),
        (CHARGEBACKS, "opened"),
        (STRIPE, "payment_intent_succeeded"),
        (ADYEN, "authorisation"),
    ] {
        let op = &spec["paths"][path]["post"];
        let valid =
            op["requestBody"]["content"]["application/json"]["examples"][example]["value"].clone();
        let seen = webhook_answers(path, valid).await;
        let documented = documented_answers(&spec, op);
        assert_eq!(
            seen, documented,
            "{path}: server (left) vs openapi.yaml (right)"
        );
    }
}

#[tokio::test]
async fn request_examples_pass_the_real_parsers_and_are_accepted() {
    let spec = spec();
    for path in [ORDERS, CHARGEBACKS] {
        let examples =
            spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .unwrap();
        assert!(!examples.is_empty());
        for (name, ex) in examples {
            let body = ex["value"].to_string().into_bytes();
            let v = parse_json_body(&body).unwrap();
            if path == ORDERS {
                PaymentWebhook::from_json(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            } else {
                ChargebackWebhook::from_json(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let a = send(
                request("POST", path, &signed(path, &body), body.clone()),
                false,
                Duration::from_secs(5),
            )
            .await;
            assert_eq!((a.status, a.published), (202, 1), "{path} example {name}");
        }
    }
    // The providers' examples are accepted and published: one event each.
    for (path, status) in [(STRIPE, 202), (ADYEN, 200)] {
        let examples =
            spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .unwrap();
        for (name, ex) in examples {
            let body = ex["value"].to_string().into_bytes();
            let a = send(
                request("POST", path, &signed(path, &body), body.clone()),
                false,
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(
                (a.status, a.published),
                (status, 1),
                "{path} example {name}"
            );
        }
    }
}

/// Adyen's HMAC of one item with [`ADYEN_DOC_KEY`], from its documented
/// definition.
fn adyen_signature(item: &Value) -> String {
    use base64::Engine;
    use hmac::Mac;
    let t = |v: Option<&Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let s = [
        t(item.get("pspReference")),
        t(item.get("originalReference")),
        t(item.get("merchantAccountCode")),
        t(item.get("merchantReference")),
        t(item.pointer("/amount/value")),
        t(item.pointer("/amount/currency")),
        t(item.get("eventCode")),
        t(item.get("success")),
    ]
    .join(":");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&hex::decode(ADYEN_DOC_KEY).unwrap()).unwrap();
    mac.update(s.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn error_examples_use_their_documented_codes() {
    let spec = spec();
    for (name, r) in spec["components"]["responses"].as_object().unwrap() {
        let codes = documented_codes(&spec, r);
        let example = &r["content"]["application/json"]["example"];
        if codes.is_empty() {
            continue;
        }
        let code = example["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no example"));
        assert!(
            codes.contains(code),
            "{name}: example code {code} not in {codes:?}"
        );
        assert!(example["detail"].is_string(), "{name}");
    }
}

/// Stops compiling when `ApiError` gains a variant: drive the new answer in
/// `webhook_answers` (or the route test) and document it in openapi.yaml.
#[allow(dead_code)]
fn every_api_error_is_driven_above(e: &payhook::http::error::ApiError) {
    use payhook::http::error::ApiError::*;
    match e {
        Invalid(_)
        | Unauthorized(_)
        | RequestTimeout(_)
        | PayloadTooLarge { .. }
        | UnsupportedMediaType
        | NotFound
        | MethodNotAllowed { .. }
        | BadBody(_)
        | Unavailable { .. } => {}
    }
}
