//! Adyen: `POST /webhooks/adyen`, standard webhooks: a batch of
//! `NotificationRequestItem`s per request.
//!
//! - **Verify**: every item on its own, with Adyen's HMAC: HMAC-SHA256 keyed
//!   with the hex-decoded key, over the item's `pspReference`,
//!   `originalReference`, `merchantAccountCode`, `merchantReference`,
//!   `amount.value`, `amount.currency`, `eventCode` and `success`, joined by
//!   `:` (a missing `originalReference` is empty), compared with the base64
//!   `additionalData.hmacSignature`. Several keys may be active
//!   (`ADYEN_HMAC_KEYS`, for rotation): an item passes if any matches. **One
//!   item failing refuses the whole batch** (401) and nothing is published:
//!   Adyen resends the batch, and a half-accepted batch would be acknowledged
//!   for items that were never taken.
//! - **Bound**: at most [`MAX_BATCH_ITEMS`] items per request, and no item
//!   twice (same `pspReference`, `eventCode` and `success`): the batch
//!   wrapper is not signed, so a repeated signed item is refused (400)
//!   rather than taken for several events.
//! - **Split**: one event per item. Its raw bytes are the item's
//!   `NotificationRequestItem` object exactly as it appears in the signed
//!   body. An item carries its own signature, so each stored item can be
//!   verified again on its own; the batch wrapper (`live`,
//!   `notificationItems`) adds nothing signed and is not kept.
//! - **Map** (`provider_event_id` = `pspReference:eventCode:success`, since
//!   one payment has several events; `order_id` = `merchantReference`;
//!   `occurred_at` = `eventDate`; `payment_id` = the payment's
//!   `pspReference`: an AUTHORISATION's own, a modification's
//!   `originalReference`):
//!
//! | eventCode | success | stream | what it does to its payment |
//! |---|---|---|---|
//! | `AUTHORISATION` | `true` / `false` | orders | `succeeded` / `failed`, with the payment's amount and currency |
//! | `CANCELLATION` | `true` | orders | `failed` |
//! | `REFUND`, `CANCEL_OR_REFUND` | `true` | orders | a refund of the item's amount (key: its `pspReference`); the payment is `refunded` once its refunds reach its amount |
//! | `REQUEST_FOR_INFORMATION`, `NOTIFICATION_OF_CHARGEBACK`, `CHARGEBACK` | any | disputes | `opened` |
//! | `CHARGEBACK_REVERSED`, `PREARBITRATION_WON` | any | disputes | `won` |
//! | `SECOND_CHARGEBACK`, `PREARBITRATION_LOST` | any | disputes | `lost` |
//!
//!   `eventDate` is not signed either, and it decides the event order: a
//!   date after the moment of acceptance is taken as that moment.
//!   `CANCEL_OR_REFUND` is read as a refund whatever
//!   `additionalData.modification.action` says: that field is not covered
//!   by the HMAC, and either way the shopper's money is back.
//!   Payment items take `user_id` from `additionalData.<ADYEN_USER_ID_KEY>`
//!   (default `shopperReference`); without it the payment is applied with
//!   the user unknown. Without `merchantReference` the item is accepted and
//!   dead-lettered with the reason, as with Stripe.
//!
//!   **Scope**: an item whose `merchantAccountCode` is not listed in
//!   `ADYEN_MERCHANT_ACCOUNTS` (required with `ADYEN_HMAC_KEYS`: one HMAC
//!   key can sign a whole company account's webhooks) is acknowledged, not
//!   applied, counted in `payhook_provider_events_out_of_scope_total`, and
//!   dead-lettered with the reason.
//!   Every other eventCode, and a modification with `success` `false`, is
//!   acknowledged and counted in `payhook_provider_events_ignored_total`.
//! - **Answer**: `200 [accepted]`, once every item is acknowledged by the
//!   broker.

use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json, value::RawValue};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{
    Accepted, Intake, Mapped, MappedItem, Mapping, Provider, Refusal, Stream, dispute, payment,
    rfc3339, signature::SignatureError,
};
pub use crate::config::keys::{HmacKey, HmacKeyError};
use crate::domain::{ValidationError, json::parse_json_body, types::OccurredAt};

