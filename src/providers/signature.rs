//! Webhook signatures: proof that a request comes from the provider.
//!
//! The endpoints face the internet and move money: anyone who could POST an
//! unsigned "succeeded" event could mark an unpaid order as paid. So every
//! webhook is checked, on the exact bytes received and before any JSON
//! parsing, against one of two schemes, chosen per endpoint:
//!
//! - **Standard Webhooks** (<https://www.standardwebhooks.com>): headers
//!   `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`,
//!   a space-separated list of `v1,<base64 HMAC-SHA256>` over
//!   `"{id}.{timestamp}.{body}"`. Secrets are written `whsec_<base64>`; the
//!   HMAC key is the decoded part.
//! - **Stripe**: header `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 over
//!   "{t}.{body}">[,v1=...]`. The HMAC key is the secret string itself.
//!
//! Several secrets may be active at once so keys can be rotated without
//! downtime: a request passes if any of its signatures matches any secret.
//! The timestamp must be within the tolerance of the local clock in both
//! directions, which bounds how long a captured request can be replayed.
//!
//! A failure says why in [`SignatureError`], for the log only; the client
//! gets one generic 401 (see [`crate::http::error`]). Nothing here ever formats a
//! secret or a whole signature.

use std::time::Duration;

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use crate::config::keys::{KeyError, Scheme, SigningKey};

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &SigningKey) -> HmacSha256 {
    HmacSha256::new_from_slice(key.expose()).expect("HMAC takes a key of any length")
}

/// Length of an HMAC-SHA256 tag. A shorter (truncated) signature never
/// matches.
const TAG_BYTES: usize = 32;

/// Signatures looked at per request. A real provider sends one per active
/// secret, so a handful at most; the cap bounds the work an attacker can ask
/// for with one long header.
const MAX_SIGNATURES: usize = 8;

/// Base64 for secrets and Standard Webhooks signatures: the standard
/// alphabet. Signatures must be canonical (padded); secrets may omit padding,
/// since people copy them by hand.
const B64_SIGNATURE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);
/// Why a request's signature was refused. For the log: the client only ever
/// learns "invalid or missing signature".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is given more than once")]
    Repeated(&'static str),
    #[error("header {header} is malformed: {why}")]
    Malformed {
        header: &'static str,
        why: &'static str,
    },
    #[error("timestamp is {skew_secs}s from now, beyond the tolerance of {tolerance_secs}s")]
    OutsideTolerance { skew_secs: i64, tolerance_secs: u64 },
    #[error("none of {signatures} signature(s) matches an active secret")]
    NoMatch { signatures: usize },
}

/// Checks one endpoint's requests.
#[derive(Clone, Debug)]
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<SigningKey>,
    tolerance: Duration,
}

/// What a request claims, parsed before any HMAC is computed.
struct Claim {
    /// The bytes signed before the body: `"{id}.{ts}."` or `"{t}."`.
    prefix: Vec<u8>,
    timestamp: i64,
    signatures: Vec<[u8; TAG_BYTES]>,
}

impl Verifier {
    /// `None` without keys: an endpoint with no secret cannot verify
    /// anything, and start-up refuses it.
    pub fn new(scheme: Scheme, keys: Vec<SigningKey>, tolerance: Duration) -> Option<Self> {
        (!keys.is_empty()).then_some(Self {
            scheme,
            keys,
            tolerance,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Checks `body`, exactly as received, against the signature headers.
    /// `now` is the local clock in Unix seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let claim = match self.scheme {
            Scheme::Standard => standard_claim(headers)?,
            Scheme::Stripe => stripe_claim(headers)?,
        };
        let skew = now.saturating_sub(claim.timestamp);
        if skew.unsigned_abs() > self.tolerance.as_secs() {
            return Err(SignatureError::OutsideTolerance {
                skew_secs: skew,
                tolerance_secs: self.tolerance.as_secs(),
            });
        }
        for key in &self.keys {
            let mut mac = mac(key);
            mac.update(&claim.prefix);
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            // Constant-time: a byte-by-byte comparison that stops at the
            // first difference would let an attacker find the tag byte by
            // byte from response times.
            if claim
                .signatures
                .iter()
                .any(|sig| bool::from(sig.ct_eq(expected.as_slice())))
            {
                return Ok(());
            }
        }
        Err(SignatureError::NoMatch {
            signatures: claim.signatures.len(),
        })
    }
}

/// The one value of `name`; a header given twice is refused rather than
/// guessing which one the provider meant.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(SignatureError::Missing(name))?;
    if values.next().is_some() {
        return Err(SignatureError::Repeated(name));
    }
    let value = value.to_str().map_err(|_| SignatureError::Malformed {
        header: name,
        why: "not visible ASCII",
    })?;
    let value = value.trim();
    if value.is_empty() {
        return Err(SignatureError::Missing(name));
    }
    Ok(value)
}

