//! Micro benchmarks (criterion) of the CPU work on each webhook's path:
//! partitioner, envelope encode and decode, validation, signature
//! verification (both schemes), and signing and verifying a record (the
//! signed log).

use std::{hint::black_box, num::NonZeroU32, time::Duration};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use hyper::header::{HeaderMap, HeaderValue};
use sha2::Sha256;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use payhook::{
    config::keys::EnvelopeKey,
    domain::orders::{PaymentWebhook, SourcePosition},
    kafka::{
        envelope::{Envelope, EventType},
        partitioner::partition_for_key,
        signing::Signer,
    },
    providers::signature::{Scheme, SigningKey, Verifier},
};
use serde_json::value::RawValue;

const BODY: &str = r#"{"provider_event_id":"evt_8f14e45f_000012345","order_id":"ord_31415","user_id":"usr_012345","status":"succeeded","amount":12345,"currency":"EUR","occurred_at":"2026-11-26T03:25:45Z","livemode":false,"description":"Order ord_31415 at the web shop","payment_method":{"type":"card","brand":"visa","last4":"4242","exp_month":12,"exp_year":2029},"metadata":{"cart_id":"cart_000012345","channel":"web","attempt":1}}"#;

fn source() -> SourcePosition {
    SourcePosition {
        topic: "payments.orders".into(),
        partition: 3,
        offset: 42,
    }
}

fn benches(c: &mut Criterion) {
    let parts = NonZeroU32::new(8).expect("non-zero");
    c.bench_function("partitioner/order_id", |b| {
        b.iter(|| partition_for_key(black_box(b"ord_31415"), parts));
    });

    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Bytes(BODY.len() as u64));
    g.bench_function("validate", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(BODY)).expect("json");
            PaymentWebhook::from_json(&v).expect("valid")
        });
    });
    g.bench_function("envelope_encode", |b| {
        b.iter(|| {
            let raw = RawValue::from_string(black_box(BODY).to_owned()).expect("json");
            Envelope::new(EventType::OrderWebhook, "ord_31415", raw).to_record()
        });
    });
    let record = Envelope::new(
        EventType::OrderWebhook,
        "ord_31415",
        RawValue::from_string(BODY.to_owned()).expect("json"),
    )
    .to_record();
    let value = record.value.expect("value");
    g.bench_function("envelope_decode", |b| {
        b.iter(|| {
            Envelope::decode(Some(black_box(&value)))
                .and_then(|e| e.into_event(source()))
                .expect("decodes")
        });
    });

    // Signatures: one active secret, one v1 signature, fresh timestamp.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let key = b64().decode(&secret["whsec_".len()..]).expect("base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("msg_1.{now}.{BODY}").as_bytes());
    let sig = format!("v1,{}", b64().encode(mac.finalize().into_bytes()));
    let standard = Verifier::new(
        Scheme::Standard,
        vec![SigningKey::parse(Scheme::Standard, secret).expect("secret")],
        Duration::from_secs(300),
    )
    .expect("verifier");
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
    headers.insert(
        "webhook-timestamp",
        HeaderValue::from_str(&now.to_string()).expect("ts"),
    );
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(&sig).expect("sig"),
    );
    g.bench_function("verify_standard", |b| {
        b.iter(|| {
            standard
                .verify(black_box(&headers), black_box(BODY.as_bytes()), now)
                .expect("valid")
        });
    });

    let stripe_secret = "whsec_stripe_test_secret_0123456789";
    let mut mac = Hmac::<Sha256>::new_from_slice(stripe_secret.as_bytes()).expect("key");
    mac.update(format!("{now}.{BODY}").as_bytes());
    let hex_sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stripe = Verifier::new(
        Scheme::Stripe,
        vec![SigningKey::parse(Scheme::Stripe, stripe_secret).expect("secret")],
        Duration::from_secs(300),
    )
    .expect("verifier");
    let mut headers = HeaderMap::new();
    headers.insert(
        "stripe-signature",
        HeaderValue::from_str(&format!("t={now},v1={hex_sig}")).expect("header"),
    );
    g.bench_function("verify_stripe", |b| {
        b.iter(|| {
            stripe
                .verify(black_box(&headers), black_box(BODY.as_bytes()), now)
                .expect("valid")
        });
    });

    // The signed log (ENVELOPE_SIGNING_KEYS): the edge signs each record,
    // the consumer verifies it.
    let signer = Signer::new(vec![
        EnvelopeKey::parse("k1:0123456789abcdef0123456789abcdef-bench").expect("key"),
    ])
    .expect("a key");
    let unsigned = Envelope::new(
        EventType::OrderWebhook,
        "ord_31415",
        RawValue::from_string(BODY.to_owned()).expect("json"),
    )
    .to_record();
    g.bench_function("record_sign", |b| {
        b.iter(|| {
            let mut r = unsigned.clone();
            signer.sign(black_box(&mut r));
            r
        });
    });
    let mut signed = unsigned.clone();
    signer.sign(&mut signed);
    g.bench_function("record_verify", |b| {
        b.iter(|| signer.verify(black_box(&signed)).expect("valid"));
    });
    g.finish();
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

criterion_group!(micro, benches);
criterion_main!(micro);