/// Most items one request may carry. Adyen sends one per request today (and
/// at most a few); a larger batch is refused before anything is published.
pub const MAX_BATCH_ITEMS: usize = 100;

/// Adyen's HMAC-SHA256 of a signing string.
fn sign(key: &HmacKey, signing_string: &str) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes a key of any length");
    mac.update(signing_string.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The Adyen endpoint's settings.
#[derive(Clone, Debug)]
pub struct Adyen {
    /// Verified with its active keys, or unsigned (chosen explicitly).
    pub intake: Intake<Vec<HmacKey>>,
    pub mapping: AdyenMapping,
}

/// How Adyen items map onto payhook's events: the same at the edge and in
/// the consumer, which maps the stored item again ([`super::Mappers`]).
#[derive(Clone, Debug)]
pub struct AdyenMapping {
    /// The `additionalData` key that holds the user id.
    pub user_id_key: String,
    /// Merchant accounts whose items may move orders
    /// (`ADYEN_MERCHANT_ACCOUNTS`); empty (unsigned intake only): any.
    pub merchant_accounts: Vec<String>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(rename = "notificationItems", borrow)]
    items: Vec<Wrapped<'a>>,
}

#[derive(Deserialize)]
struct Wrapped<'a> {
    #[serde(rename = "NotificationRequestItem", borrow)]
    item: &'a RawValue,
}

/// A field as the text Adyen signs: strings as they are, numbers and
/// booleans in their JSON form, absent or null as empty.
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The string Adyen signs for an item.
pub fn signing_string(item: &Value) -> String {
    let f = |k: &str| text(item.get(k));
    [
        f("pspReference"),
        f("originalReference"),
        f("merchantAccountCode"),
        f("merchantReference"),
        text(item.pointer("/amount/value")),
        text(item.pointer("/amount/currency")),
        f("eventCode"),
        f("success"),
    ]
    .join(":")
}

const SIG: &str = "additionalData.hmacSignature";

/// Checks one item against the active keys.
pub fn verify_item(keys: &[HmacKey], item: &Value) -> Result<(), SignatureError> {
    let b64 = item
        .pointer("/additionalData/hmacSignature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::Missing(SIG))?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|t| t.len() == 32)
        .ok_or(SignatureError::Malformed {
            header: SIG,
            why: "not a base64 HMAC-SHA256",
        })?;
    let s = signing_string(item);
    if keys
        .iter()
        .any(|k| bool::from(sign(k, &s).as_slice().ct_eq(&tag)))
    {
        Ok(())
    } else {
        Err(SignatureError::NoMatch { signatures: 1 })
    }
}

fn is_true(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if s == "true") || v == Some(&Value::Bool(true))
}

/// What a payment item does to its payment.
#[derive(Clone, Copy)]
enum Kind {
    /// The payment's own outcome, with its amount.
    Authorisation(&'static str),
    /// The authorisation was cancelled before capture.
    Cancellation,
    /// Money back: the item's amount, keyed by its `pspReference`.
    Refund,
}

/// What an item means: a payment status, a dispute status, or nothing.
enum Meaning {
    Payment(Kind),
    Dispute(&'static str),
    Nothing,
}

fn meaning(item: &Value, code: &str) -> Meaning {
    let success = is_true(item.get("success"));
    match code {
        "AUTHORISATION" if success => Meaning::Payment(Kind::Authorisation("succeeded")),
        "AUTHORISATION" => Meaning::Payment(Kind::Authorisation("failed")),
        "CANCELLATION" if success => Meaning::Payment(Kind::Cancellation),
        // Whether a CANCEL_OR_REFUND cancelled or refunded is told only by
        // `additionalData.modification.action`, which the HMAC does not
        // cover: either way the shopper's money is back, so it is read as
        // a refund of its (signed) amount.
        "REFUND" | "CANCEL_OR_REFUND" if success => Meaning::Payment(Kind::Refund),
        "REQUEST_FOR_INFORMATION" | "NOTIFICATION_OF_CHARGEBACK" | "CHARGEBACK" => {
            Meaning::Dispute("opened")
        }
        "CHARGEBACK_REVERSED" | "PREARBITRATION_WON" => Meaning::Dispute("won"),
        "SECOND_CHARGEBACK" | "PREARBITRATION_LOST" => Meaning::Dispute("lost"),
        _ => Meaning::Nothing,
    }
}

impl AdyenMapping {
    /// Maps one notification item (already verified by the endpoint) as
    /// if accepted at `now` (Unix seconds).
    pub fn map_item(&self, item: &Value, now: i64) -> Mapped {
        let code = item
            .get("eventCode")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self.map(item, code, meaning(item, code), now) {
            Some((stream, key, mapping)) => {
                // Scope last: another merchant account's item is
                // acknowledged, never applied.
                let psp = text(item.get("pspReference"));
                let (mapping, out_of_scope) = match self.out_of_scope(item, code, &psp) {
                    Some(reason) => (Mapping::Unmappable(reason), Some("merchant_account")),
                    None => (mapping, None),
                };
                Mapped::Item(MappedItem {
                    stream,
                    key,
                    mapping,
                    out_of_scope,
                })
            }
            None => Mapped::Ignored(if code.is_empty() {
                "other".into()
            } else if matches!(code, "CANCELLATION" | "REFUND" | "CANCEL_OR_REFUND") {
                format!("{code}:false")
            } else {
                code.to_owned()
            }),
        }
    }