/// Unix seconds: 1 to 12 ASCII digits, nothing else (no sign, no spaces, no
/// fraction). The HMAC covers the text as sent, so the value checked against
/// the clock is exactly the one the provider signed.
fn unix_seconds(s: &str, header: &'static str) -> Result<i64, SignatureError> {
    let malformed = SignatureError::Malformed {
        header,
        why: "timestamp is not whole Unix seconds",
    };
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    s.parse().map_err(|_| malformed)
}

fn standard_claim(headers: &HeaderMap) -> Result<Claim, SignatureError> {
    const ID: &str = "webhook-id";
    const TS: &str = "webhook-timestamp";
    const SIG: &str = "webhook-signature";
    let id = single(headers, ID)?;
    let ts = single(headers, TS)?;
    let timestamp = unix_seconds(ts, TS)?;
    let mut signatures = Vec::new();
    for entry in single(headers, SIG)?.split(' ').filter(|e| !e.is_empty()) {
        // Other versions (e.g. `v1a` for asymmetric keys) are skipped: a
        // provider may send several kinds during a migration.
        let Some(("v1", b64)) = entry.split_once(',') else {
            continue;
        };
        // A malformed or truncated entry is no candidate; it can never match.
        if let Some(tag) = B64_SIGNATURE
            .decode(b64)
            .ok()
            .and_then(|v| <[u8; TAG_BYTES]>::try_from(v).ok())
        {
            signatures.push(tag);
        }
        if signatures.len() == MAX_SIGNATURES {
            break;
        }
    }
    if signatures.is_empty() {
        return Err(SignatureError::Malformed {
            header: SIG,
            why: "no well-formed v1 signature",
        });
    }
    Ok(Claim {
        prefix: format!("{id}.{ts}.").into_bytes(),
        timestamp,
        signatures,
    })
}

