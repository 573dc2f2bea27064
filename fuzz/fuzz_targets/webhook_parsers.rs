//! Any bytes through every parser a webhook meets: the HTTP body parser
//! (depth limit, JSON), both webhook validators, and the consumer's envelope
//! decoder. None may panic or recurse without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payhook::{
    domain::{
        disputes::ChargebackWebhook, json::parse_json_body, orders::PaymentWebhook,
        orders::SourcePosition,
    },
    kafka::envelope::Envelope,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_json_body(data) {
        let _ = PaymentWebhook::from_json(&v);
        let _ = ChargebackWebhook::from_json(&v);
    }
    if let Ok(envelope) = Envelope::decode(Some(data)) {
        let _ = envelope.into_event(SourcePosition {
            topic: "fuzz".into(),
            partition: 0,
            offset: 0,
        });
    }
});
