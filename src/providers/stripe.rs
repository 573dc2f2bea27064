//! Stripe: `POST /webhooks/stripe`, one endpoint for every event type.
//!
//! - **Verify**: `Stripe-Signature` ([`super::signature::Scheme::Stripe`]),
//!   with the secrets of `STRIPE_WEBHOOK_SECRETS` (several during a
//!   rotation).
//! - **Split**: one event object per request.
//! - **Map** (`provider_event_id` = the event's `id`, `occurred_at` = its
//!   `created`, amount and currency from `data.object`, currency
//!   upper-cased):
//!
//! | event type | stream | status |
//! |---|---|---|
//! | `payment_intent.created`, `.processing`, `.requires_action`, `.amount_capturable_updated` | orders | `pending` |
//! | `payment_intent.succeeded` | orders | `succeeded` |
//! | `payment_intent.payment_failed`, `.canceled` | orders | `failed` |
//! | `charge.refunded` with `refunded: true` (fully refunded) | orders | `refunded`, with the charge's refund |
//! | `charge.refunded` with `refunded: false` (partly refunded) | orders | `succeeded`, with the charge's refund |
//! | `charge.dispute.created`, `.updated`, `.closed`, `.funds_withdrawn`, `.funds_reinstated` | disputes | from the dispute's `status`: `won`/`lost` as such, `warning_closed` and `prevented` → `won`, every other → `opened` |
//!
//!   Payment events take `order_id` and `user_id` from the object's
//!   `metadata` (keys `STRIPE_ORDER_ID_KEY`, `STRIPE_USER_ID_KEY`). Without
//!   an order id the event is accepted and dead-lettered with the reason
//!   ([`Mapping::Unmappable`]): a 4xx would only make Stripe retry it for
//!   three days and then disable the endpoint for every event. Without a
//!   user id it is applied with the user unknown. The payment it moves
//!   (`payment_id`) is the payment intent (a charge's `payment_intent`, or
//!   the charge itself without one). A refund is the charge's refunded
//!   total (`amount_refunded`, key `charge:<id>`), counted at its largest.
//!
//!   **Scope**: an event of the other mode (`livemode` against
//!   `STRIPE_LIVEMODE`), or of a connected account (`account`) not listed in
//!   `STRIPE_ACCOUNTS` (unset: platform events only), is acknowledged, not
//!   applied, counted in `payhook_provider_events_out_of_scope_total`, and
//!   dead-lettered with the reason.
//!   `object_ids` are the payment intent and its charge, which is what a
//!   dispute names: disputes carry no order, and are resolved by the
//!   consumer from the payment events stored (see
//!   [`crate::consume::waiting`]).
//!
//!   Any other type is acknowledged and counted in
//!   `payhook_provider_events_ignored_total`.
//! - **Answer**: `202 {"event_id": "<uuid>"}` once the broker has it, or
//!   `200 {"ignored": "<type>"}`.

use hyper::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    Accepted, Intake, Mapped, MappedItem, Mapping, Provider, Refusal, Stream, dispute, payment,
    raw_of, rfc3339, signature::Verifier,
};
use crate::domain::{ValidationError, json::parse_json_body};

/// The Stripe endpoint's settings.
#[derive(Clone, Debug)]
pub struct Stripe {
    /// Verified with its secrets, or unsigned (chosen explicitly).
    pub intake: Intake<Verifier>,
    pub mapping: StripeMapping,
}

/// How Stripe events map onto payhook's: the same at the edge and in the
/// consumer, which maps the stored payload again ([`super::Mappers`]).
#[derive(Clone, Debug)]
pub struct StripeMapping {
    /// The `metadata` key that holds payhook's order id.
    pub order_id_key: String,
    /// The `metadata` key that holds the user id.
    pub user_id_key: String,
    /// Whether events must be live (`STRIPE_LIVEMODE=live`) or test ones.
    pub livemode: bool,
    /// Connected accounts whose events may move orders (`STRIPE_ACCOUNTS`);
    /// empty: platform events only.
    pub accounts: Vec<String>,
}