fn stripe_claim(headers: &HeaderMap) -> Result<Claim, SignatureError> {
    const SIG: &str = "stripe-signature";
    let value = single(headers, SIG)?;
    let malformed = |why| SignatureError::Malformed { header: SIG, why };
    let mut t = None;
    let mut signatures = Vec::new();
    for item in value.split(',') {
        let (k, v) = item
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("an item is not key=value"))?;
        match k {
            "t" if t.is_some() => return Err(malformed("t is given more than once")),
            "t" => t = Some((v, unix_seconds(v, SIG)?)),
            "v1" if signatures.len() < MAX_SIGNATURES => {
                if let Some(tag) = hex::decode(v)
                    .ok()
                    .and_then(|v| <[u8; TAG_BYTES]>::try_from(v).ok())
                {
                    signatures.push(tag);
                }
            }
            // `v0` (test mode) and future schemes carry nothing we check.
            _ => {}
        }
    }
    let (t_text, timestamp) = t.ok_or_else(|| malformed("no t= timestamp"))?;
    if signatures.is_empty() {
        return Err(malformed("no well-formed v1 signature"));
    }
    Ok(Claim {
        prefix: format!("{t_text}.").into_bytes(),
        timestamp,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    //! The expected signatures below were computed outside this code, with
    //! Python's `hmac`/`hashlib`/`base64`, e.g.
    //! `base64.b64encode(hmac.new(key, b"msg_1.1764151200." + BODY,
    //! hashlib.sha256).digest())`; the first vector is the Standard Webhooks
    //! reference one.
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    const BODY: &[u8] = br#"{"provider_event_id":"evt_1","order_id":"ord_42"}"#;
    const TS: i64 = 1_764_151_200;
    const MIN5: Duration = Duration::from_secs(300);

    const STD_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STD_B: &str = "whsec_cGF5aG9vayByb3RhdGlvbiBrZXkgMjAyNi0xMQ==";
    const STD_SIG_A: &str = "v1,ijVd5D8M50FTyw3P0L5STwKh++hcAELj3hUuaqYIQfA=";
    const STD_SIG_B: &str = "v1,giEaXZAJiUY32NK/7GhFtFgef4MOUGoLep26O/3jJQY=";

    const STRIPE_A: &str = "whsec_stripe_test_secret_0123456789";
    const STRIPE_B: &str = "whsec_stripe_rotated_secret_abcdef";
    const STRIPE_SIG_A: &str = "2d6524b893b7c4e99859b9753025baa52cc92938a26928c4b53a9c89a01b25fd";
    const STRIPE_SIG_B: &str = "c6b3965b1c600f3cccd97a96b039937bda053053bca991a9c1b8856c000bf46b";

    fn verifier(scheme: Scheme, secrets: &[&str]) -> Verifier {
        let keys = secrets
            .iter()
            .map(|s| SigningKey::parse(scheme, s).unwrap())
            .collect();
        Verifier::new(scheme, keys, MIN5).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    fn std_headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ])
    }

    fn stripe_headers(v: &str) -> HeaderMap {
        headers(&[("stripe-signature", v)])
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        let v = verifier(Scheme::Standard, &[STD_A]);
        let h = std_headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        assert_eq!(
            v.verify(&h, br#"{"test": 2432232314}"#, 1_614_265_330),
            Ok(())
        );
    }

    #[test]
    fn standard_accepts_any_active_secret_and_any_listed_signature() {
        let ts = TS.to_string();
        // Rotation: old and new secret both active.
        let both = verifier(Scheme::Standard, &[STD_A, STD_B]);
        for sig in [STD_SIG_A, STD_SIG_B] {
            assert_eq!(
                both.verify(&std_headers("msg_1", &ts, sig), BODY, TS),
                Ok(())
            );
        }
        // The provider signs with both during its own rotation; we know one.
        let only_b = verifier(Scheme::Standard, &[STD_B]);
        let two = format!("{STD_SIG_A} {STD_SIG_B}");
        assert_eq!(
            only_b.verify(&std_headers("msg_1", &ts, &two), BODY, TS),
            Ok(())
        );
        // A retired secret no longer passes.
        assert_eq!(
            only_b.verify(&std_headers("msg_1", &ts, STD_SIG_A), BODY, TS),
            Err(SignatureError::NoMatch { signatures: 1 })
        );
        // Unknown versions are skipped, not fatal.
        let mixed = format!("v1a,AAAA {STD_SIG_B}");
        assert_eq!(
            only_b.verify(&std_headers("msg_1", &ts, &mixed), BODY, TS),
            Ok(())
        );
    }

    #[test]
    fn standard_signature_covers_id_timestamp_and_every_body_byte() {
        let v = verifier(Scheme::Standard, &[STD_A]);
        let ts = TS.to_string();
        let no = Err(SignatureError::NoMatch { signatures: 1 });
        assert_eq!(
            v.verify(&std_headers("msg_2", &ts, STD_SIG_A), BODY, TS),
            no
        );
        let ts1 = (TS + 1).to_string();
        assert_eq!(
            v.verify(&std_headers("msg_1", &ts1, STD_SIG_A), BODY, TS),
            no
        );
        let mut body = BODY.to_vec();
        body.push(b' ');
        assert_eq!(
            v.verify(&std_headers("msg_1", &ts, STD_SIG_A), &body, TS),
            no
        );
        assert_eq!(
            v.verify(&std_headers("msg_1", &ts, STD_SIG_A), &BODY[1..], TS),
            no
        );
        // A leading zero changes the signed text, so it is not the same
        // timestamp: refused.
        let ts0 = format!("0{TS}");
        assert_eq!(
            v.verify(&std_headers("msg_1", &ts0, STD_SIG_A), BODY, TS),
            no
        );
    }

    #[test]
    fn tolerance_is_inclusive_in_both_directions() {
        let v = verifier(Scheme::Standard, &[STD_A]);
        let h = std_headers("msg_1", &TS.to_string(), STD_SIG_A);
        assert_eq!(v.verify(&h, BODY, TS + 300), Ok(()));
        assert_eq!(v.verify(&h, BODY, TS - 300), Ok(()));
        assert_eq!(
            v.verify(&h, BODY, TS + 301),
            Err(SignatureError::OutsideTolerance {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            v.verify(&h, BODY, TS - 301),
            Err(SignatureError::OutsideTolerance {
                skew_secs: -301,
                tolerance_secs: 300
            })
        );
        let s = verifier(Scheme::Stripe, &[STRIPE_A]);
        let h = stripe_headers(&format!("t={TS},v1={STRIPE_SIG_A}"));
        assert_eq!(s.verify(&h, BODY, TS + 300), Ok(()));
        assert_eq!(s.verify(&h, BODY, TS - 300), Ok(()));
        assert!(matches!(
            s.verify(&h, BODY, TS + 301),
            Err(SignatureError::OutsideTolerance { .. })
        ));
        assert!(matches!(
            s.verify(&h, BODY, TS - 301),
            Err(SignatureError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn standard_malformed_forms_are_refused() {
        let v = verifier(Scheme::Standard, &[STD_A]);
        let ts = TS.to_string();
        let full = &STD_SIG_A[3..];
        let cases: Vec<(HeaderMap, SignatureError)> = vec![
            (HeaderMap::new(), SignatureError::Missing("webhook-id")),
            (
                headers(&[("webhook-id", "msg_1"), ("webhook-timestamp", &ts)]),
                SignatureError::Missing("webhook-signature"),
            ),
            (
                headers(&[("webhook-id", "msg_1"), ("webhook-signature", STD_SIG_A)]),
                SignatureError::Missing("webhook-timestamp"),
            ),
            (
                std_headers("", &ts, STD_SIG_A),
                SignatureError::Missing("webhook-id"),
            ),
            (
                std_headers("msg_1", &ts, ""),
                SignatureError::Missing("webhook-signature"),
            ),
            (
                std_headers("msg_1", &ts, "   "),
                SignatureError::Missing("webhook-signature"),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(v.verify(&h, BODY, TS), Err(want));
        }
        let malformed_sig = |sig: &str| {
            assert!(
                matches!(
                    v.verify(&std_headers("msg_1", &ts, sig), BODY, TS),
                    Err(SignatureError::Malformed {
                        header: "webhook-signature",
                        ..
                    })
                ),
                "{sig:?}"
            );
        };
        malformed_sig("v1,");
        malformed_sig("v1");
        malformed_sig(full); // no version
        malformed_sig(&format!("v2,{full}"));
        malformed_sig(&STD_SIG_A[..STD_SIG_A.len() - 4]); // truncated
        malformed_sig(&format!("{STD_SIG_A}=")); // bad padding
        malformed_sig(&format!("v1,{}", hex::encode([0u8; 32]))); // hex, not base64
        malformed_sig(&format!("v1,{full}AAAA")); // too long
        malformed_sig(&format!("v1,{}", &full[..full.len() - 1])); // unpadded
        for ts in [
            "",
            "-1764151200",
            "+1764151200",
            "1764151200.5",
            "1e9",
            "abc",
            "9999999999999",
        ] {
            let want = if ts.is_empty() {
                SignatureError::Missing("webhook-timestamp")
            } else {
                SignatureError::Malformed {
                    header: "webhook-timestamp",
                    why: "timestamp is not whole Unix seconds",
                }
            };
            assert_eq!(
                v.verify(&std_headers("msg_1", ts, STD_SIG_A), BODY, TS),
                Err(want),
                "{ts:?}"
            );
        }
        // A header given twice is ambiguous: refused.
        let mut h = std_headers("msg_1", &ts, STD_SIG_A);
        h.append("webhook-timestamp", HeaderValue::from_static("1"));
        assert_eq!(
            v.verify(&h, BODY, TS),
            Err(SignatureError::Repeated("webhook-timestamp"))
        );
        // Non-ASCII bytes in a header.
        let mut h = std_headers("msg_1", &ts, STD_SIG_A);
        h.insert("webhook-id", HeaderValue::from_bytes(b"msg_\xff").unwrap());
        assert!(matches!(
            v.verify(&h, BODY, TS),
            Err(SignatureError::Malformed {
                header: "webhook-id",
                ..
            })
        ));
    }

    #[test]
    fn stripe_accepts_any_active_secret_and_any_listed_signature() {
        let both = verifier(Scheme::Stripe, &[STRIPE_A, STRIPE_B]);
        for sig in [STRIPE_SIG_A, STRIPE_SIG_B] {
            let h = stripe_headers(&format!("t={TS},v1={sig}"));
            assert_eq!(both.verify(&h, BODY, TS), Ok(()));
        }
        let only_b = verifier(Scheme::Stripe, &[STRIPE_B]);
        let h = stripe_headers(&format!("t={TS},v1={STRIPE_SIG_A},v1={STRIPE_SIG_B},v0=ab"));
        assert_eq!(only_b.verify(&h, BODY, TS), Ok(()));
        let h = stripe_headers(&format!("t={TS},v1={STRIPE_SIG_A}"));
        assert_eq!(
            only_b.verify(&h, BODY, TS),
            Err(SignatureError::NoMatch { signatures: 1 })
        );
        // Upper-case hex is the same tag.
        let h = stripe_headers(&format!("t={TS},v1={}", STRIPE_SIG_B.to_uppercase()));
        assert_eq!(only_b.verify(&h, BODY, TS), Ok(()));
        // The body and the timestamp are covered.
        let h = stripe_headers(&format!("t={},v1={STRIPE_SIG_B}", TS + 1));
        assert!(only_b.verify(&h, BODY, TS).is_err());
        let h = stripe_headers(&format!("t={TS},v1={STRIPE_SIG_B}"));
        assert!(only_b.verify(&h, b"{}", TS).is_err());
    }

    #[test]
    fn stripe_malformed_forms_are_refused() {
        let v = verifier(Scheme::Stripe, &[STRIPE_A]);
        assert_eq!(
            v.verify(&HeaderMap::new(), BODY, TS),
            Err(SignatureError::Missing("stripe-signature"))
        );
        let sig = STRIPE_SIG_A;
        for bad in [
            "".to_owned(),
            ",".to_owned(),
            format!("v1={sig}"),                            // no t
            format!("t={TS}"),                              // no v1
            format!("t={TS},v1="),                          // empty v1
            format!("t={TS},v1={}", &sig[..62]),            // truncated
            format!("t={TS},v1={}", &sig[..63]),            // odd length
            format!("t={TS},v1={sig}00"),                   // too long
            format!("t={TS},v1={}", sig.replace('d', "g")), // not hex
            format!("t={TS},v0={sig}"),                     // only a v0
            format!("t={TS},t={TS},v1={sig}"),              // t twice
            format!("t=,v1={sig}"),
            format!("t=-{TS},v1={sig}"),
            format!("t={TS}.0,v1={sig}"),
            format!("t={TS};v1={sig}"),
            format!("t={TS},{sig}"), // item without =
            format!("t={TS} v1={sig}"),
        ] {
            let r = v.verify(&stripe_headers(&bad), BODY, TS);
            assert!(
                matches!(
                    r,
                    Err(SignatureError::Malformed { .. } | SignatureError::Missing(_))
                ),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        use Scheme::*;
        assert!(SigningKey::parse(Standard, STD_A).is_ok());
        assert!(SigningKey::parse(Standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert_eq!(SigningKey::parse(Standard, ""), Err(KeyError::Empty));
        assert_eq!(SigningKey::parse(Standard, "  "), Err(KeyError::Empty));
        assert_eq!(SigningKey::parse(Standard, "whsec_"), Err(KeyError::Empty));
        assert_eq!(
            SigningKey::parse(Standard, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(KeyError::NotWhsec)
        );
        assert_eq!(
            SigningKey::parse(Standard, "whsec_not base64!"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            SigningKey::parse(Standard, "whsec_c2hvcnQ="),
            Err(KeyError::TooShort)
        );
        assert_eq!(SigningKey::parse(Stripe, ""), Err(KeyError::Empty));
        assert_eq!(
            SigningKey::parse(Stripe, "whsec_short"),
            Err(KeyError::TooShort)
        );
        assert_eq!(SigningKey::parse_list(Stripe, ""), Ok(vec![]));
        assert_eq!(
            SigningKey::parse_list(Stripe, &format!("{STRIPE_A}, {STRIPE_B}"))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            SigningKey::parse_list(Stripe, &format!("{STRIPE_A},,{STRIPE_B}")),
            Err(KeyError::Empty)
        );
        assert_eq!(
            SigningKey::parse_list(Stripe, &format!("{STRIPE_A},")),
            Err(KeyError::Empty)
        );
        let k = SigningKey::parse(Stripe, STRIPE_A).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("stripe_test"), "{shown}");
        assert!(Verifier::new(Stripe, vec![], MIN5).is_none());
    }

    #[test]
    fn failure_reasons_never_show_a_signature() {
        let v = verifier(Scheme::Stripe, &[STRIPE_A]);
        let bad = format!("t={TS},v1={}", "0".repeat(64));
        let e = v.verify(&stripe_headers(&bad), BODY, TS).unwrap_err();
        assert!(!e.to_string().contains("0000"), "{e}");
        assert!(!e.to_string().contains("stripe_test"), "{e}");
    }

    #[test]
    fn schemes_parse() {
        assert_eq!(Scheme::parse("standard"), Some(Scheme::Standard));
        assert_eq!(Scheme::parse("Stripe"), Some(Scheme::Stripe));
        assert_eq!(Scheme::parse("hmac"), None);
    }
}