    /// Why `item` is outside what this endpoint applies: a merchant account
    /// `ADYEN_MERCHANT_ACCOUNTS` does not list. (The list is empty only with
    /// unsigned intake, where every account is taken.)
    fn out_of_scope(&self, item: &Value, code: &str, psp: &str) -> Option<String> {
        if self.merchant_accounts.is_empty() {
            return None;
        }
        let account = item.get("merchantAccountCode").and_then(Value::as_str);
        match account {
            Some(a) if self.merchant_accounts.iter().any(|m| m == a) => None,
            _ => Some(format!(
                "Adyen {code} {psp} is for merchant account {:?}, which ADYEN_MERCHANT_ACCOUNTS \
                 does not list ({}): not applied",
                crate::logging::excerpt(account.unwrap_or(""), 64),
                self.merchant_accounts.join(", ")
            )),
        }
    }

    fn map(
        &self,
        item: &Value,
        code: &str,
        meaning: Meaning,
        now: i64,
    ) -> Option<(Stream, String, Mapping)> {
        let psp = text(item.get("pspReference"));
        let original = text(item.get("originalReference"));
        let success = text(item.get("success"));
        let order = item
            .get("merchantReference")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let key = order.unwrap_or(&psp).to_owned();
        let mut f = Map::new();
        f.insert(
            "provider_event_id".into(),
            format!("{psp}:{code}:{success}").into(),
        );
        let amount = item
            .pointer("/amount/value")
            .cloned()
            .unwrap_or(Value::Null);
        f.insert(
            "currency".into(),
            item.pointer("/amount/currency")
                .cloned()
                .unwrap_or(Value::Null),
        );
        // `eventDate` is not signed, and it decides the event order: a
        // date after the moment the item was accepted is taken as that
        // moment, so no item can order itself ahead of what comes later.
        // (An unreadable one is left for the consumer to refuse.)
        let date = item.get("eventDate").cloned().unwrap_or(Value::Null);
        let accepted = rfc3339(now).and_then(|t| OccurredAt::parse(&t).ok());
        let late = date
            .as_str()
            .and_then(|d| OccurredAt::parse(d).ok())
            .zip(accepted)
            .is_some_and(|(d, a)| d > a);
        f.insert(
            "occurred_at".into(),
            match (late, rfc3339(now)) {
                (true, Some(a)) => a.into(),
                _ => date,
            },
        );
        let object_ids: Vec<String> = [psp.clone(), original.clone()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        f.insert("object_ids".into(), json!(object_ids));
        let unmappable = |why: String| Mapping::Unmappable(format!("Adyen {code} {psp}: {why}"));
        let stream = match meaning {
            Meaning::Nothing => return None,
            Meaning::Payment(_) => Stream::Orders,
            Meaning::Dispute(_) => Stream::Disputes,
        };
        let Some(order) = order else {
            return Some((stream, key, unmappable("no merchantReference".into())));
        };
        f.insert("order_id".into(), order.into());
        let mapping = match meaning {
            Meaning::Nothing => return None,
            Meaning::Payment(kind) => {
                // A modification names the payment it modifies in
                // `originalReference`; the payment's own items, in
                // `pspReference`.
                let payment_id = match kind {
                    Kind::Authorisation(_) => psp.clone(),
                    _ if original.is_empty() => psp.clone(),
                    _ => original.clone(),
                };
                f.insert("payment_id".into(), payment_id.into());
                match kind {
                    Kind::Authorisation(status) => {
                        f.insert("status".into(), status.into());
                        f.insert("amount".into(), amount);
                    }
                    // A cancellation's amount is the payment's, but it
                    // moves nothing: it is not kept as a fact of the order.
                    Kind::Cancellation => {
                        f.insert("status".into(), "failed".into());
                    }
                    // A refund is money back on a captured payment: the
                    // payment is `refunded` once its refunds reach its
                    // amount (`domain::orders`).
                    Kind::Refund => {
                        f.insert("status".into(), "succeeded".into());
                        f.insert("refund_key".into(), psp.clone().into());
                        f.insert("refund_amount".into(), amount);
                    }
                }
                if let Some(u) = item
                    .get("additionalData")
                    .and_then(|a| a.get(&self.user_id_key))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    f.insert("user_id".into(), u.into());
                }
                payment(Value::Object(f))
            }
            Meaning::Dispute(status) => {
                f.insert("status".into(), status.into());
                f.insert("amount".into(), amount);
                if let Some(r) = item
                    .pointer("/additionalData/chargebackReasonCode")
                    .and_then(Value::as_str)
                {
                    f.insert("reason".into(), r.into());
                }
                dispute(Value::Object(f))
            }
        };
        Some((stream, key, mapping))
    }
}

fn invalid(detail: &str) -> ValidationError {
    ValidationError::invalid_json(format!("not an Adyen notification: {detail}"))
}

impl Provider for Adyen {
    fn name(&self) -> &'static str {
        "adyen"
    }

