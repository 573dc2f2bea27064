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
    domain::{disputes::ChargebackWebhook, orders::PaymentWebhook, types::parse_json_body},
    http::routes::handle,
};
use serde_json::{Value, json};

use crate::helpers::{
    ORDERS_SECRET, STRIPE_SECRET, fake_state, sign_standard, sign_stripe, unix_now,
};

const ORDERS: &str = "/webhooks/payments/orders";
const CHARGEBACKS: &str = "/webhooks/payments/chargebacks";
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
    let (mut state, recorder) = fake_state(fail_publish);
    state.request_timeout = request_timeout;
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
    if path == ORDERS {
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
    let mut seen = BTreeMap::new();
    let mut note = |what: &str, a: Answer| {
        assert_eq!(a.published, usize::from(a.status == 202), "{what}");
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
    note(
        "unsigned",
        send(
            request(
                "POST",
                path,
                &[("content-type", "application/json".into())],
                body.clone(),
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
    seen.into_keys().collect()
}

#[tokio::test]
async fn webhook_statuses_and_error_codes_match_the_document() {
    let spec = spec();
    for (path, example) in [(ORDERS, "succeeded"), (CHARGEBACKS, "opened")] {
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