/// The payment status a payment event type means, if it is one.
fn payment_status(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "payment_intent.created"
        | "payment_intent.processing"
        | "payment_intent.requires_action"
        | "payment_intent.amount_capturable_updated" => "pending",
        "payment_intent.succeeded" => "succeeded",
        "payment_intent.payment_failed" | "payment_intent.canceled" => "failed",
        "charge.refunded" => "refunded",
        _ => return None,
    })
}

fn is_dispute(event_type: &str) -> bool {
    matches!(
        event_type,
        "charge.dispute.created"
            | "charge.dispute.updated"
            | "charge.dispute.closed"
            | "charge.dispute.funds_withdrawn"
            | "charge.dispute.funds_reinstated"
    )
}

/// A Stripe dispute status as payhook's.
fn dispute_status(s: &str) -> &'static str {
    match s {
        "won" | "warning_closed" | "prevented" => "won",
        "lost" => "lost",
        _ => "opened",
    }
}

fn invalid(detail: &str) -> ValidationError {
    ValidationError::invalid_json(format!("not a Stripe event: {detail}"))
}

/// A string field, or the `id` of an expanded object in its place.
fn id_of(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("id")?.as_str(),
        _ => None,
    }
}

/// What every mapped event shares.
struct Common<'a> {
    id: &'a str,
    created: String,
    object: &'a Map<String, Value>,
}

impl Common<'_> {
    fn amount_currency(&self, fields: &mut Map<String, Value>, amount_field: &str) {
        fields.insert(
            "amount".into(),
            self.object
                .get(amount_field)
                .cloned()
                .unwrap_or(Value::Null),
        );
        fields.insert(
            "currency".into(),
            self.object
                .get("currency")
                .and_then(Value::as_str)
                .map(|c| Value::from(c.to_ascii_uppercase()))
                .unwrap_or(Value::Null),
        );
    }
}

impl StripeMapping {
    fn payment(&self, c: &Common<'_>, event_type: &str, status: &str) -> (String, Mapping) {
        let o = c.object;
        // A payment intent names its latest charge; a charge its intent.
        let object_ids: Vec<&str> = if event_type.starts_with("payment_intent.") {
            [id_of(o.get("id")), id_of(o.get("latest_charge"))]
        } else {
            [id_of(o.get("payment_intent")), id_of(o.get("id"))]
        }
        .into_iter()
        .flatten()
        .collect();
        let fallback_key = object_ids.first().copied().unwrap_or(c.id).to_owned();
        let metadata = o.get("metadata").and_then(Value::as_object);
        let meta = |k: &str| metadata.and_then(|m| m.get(k)).and_then(Value::as_str);
        let Some(order_id) = meta(&self.order_id_key) else {
            return (
                fallback_key,
                Mapping::Unmappable(format!(
                    "Stripe {event_type} {} has no metadata.{} (STRIPE_ORDER_ID_KEY): the order \
                     it belongs to is unknown",
                    c.id, self.order_id_key
                )),
            );
        };
        let Some(&payment_id) = object_ids.first() else {
            return (
                order_id.to_owned(),
                Mapping::Unmappable(format!(
                    "Stripe {event_type} {} names no payment intent or charge",
                    c.id
                )),
            );
        };
        let mut f = Map::new();
        f.insert("provider_event_id".into(), c.id.into());
        f.insert("order_id".into(), order_id.into());
        f.insert("payment_id".into(), payment_id.into());
        // Without it the payment is applied with the user unknown.
        if let Some(user_id) = meta(&self.user_id_key) {
            f.insert("user_id".into(), user_id.into());
        }
        f.insert("status".into(), status.into());
        c.amount_currency(&mut f, "amount");
        f.insert("occurred_at".into(), c.created.clone().into());
        f.insert("object_ids".into(), json!(object_ids));
        if event_type == "charge.refunded" {
            // The charge's refunded total so far.
            if let Some(charge) = id_of(o.get("id")) {
                f.insert("refund_key".into(), format!("charge:{charge}").into());
            }
            f.insert(
                "refund_amount".into(),
                o.get("amount_refunded").cloned().unwrap_or(Value::Null),
            );
        }
        (order_id.to_owned(), payment(Value::Object(f)))
    }