    fn accept(&self, _headers: &HeaderMap, body: &[u8], now: i64) -> Result<Accepted, Refusal> {
        // The signature is inside each item, so the body is parsed first
        // (depth-checked, as every body), then every item is verified
        // before any is mapped.
        parse_json_body(body)?;
        let batch: Batch<'_> = serde_json::from_slice(body).map_err(|e| {
            invalid(&format!(
                "no notificationItems[].NotificationRequestItem ({e})"
            ))
        })?;
        if batch.items.is_empty() {
            return Err(invalid("notificationItems is empty").into());
        }
        if batch.items.len() > MAX_BATCH_ITEMS {
            return Err(invalid(&format!(
                "{} items in one request; at most {MAX_BATCH_ITEMS}",
                batch.items.len()
            ))
            .into());
        }
        let mut parsed = Vec::with_capacity(batch.items.len());
        for (i, w) in batch.items.iter().enumerate() {
            let item: Value = serde_json::from_str(w.item.get())
                .map_err(|e| invalid(&format!("item {i}: {e}")))?;
            if !item.is_object() {
                return Err(invalid(&format!("item {i} is not an object")).into());
            }
            if let Some(keys) = self.intake.keys() {
                verify_item(keys, &item).map_err(Refusal::Unauthorized)?;
            }
            parsed.push(item);
        }
        // The wrapper is not signed: one signed item repeated in one
        // request is refused, not counted twice.
        let mut seen = std::collections::HashMap::with_capacity(parsed.len());
        for (i, item) in parsed.iter().enumerate() {
            let id = ["pspReference", "eventCode", "success"].map(|k| text(item.get(k)));
            if let Some(first) = seen.insert(id, i) {
                return Err(invalid(&format!(
                    "item {i} repeats item {first} (same pspReference, eventCode and success)"
                ))
                .into());
            }
        }
        let mut out = Accepted::default();
        for (w, item) in batch.items.iter().zip(&parsed) {
            match self.mapping.map_item(item, now) {
                Mapped::Item(m) => out.items.push(m.item(w.item.to_owned())),
                Mapped::Ignored(t) => out.ignored.push(t),
            }
        }
        Ok(out)
    }

    fn answer(&self, _event_ids: &[Uuid]) -> (StatusCode, &'static str, Vec<u8>) {
        (StatusCode::OK, "text/plain", b"[accepted]".to_vec())
    }
}

