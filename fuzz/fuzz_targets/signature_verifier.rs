//! Any headers and body through both signature schemes. The verifier must
//! never panic, and must never accept: without the secret, no input the
//! fuzzer makes up can carry a valid HMAC, so an `Ok` is a fail-open bug.
#![no_main]

use std::time::Duration;

use hyper::{HeaderMap, header::HeaderValue};
use libfuzzer_sys::fuzz_target;
use payhook::providers::signature::{Scheme, SigningKey, Verifier};

const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STRIPE_SECRET: &str = "whsec_stripe_test_secret_0123456789";

/// Splits the input at `\n`: four header values, then the body.
fn split(data: &[u8]) -> ([&[u8]; 4], &[u8]) {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut h = [&b""[..]; 4];
    for slot in &mut h {
        *slot = parts.next().unwrap_or_default();
    }
    (h, parts.next().unwrap_or_default())
}

fuzz_target!(|data: &[u8]| {
    let ([id, ts, sig, stripe], body) = split(data);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
        ("stripe-signature", stripe),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name, v);
        }
    }
    // "now" taken from the input, so timestamps inside the tolerance are
    // reachable and the HMAC comparison is exercised.
    let now = std::str::from_utf8(ts)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(1_764_151_200);
    for (scheme, secret) in [
        (Scheme::Standard, STANDARD_SECRET),
        (Scheme::Stripe, STRIPE_SECRET),
    ] {
        let key = SigningKey::parse(scheme, secret).unwrap();
        let v = Verifier::new(scheme, vec![key], Duration::from_secs(300)).unwrap();
        assert!(
            v.verify(&headers, body, now).is_err(),
            "accepted a signature made without the secret"
        );
    }
    // Secret parsing takes any text without panicking.
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = SigningKey::parse_list(Scheme::Standard, s);
        let _ = SigningKey::parse_list(Scheme::Stripe, s);
    }
});