    fn dispute(&self, c: &Common<'_>, event_type: &str) -> (String, Mapping) {
        let o = c.object;
        let object_ids: Vec<&str> = [id_of(o.get("payment_intent")), id_of(o.get("charge"))]
            .into_iter()
            .flatten()
            .collect();
        let Some(&key) = object_ids.first() else {
            return (
                c.id.to_owned(),
                Mapping::Unmappable(format!(
                    "Stripe {event_type} {} names neither a payment intent nor a charge",
                    c.id
                )),
            );
        };
        let status = o
            .get("status")
            .and_then(Value::as_str)
            .map_or("opened", dispute_status);
        let mut f = Map::new();
        f.insert("provider_event_id".into(), c.id.into());
        f.insert("status".into(), status.into());
        if let Some(r) = o.get("reason").and_then(Value::as_str) {
            f.insert("reason".into(), r.into());
        }
        c.amount_currency(&mut f, "amount");
        f.insert("occurred_at".into(), c.created.clone().into());
        f.insert("object_ids".into(), json!(object_ids));
        (key.to_owned(), dispute(Value::Object(f)))
    }
}

impl StripeMapping {
    /// Why `event` is outside what this endpoint applies, if it is: its
    /// mode, or its connected account.
    fn out_of_scope(&self, event: &Value, id: &str, t: &str) -> Option<(&'static str, String)> {
        let mode = |live: bool| if live { "live" } else { "test" };
        match event.get("livemode").and_then(Value::as_bool) {
            Some(live) if live == self.livemode => {}
            found => {
                return Some((
                    "livemode",
                    format!(
                        "Stripe {t} {id} is a {} event, and STRIPE_LIVEMODE is {}: not applied",
                        found.map_or("mode-less", mode),
                        mode(self.livemode)
                    ),
                ));
            }
        }
        match event.get("account").and_then(Value::as_str) {
            None => None,
            Some(a) if self.accounts.iter().any(|x| x == a) => None,
            Some(a) => Some((
                "account",
                format!(
                    "Stripe {t} {id} comes from connected account {} which STRIPE_ACCOUNTS does \
                     not list ({}): not applied",
                    crate::logging::excerpt(a, 64),
                    if self.accounts.is_empty() {
                        "unset: platform events only".to_owned()
                    } else {
                        self.accounts.join(", ")
                    }
                ),
            )),
        }
    }
}

impl StripeMapping {
    /// Maps one Stripe event (the whole body); its signature is checked
    /// before, by the endpoint.
    pub fn map(&self, body: &[u8]) -> Result<Mapped, ValidationError> {
        let event = parse_json_body(body)?;
        let id = event
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("no `id`"))?;
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `type`"))?;
        let created = event
            .get("created")
            .and_then(Value::as_i64)
            .and_then(rfc3339)
            .ok_or_else(|| invalid("`created` is not Unix seconds"))?;
        let object = event
            .pointer("/data/object")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("no `data.object`"))?;
        let c = Common {
            id,
            created,
            object,
        };
        let (stream, (key, mapping)) = match payment_status(event_type) {
            // A partial refund leaves the payment captured; the refund
            // itself is counted.
            Some(_)
                if event_type == "charge.refunded"
                    && object.get("refunded") != Some(&Value::Bool(true)) =>
            {
                (Stream::Orders, self.payment(&c, event_type, "succeeded"))
            }
            Some(status) => (Stream::Orders, self.payment(&c, event_type, status)),
            None if is_dispute(event_type) => (Stream::Disputes, self.dispute(&c, event_type)),
            None => return Ok(Mapped::Ignored(event_type.to_owned())),
        };
        // Scope last: an event of another mode or account is acknowledged,
        // never applied.
        let (mapping, out_of_scope) = match self.out_of_scope(&event, id, event_type) {
            Some((label, reason)) => (Mapping::Unmappable(reason), Some(label)),
            None => (mapping, None),
        };
        Ok(Mapped::Item(MappedItem {
            stream,
            key,
            mapping,
            out_of_scope,
        }))
    }
}

impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn accept(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Accepted, Refusal> {
        if let Some(v) = self.intake.keys() {
            v.verify(headers, body, now)
                .map_err(Refusal::Unauthorized)?;
        }
        Ok(match self.mapping.map(body)? {
            Mapped::Item(m) => Accepted {
                items: vec![m.item(raw_of(body)?)],
                ignored: Vec::new(),
            },
            Mapped::Ignored(t) => Accepted {
                items: Vec::new(),
                ignored: vec![t],
            },
        })
    }

    fn answer(&self, event_ids: &[Uuid]) -> (StatusCode, &'static str, Vec<u8>) {
        let (status, body) = match event_ids.first() {
            Some(id) => (StatusCode::ACCEPTED, json!({ "event_id": id })),
            None => (StatusCode::OK, json!({ "ignored": true })),
        };
        (status, "application/json", body.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures written for payhook from the shapes in Stripe's API
    //! reference (event object, PaymentIntent, Charge, Dispute); signatures
    //! computed with the HMAC primitives, as Stripe documents the scheme.
    use super::*;
    use crate::providers::signature::{Scheme, SigningKey};
    use hyper::header::HeaderValue;
    use std::time::Duration;

    const SECRET: &str = "whsec_stripe_test_secret_0123456789";
    const NOW: i64 = 1_764_151_200;

    fn stripe(verify: bool) -> Stripe {
        Stripe {
            intake: if verify {
                Intake::Verify(
                    Verifier::new(
                        Scheme::Stripe,
                        vec![SigningKey::parse(Scheme::Stripe, SECRET).unwrap()],
                        Duration::from_secs(300),
                    )
                    .unwrap(),
                )
            } else {
                Intake::Unsigned
            },
            mapping: StripeMapping {
                order_id_key: "order_id".into(),
                user_id_key: "user_id".into(),
                // The fixtures are test-mode events.
                livemode: false,
                accounts: Vec::new(),
            },
        }
    }

    fn event(id: &str, t: &str, object: Value) -> Vec<u8> {
        json!({"id": id, "object": "event", "api_version": "2024-06-20", "created": NOW,
               "livemode": false, "type": t, "data": {"object": object}})
        .to_string()
        .into_bytes()
    }

    fn intent(metadata: Value) -> Value {
        json!({"id": "pi_1", "object": "payment_intent", "amount": 1999, "currency": "eur",
               "latest_charge": "ch_1", "metadata": metadata, "status": "succeeded"})
    }

    fn signed(body: &[u8]) -> HeaderMap {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{NOW}.").as_bytes());
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert(
            "stripe-signature",
            HeaderValue::from_str(&format!("t={NOW},v1={sig}")).unwrap(),
        );
        h
    }

    fn one(a: Accepted) -> super::super::Item {
        assert!(a.ignored.is_empty(), "{:?}", a.ignored);
        assert_eq!(a.items.len(), 1);
        a.items.into_iter().next().unwrap()
    }

    fn mapped(m: &Mapping) -> &Value {
        match m {
            Mapping::Mapped(v) => v,
            other => panic!("not mapped: {other:?}"),
        }
    }

    #[test]
    fn every_payment_intent_type_maps_with_metadata_and_upper_case_currency() {
        let s = stripe(true);
        for (t, status) in [
            ("payment_intent.created", "pending"),
            ("payment_intent.processing", "pending"),
            ("payment_intent.requires_action", "pending"),
            ("payment_intent.amount_capturable_updated", "pending"),
            ("payment_intent.succeeded", "succeeded"),
            ("payment_intent.payment_failed", "failed"),
            ("payment_intent.canceled", "failed"),
        ] {
            let body = event(
                "evt_1",
                t,
                intent(json!({"order_id": "ord_1", "user_id": "u_1"})),
            );
            let item = one(s.accept(&signed(&body), &body, NOW).unwrap());
            assert_eq!(item.stream, Stream::Orders);
            assert_eq!(item.key, "ord_1");
            assert_eq!(
                item.raw.get().as_bytes(),
                &body[..],
                "raw kept byte for byte"
            );
            let m = mapped(&item.mapping);
            assert_eq!(m["status"], status, "{t}");
            assert_eq!(m["provider_event_id"], "evt_1");
            assert_eq!(m["user_id"], "u_1");
            assert_eq!(m["currency"], "EUR");
            assert_eq!(m["amount"], 1999);
            assert_eq!(m["occurred_at"], "2025-11-26T10:00:00Z");
            assert_eq!(m["object_ids"], json!(["pi_1", "ch_1"]));
        }
    }

    #[test]
    fn a_refund_reports_the_charges_refunded_total_and_a_full_one_is_refunded() {
        let s = stripe(false);
        let charge = |refunded: bool, amount_refunded: i64| {
            json!({"id": "ch_1", "object": "charge", "amount": 1999, "amount_refunded": amount_refunded,
                   "currency": "usd", "payment_intent": {"id": "pi_1"}, "refunded": refunded,
                   "metadata": {"order_id": "ord_1", "user_id": "u_1"}})
        };
        let body = event("evt_r", "charge.refunded", charge(true, 1999));
        let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
        let m = mapped(&item.mapping);
        assert_eq!(m["status"], "refunded");
        assert_eq!(m["payment_id"], "pi_1");
        assert_eq!(m["refund_key"], "charge:ch_1");
        assert_eq!(m["refund_amount"], 1999);
        assert_eq!(m["object_ids"], json!(["pi_1", "ch_1"]));
        // A partial refund leaves the payment captured, and reports the
        // charge's refunded total so far.
        let body = event("evt_p", "charge.refunded", charge(false, 500));
        let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
        let m = mapped(&item.mapping);
        assert_eq!(m["status"], "succeeded");
        assert_eq!(m["payment_id"], "pi_1");
        assert_eq!(m["refund_key"], "charge:ch_1");
        assert_eq!(m["refund_amount"], 500);
        assert_eq!(m["amount"], 1999);
        // A charge without an intent is its own payment.
        let mut c = charge(false, 100);
        c.as_object_mut().unwrap().remove("payment_intent");
        let body = event("evt_c", "charge.refunded", c);
        let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
        assert_eq!(mapped(&item.mapping)["payment_id"], "ch_1");
    }

    #[test]
    fn events_of_another_mode_or_an_unlisted_account_are_out_of_scope() {
        let body_with = |patch: Value| {
            let mut e: Value = serde_json::from_slice(&event(
                "evt_1",
                "payment_intent.succeeded",
                intent(json!({"order_id": "ord_1", "user_id": "u_1"})),
            ))
            .unwrap();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    e.as_object_mut().unwrap().remove(k);
                } else {
                    e[k] = v.clone();
                }
            }
            e.to_string().into_bytes()
        };
        let scope = |s: &Stripe, patch: Value| {
            let body = body_with(patch);
            let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
            match (&item.mapping, item.out_of_scope) {
                (Mapping::Mapped(_), None) => Ok(()),
                (Mapping::Unmappable(r), Some(label)) => Err((label, r.clone())),
                other => panic!("inconsistent: {other:?}"),
            }
        };
        let test = stripe(false);
        let mut live = stripe(false);
        live.mapping.livemode = true;
        assert_eq!(scope(&test, json!({})), Ok(()));
        let (label, reason) = scope(&live, json!({})).unwrap_err();
        assert_eq!(label, "livemode");
        assert!(
            reason.contains("test event") && reason.contains("STRIPE_LIVEMODE is live"),
            "{reason}"
        );
        assert_eq!(scope(&live, json!({"livemode": true})), Ok(()));
        assert_eq!(
            scope(&test, json!({"livemode": true})).unwrap_err().0,
            "livemode"
        );
        // No livemode at all is not taken for either.
        assert_eq!(
            scope(&test, json!({"livemode": null})).unwrap_err().0,
            "livemode"
        );
        assert_eq!(
            scope(&live, json!({"livemode": "true"})).unwrap_err().0,
            "livemode"
        );
        // Connected accounts: platform events only, unless listed.
        let (label, reason) = scope(&test, json!({"account": "acct_other"})).unwrap_err();
        assert_eq!(label, "account");
        assert!(
            reason.contains("acct_other") && reason.contains("platform events only"),
            "{reason}"
        );
        let mut connect = stripe(false);
        connect.mapping.accounts = vec!["acct_a".into(), "acct_b".into()];
        assert_eq!(scope(&connect, json!({"account": "acct_b"})), Ok(()));
        assert_eq!(scope(&connect, json!({})), Ok(()));
        assert_eq!(
            scope(&connect, json!({"account": "acct_c"})).unwrap_err().0,
            "account"
        );
        // Disputes are scoped the same way.
        let body = event(
            "evt_d",
            "charge.dispute.created",
            json!({"id": "dp_1", "charge": "ch_1", "status": "needs_response", "amount": 1, "currency": "usd"}),
        );
        let item = one(live.accept(&HeaderMap::new(), &body, NOW).unwrap());
        assert_eq!(item.stream, Stream::Disputes);
        assert_eq!(item.out_of_scope, Some("livemode"));
    }

    #[test]
    fn disputes_name_the_payment_not_the_order() {
        let s = stripe(false);
        for (t, status, want) in [
            ("charge.dispute.created", "needs_response", "opened"),
            ("charge.dispute.updated", "under_review", "opened"),
            ("charge.dispute.funds_withdrawn", "needs_response", "opened"),
            ("charge.dispute.funds_reinstated", "won", "won"),
            ("charge.dispute.closed", "won", "won"),
            ("charge.dispute.closed", "lost", "lost"),
            ("charge.dispute.closed", "warning_closed", "won"),
        ] {
            let body = event(
                "evt_d",
                t,
                json!({"id": "dp_1", "object": "dispute", "amount": 1999, "currency": "usd",
                       "charge": "ch_1", "payment_intent": "pi_1", "reason": "fraudulent",
                       "status": status}),
            );
            let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
            assert_eq!(item.stream, Stream::Disputes);
            assert_eq!(item.key, "pi_1");
            let m = mapped(&item.mapping);
            assert_eq!(m["status"], want, "{t} {status}");
            assert!(m.get("order_id").is_none());
            assert_eq!(m["object_ids"], json!(["pi_1", "ch_1"]));
            assert_eq!(m["reason"], "fraudulent");
        }
    }

    #[test]
    fn no_order_id_is_unmappable_with_its_reason_and_no_user_id_is_an_unknown_user() {
        let s = stripe(false);
        let body = event("evt_1", "payment_intent.succeeded", intent(json!({})));
        let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
        assert_eq!(item.key, "pi_1");
        assert!(
            matches!(&item.mapping, Mapping::Unmappable(r) if r.contains("metadata.order_id")),
            "{:?}",
            item.mapping
        );
        let body = event(
            "evt_2",
            "payment_intent.succeeded",
            intent(json!({"order_id": "ord_1"})),
        );
        // Without a user id the payment is applied with the user unknown.
        let item = one(s.accept(&HeaderMap::new(), &body, NOW).unwrap());
        let m = mapped(&item.mapping);
        assert!(m.get("user_id").is_none(), "{m}");
        assert_eq!(m["order_id"], "ord_1");
        // Configured keys are the ones looked up.
        let mut custom = stripe(false);
        custom.mapping.order_id_key = "payhook_order".into();
        let body = event(
            "evt_3",
            "payment_intent.succeeded",
            intent(json!({"payhook_order": "ord_9", "user_id": "u"})),
        );
        assert_eq!(
            one(custom.accept(&HeaderMap::new(), &body, NOW).unwrap()).key,
            "ord_9"
        );
    }

    #[test]
    fn unknown_types_are_ignored_and_non_events_refused() {
        let s = stripe(false);
        let body = event("evt_1", "customer.created", json!({"id": "cus_1"}));
        let a = s.accept(&HeaderMap::new(), &body, NOW).unwrap();
        assert!(a.items.is_empty());
        assert_eq!(a.ignored, vec!["customer.created"]);
        for bad in [
            json!({"type": "payment_intent.succeeded"}),
            json!({"id": "evt_1", "created": NOW, "data": {"object": {}}}),
            json!({"id": "evt_1", "type": "x", "created": "yesterday", "data": {"object": {}}}),
            json!({"id": "evt_1", "type": "x", "created": NOW}),
        ] {
            let r = s.accept(&HeaderMap::new(), bad.to_string().as_bytes(), NOW);
            assert!(matches!(r, Err(Refusal::Invalid(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn the_signature_is_checked_before_anything_else() {
        let s = stripe(true);
        let body = event("evt_1", "payment_intent.succeeded", intent(json!({})));
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(matches!(
            s.accept(&signed(&body), &tampered, NOW),
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            s.accept(&HeaderMap::new(), b"not json", NOW),
            Err(Refusal::Unauthorized(_))
        ));
    }
}