#[cfg(test)]
mod tests {
    //! Items written for payhook from the `NotificationRequestItem` fields
    //! Adyen documents. The first test is Adyen's own published HMAC
    //! example (key, item and signature from Adyen's "Verify HMAC
    //! signatures" documentation); the other signatures are computed here
    //! with the HMAC primitives, and were checked once outside this code with
    //! Python's `hmac`.
    use super::*;

    const DOC_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
    const KEY_B: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";

    fn doc_item() -> Value {
        json!({
            "additionalData": {"hmacSignature": "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="},
            "amount": {"value": 1130, "currency": "EUR"},
            "pspReference": "7914073381342284",
            "eventCode": "AUTHORISATION",
            "eventDate": "2019-05-06T17:15:34.121+02:00",
            "merchantAccountCode": "TestMerchant",
            "merchantReference": "TestPayment-1407325143704",
            "paymentMethod": "visa",
            "success": "true"
        })
    }

    fn keys(list: &[&str]) -> Vec<HmacKey> {
        list.iter().map(|k| HmacKey::parse(k).unwrap()).collect()
    }

    fn sign_item(key: &str, item: &mut Value) {
        let k = HmacKey::parse(key).unwrap();
        let tag = super::sign(&k, &signing_string(item));
        item["additionalData"]["hmacSignature"] =
            base64::engine::general_purpose::STANDARD.encode(tag).into();
    }

    fn adyen(verify: &[&str]) -> Adyen {
        Adyen {
            intake: if verify.is_empty() {
                Intake::Unsigned
            } else {
                Intake::Verify(keys(verify))
            },
            mapping: AdyenMapping {
                user_id_key: "shopperReference".into(),
                merchant_accounts: vec!["Shop".into()],
            },
        }
    }

    fn batch(items: &[Value]) -> Vec<u8> {
        let wrapped: Vec<Value> = items
            .iter()
            .map(|i| json!({ "NotificationRequestItem": i }))
            .collect();
        json!({"live": "false", "notificationItems": wrapped})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn adyen_published_example_verifies() {
        let item = doc_item();
        assert_eq!(
            signing_string(&item),
            "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
        );
        assert_eq!(verify_item(&keys(&[DOC_KEY]), &item), Ok(()));
        // Key rotation: the right key anywhere in the list.
        assert_eq!(verify_item(&keys(&[KEY_B, DOC_KEY]), &item), Ok(()));
        assert_eq!(
            verify_item(&keys(&[KEY_B]), &item),
            Err(SignatureError::NoMatch { signatures: 1 })
        );
        // Every signed field is covered.
        for (ptr, v) in [
            ("/amount/value", json!(1131)),
            ("/amount/currency", json!("USD")),
            ("/pspReference", json!("7914073381342285")),
            ("/merchantReference", json!("other")),
            ("/merchantAccountCode", json!("Other")),
            ("/eventCode", json!("REFUND")),
            ("/success", json!("false")),
        ] {
            let mut i = item.clone();
            *i.pointer_mut(ptr).unwrap() = v;
            assert!(verify_item(&keys(&[DOC_KEY]), &i).is_err(), "{ptr}");
        }
        let mut i = item.clone();
        i["originalReference"] = json!("123");
        assert!(verify_item(&keys(&[DOC_KEY]), &i).is_err());
        let mut i = item;
        i["additionalData"] = json!({});
        assert_eq!(
            verify_item(&keys(&[DOC_KEY]), &i),
            Err(SignatureError::Missing(SIG))
        );
    }

    #[test]
    fn python_computed_vector_agrees() {
        // python3: base64.b64encode(hmac.new(bytes.fromhex(KEY_B),
        //   b"8815000000000001:8815000000000000:Shop:ord_1:500:USD:REFUND:true",
        //   hashlib.sha256).digest())
        let item = json!({"pspReference": "8815000000000001",
            "originalReference": "8815000000000000", "merchantAccountCode": "Shop",
            "merchantReference": "ord_1", "amount": {"value": 500, "currency": "USD"},
            "eventCode": "REFUND", "success": "true",
            "additionalData": {"hmacSignature": PYTHON_SIG}});
        assert_eq!(verify_item(&keys(&[KEY_B]), &item), Ok(()));
    }

    const PYTHON_SIG: &str = "citHQBY5hMh9jYVMRDFBfRqjFLvt+xRjHf6G5O79z+M=";

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert!(HmacKey::parse(DOC_KEY).is_ok());
        assert_eq!(HmacKey::parse(""), Err(HmacKeyError::Empty));
        assert_eq!(HmacKey::parse("xyz"), Err(HmacKeyError::NotHex));
        assert_eq!(HmacKey::parse("0011"), Err(HmacKeyError::TooShort));
        assert_eq!(HmacKey::parse_list(" ").unwrap().len(), 0);
        assert_eq!(
            HmacKey::parse_list(&format!("{DOC_KEY},{KEY_B}"))
                .unwrap()
                .len(),
            2
        );
        assert!(HmacKey::parse_list(&format!("{DOC_KEY},")).is_err());
        let shown = format!("{:?}", HmacKey::parse(DOC_KEY).unwrap());
        assert!(!shown.to_lowercase().contains("44782"), "{shown}");
    }

    fn item(code: &str, success: &str, psp: &str) -> Value {
        let mut i = json!({"pspReference": psp, "merchantAccountCode": "Shop",
            "merchantReference": "ord_1", "amount": {"value": 1999, "currency": "EUR"},
            "eventCode": code, "success": success, "eventDate": "2026-11-26T10:00:00+01:00",
            "additionalData": {"shopperReference": "u_1", "chargebackReasonCode": "10.4"}});
        sign_item(KEY_B, &mut i);
        i
    }

    #[test]
    fn every_mapped_code_maps_and_others_are_ignored() {
        let a = adyen(&[KEY_B]);
        let cases = [
            ("AUTHORISATION", "true", Stream::Orders, "succeeded"),
            ("AUTHORISATION", "false", Stream::Orders, "failed"),
            ("CANCELLATION", "true", Stream::Orders, "failed"),
            ("REFUND", "true", Stream::Orders, "succeeded"),
            ("CANCEL_OR_REFUND", "true", Stream::Orders, "succeeded"),
            (
                "REQUEST_FOR_INFORMATION",
                "true",
                Stream::Disputes,
                "opened",
            ),
            (
                "NOTIFICATION_OF_CHARGEBACK",
                "true",
                Stream::Disputes,
                "opened",
            ),
            ("CHARGEBACK", "true", Stream::Disputes, "opened"),
            ("CHARGEBACK_REVERSED", "true", Stream::Disputes, "won"),
            ("PREARBITRATION_WON", "true", Stream::Disputes, "won"),
            ("SECOND_CHARGEBACK", "true", Stream::Disputes, "lost"),
            ("PREARBITRATION_LOST", "true", Stream::Disputes, "lost"),
        ];
        let items: Vec<Value> = cases
            .iter()
            .map(|(c, s, _, _)| item(c, s, "8815000000000001"))
            .collect();
        let body = batch(&items);
        let out = a.accept(&HeaderMap::new(), &body, 0).unwrap();
        assert!(out.ignored.is_empty());
        assert_eq!(out.items.len(), cases.len());
        for (got, (code, success, stream, status)) in out.items.iter().zip(cases) {
            assert_eq!(got.stream, stream, "{code}");
            assert_eq!(got.key, "ord_1");
            let Mapping::Mapped(m) = &got.mapping else {
                panic!("{code}: {:?}", got.mapping)
            };
            assert_eq!(m["status"], status, "{code}");
            assert_eq!(
                m["provider_event_id"],
                format!("8815000000000001:{code}:{success}")
            );
            assert_eq!(m["order_id"], "ord_1");
            assert_eq!(m["currency"], "EUR");
            // The raw item is the item's bytes within the body.
            let raw = got.raw.get();
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.contains(raw), "{raw}");
        }
        let Mapping::Mapped(m) = &out.items[6].mapping else {
            unreachable!()
        };
        assert_eq!(m["reason"], "10.4");

        // What each payment item carries: the authorisation its amount, a
        // refund its own amount as a refund of the original payment, a
        // cancellation no amount.
        let with_original = |code: &str| {
            let mut i = item(code, "true", "8815000000000009");
            i["originalReference"] = json!("8815000000000001");
            i["amount"]["value"] = json!(500);
            sign_item(KEY_B, &mut i);
            i
        };
        let body = batch(&[
            item("AUTHORISATION", "true", "8815000000000001"),
            with_original("REFUND"),
            with_original("CANCELLATION"),
        ]);
        let out = a.accept(&HeaderMap::new(), &body, 0).unwrap();
        let m: Vec<&Value> = out
            .items
            .iter()
            .map(|i| match &i.mapping {
                Mapping::Mapped(m) => m,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(m[0]["payment_id"], "8815000000000001");
        assert_eq!(m[0]["amount"], 1999);
        assert!(m[0].get("refund_key").is_none());
        assert_eq!(m[1]["payment_id"], "8815000000000001");
        assert!(m[1].get("amount").is_none(), "{}", m[1]);
        assert_eq!(m[1]["refund_key"], "8815000000000009");
        assert_eq!(m[1]["refund_amount"], 500);
        assert_eq!(m[2]["payment_id"], "8815000000000001");
        assert_eq!(m[2]["status"], "failed");
        assert!(m[2].get("amount").is_none());

        // CANCEL_OR_REFUND is a refund whatever the unsigned
        // modification.action says.
        let mut cancel = item("CANCEL_OR_REFUND", "true", "1");
        cancel["additionalData"]["modification.action"] = json!("cancel");
        sign_item(KEY_B, &mut cancel);
        let body = batch(&[
            cancel,
            item("CAPTURE", "true", "2"),
            item("REFUND", "false", "3"),
            item("REPORT_AVAILABLE", "true", "4"),
        ]);
        let out = a.accept(&HeaderMap::new(), &body, 0).unwrap();
        assert_eq!(out.items.len(), 1);
        let Mapping::Mapped(m) = &out.items[0].mapping else {
            unreachable!()
        };
        assert_eq!(m["status"], "succeeded");
        assert_eq!(m["refund_amount"], 1999);
        assert_eq!(
            out.ignored,
            vec!["CAPTURE", "REFUND:false", "REPORT_AVAILABLE"]
        );
    }

    #[test]
    fn one_bad_item_refuses_the_whole_batch() {
        let a = adyen(&[KEY_B]);
        let good = item("AUTHORISATION", "true", "1");
        let mut bad = item("AUTHORISATION", "true", "2");
        bad["amount"]["value"] = json!(1);
        let r = a.accept(&HeaderMap::new(), &batch(&[good.clone(), bad]), 0);
        assert!(matches!(r, Err(Refusal::Unauthorized(_))), "{r:?}");
        let mut unsigned = good.clone();
        unsigned["additionalData"] = json!({"shopperReference": "u_1"});
        let r = a.accept(&HeaderMap::new(), &batch(&[unsigned, good.clone()]), 0);
        assert!(matches!(r, Err(Refusal::Unauthorized(_))));
        for bad in [
            json!({"notificationItems": []}).to_string(),
            json!({"notificationItems": [{"Other": {}}]}).to_string(),
            json!({"notificationItems": [{"NotificationRequestItem": 5}]}).to_string(),
            "[]".to_owned(),
        ] {
            let r = a.accept(&HeaderMap::new(), bad.as_bytes(), 0);
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn a_payment_without_user_is_applied_and_without_order_unmappable() {
        let a = adyen(&[]);
        let mut no_user = item("AUTHORISATION", "true", "1");
        no_user["additionalData"] = json!({});
        let mut no_order = item("REFUND", "true", "2");
        no_order
            .as_object_mut()
            .unwrap()
            .remove("merchantReference");
        let out = a
            .accept(&HeaderMap::new(), &batch(&[no_user, no_order]), 0)
            .unwrap();
        let Mapping::Mapped(m) = &out.items[0].mapping else {
            panic!("{:?}", out.items[0].mapping)
        };
        assert!(m.get("user_id").is_none());
        assert_eq!(m["order_id"], "ord_1");
        assert!(
            matches!(&out.items[1].mapping, Mapping::Unmappable(r) if r.contains("merchantReference"))
        );
        assert_eq!(out.items[1].key, "2");
    }

    #[test]
    fn an_unlisted_merchant_account_is_out_of_scope() {
        let a = adyen(&[KEY_B]);
        let mut other = item("AUTHORISATION", "true", "2");
        other["merchantAccountCode"] = json!("ShopUS");
        sign_item(KEY_B, &mut other);
        let mut none = item("CHARGEBACK", "true", "3");
        none.as_object_mut().unwrap().remove("merchantAccountCode");
        sign_item(KEY_B, &mut none);
        let out = a
            .accept(
                &HeaderMap::new(),
                &batch(&[item("AUTHORISATION", "true", "1"), other, none]),
                0,
            )
            .unwrap();
        assert!(matches!(out.items[0].mapping, Mapping::Mapped(_)));
        assert_eq!(out.items[0].out_of_scope, None);
        for i in &out.items[1..] {
            assert_eq!(i.out_of_scope, Some("merchant_account"));
            assert!(
                matches!(&i.mapping, Mapping::Unmappable(r) if r.contains("ADYEN_MERCHANT_ACCOUNTS")),
                "{:?}",
                i.mapping
            );
        }
        assert!(matches!(&out.items[1].mapping, Mapping::Unmappable(r) if r.contains("ShopUS")));
        // Listing it takes it.
        let mut both = adyen(&[KEY_B]);
        both.mapping.merchant_accounts.push("ShopUS".into());
        let mut other = item("AUTHORISATION", "true", "2");
        other["merchantAccountCode"] = json!("ShopUS");
        sign_item(KEY_B, &mut other);
        let out = both.accept(&HeaderMap::new(), &batch(&[other]), 0).unwrap();
        assert_eq!(out.items[0].out_of_scope, None);
    }

    #[test]
    fn a_date_after_acceptance_is_taken_as_the_moment_of_acceptance() {
        let a = adyen(&[KEY_B]);
        // 2026-11-26T09:00:00Z, the item's eventDate (10:00+01:00) exactly.
        let at = 1_795_683_600;
        let date = |now: i64| {
            let out = a
                .accept(
                    &HeaderMap::new(),
                    &batch(&[item("AUTHORISATION", "true", "1")]),
                    now,
                )
                .unwrap();
            match &out.items[0].mapping {
                Mapping::Mapped(m) => m["occurred_at"].as_str().unwrap().to_owned(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(date(at), "2026-11-26T10:00:00+01:00");
        assert_eq!(date(at + 3600), "2026-11-26T10:00:00+01:00");
        assert_eq!(date(at - 1), "2026-11-26T08:59:59Z");
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        // The raw item keeps what Adyen sent.
        let out = a
            .accept(
                &HeaderMap::new(),
                &batch(&[item("AUTHORISATION", "true", "1")]),
                0,
            )
            .unwrap();
        assert!(out.items[0].raw.get().contains("2026-11-26T10:00:00+01:00"));
    }

    #[test]
    fn a_repeated_item_or_an_oversized_batch_is_refused() {
        let a = adyen(&[KEY_B]);
        let one = item("AUTHORISATION", "true", "1");
        let r = a.accept(&HeaderMap::new(), &batch(&[one.clone(), one.clone()]), 0);
        assert!(
            matches!(&r, Err(Refusal::Invalid(e)) if e.detail.contains("item 1 repeats item 0")),
            "{r:?}"
        );
        // The same payment's other codes are other events.
        let r = a.accept(
            &HeaderMap::new(),
            &batch(&[
                one.clone(),
                item("AUTHORISATION", "false", "1"),
                item("REFUND", "true", "1"),
            ]),
            0,
        );
        assert_eq!(r.unwrap().items.len(), 3);
        let many: Vec<Value> = (0..=MAX_BATCH_ITEMS)
            .map(|n| item("AUTHORISATION", "true", &n.to_string()))
            .collect();
        let r = a.accept(&HeaderMap::new(), &batch(&many), 0);
        assert!(
            matches!(&r, Err(Refusal::Invalid(e)) if e.detail.contains("at most 100")),
            "{r:?}"
        );
        let r = a.accept(&HeaderMap::new(), &batch(&many[..MAX_BATCH_ITEMS]), 0);
        assert_eq!(r.unwrap().items.len(), MAX_BATCH_ITEMS);
    }
}
