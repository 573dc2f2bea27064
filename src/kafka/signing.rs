//! The signed log: an HMAC-SHA256 over each record payhook publishes, so
//! the consumer applies only what payhook's own edge (or an operator's
//! `dlq replay`) wrote.
//!
//! Without it the consumer trusts the topics: whoever can produce to
//! `payments.orders` can move any order. With `ENVELOPE_SIGNING_KEYS` set,
//! every record carries the header
//!
//! ```text
//! payhook-signature: v1:<key id>:<64 hex digits>
//! ```
//!
//! over the record's key, value and every other header (names and values,
//! in name order, each length-prefixed, so no two records share the signed
//! bytes). The first key listed signs; every key listed verifies, so a key
//! is rotated by listing the new one first beside the old one, then dropping
//! the old one once no record signed with it is left to consume. The record
//! timestamp is not signed (the broker may replace it): the envelope inside
//! the value carries its own, signed, and the consumer bounds it by the
//! record's ([`crate::kafka::envelope`]).
//!
//! What it protects, and what not, is in `docs/threat-model.md`.

use hmac::{Hmac, Mac};
use rskafka::record::Record;
use sha2::Sha256;

use crate::config::keys::EnvelopeKey;

/// The header that carries a record's signature.
pub const HEADER_SIGNATURE: &str = "payhook-signature";

/// The version of the signed form, first in the header and in the MAC.
const VERSION: &str = "v1";

/// Why a record's signature does not hold. Permanent: the same record fails
/// the same way for as long as the keys are the same.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFault {
    #[error(
        "the record is not signed (no {HEADER_SIGNATURE} header) and ENVELOPE_SIGNING_KEYS is set"
    )]
    Unsigned,
    #[error("the {HEADER_SIGNATURE} header is not v1:<key id>:<hex>")]
    Malformed,
    #[error("the record is signed with key {0:?}, which ENVELOPE_SIGNING_KEYS does not list")]
    UnknownKey(String),
    #[error(
        "the signature of key {0:?} does not match the record (altered, or signed with another secret)"
    )]
    Mismatch(String),
}

/// Signs and verifies records with `ENVELOPE_SIGNING_KEYS`.
#[derive(Clone, Debug)]
pub struct Signer {
    /// Never empty; the first signs.
    keys: Vec<EnvelopeKey>,
}

impl Signer {
    /// `None` when no key is configured (records are then neither signed
    /// nor verified).
    pub fn new(keys: Vec<EnvelopeKey>) -> Option<Self> {
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The configured keys' signer (`ENVELOPE_SIGNING_KEYS`), if any.
    pub fn from_config(kafka: &crate::config::KafkaSettings) -> Option<Self> {
        Self::new(kafka.signing_keys.clone())
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> &str {
        self.keys[0].id()
    }

    /// Adds (or replaces) the signature header, with the first key.
    pub fn sign(&self, record: &mut Record) {
        record.headers.remove(HEADER_SIGNATURE);
        let key = &self.keys[0];
        let tag = hex::encode(mac(key, record).finalize().into_bytes());
        record.headers.insert(
            HEADER_SIGNATURE.to_owned(),
            format!("{VERSION}:{}:{tag}", key.id()).into_bytes(),
        );
    }

    /// Checks the signature header against the listed keys, in constant
    /// time for the tag.
    pub fn verify(&self, record: &Record) -> Result<(), SignatureFault> {
        let header = record
            .headers
            .get(HEADER_SIGNATURE)
            .ok_or(SignatureFault::Unsigned)?;
        let text = std::str::from_utf8(header).map_err(|_| SignatureFault::Malformed)?;
        let mut parts = text.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SignatureFault::Malformed);
        };
        let tag = hex::decode(tag).map_err(|_| SignatureFault::Malformed)?;
        let key = self.keys.iter().find(|k| k.id() == id).ok_or_else(|| {
            SignatureFault::UnknownKey(crate::logging::excerpt(id, 64).into_owned())
        })?;
        mac(key, record)
            .verify_slice(&tag)
            .map_err(|_| SignatureFault::Mismatch(id.to_owned()))
    }
}

/// The MAC over a record's key, value and headers (the signature header
/// left out).
fn mac(key: &EnvelopeKey, record: &Record) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes a key of any length");
    let mut field = |bytes: Option<&[u8]>| match bytes {
        None => mac.update(&[0]),
        Some(b) => {
            mac.update(&[1]);
            mac.update(&(b.len() as u64).to_be_bytes());
            mac.update(b);
        }
    };
    field(Some(b"payhook-record-v1"));
    field(record.key.as_deref());
    field(record.value.as_deref());
    // A BTreeMap: in name order.
    for (name, value) in record
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() != HEADER_SIGNATURE)
    {
        field(Some(name.as_bytes()));
        field(Some(value));
    }
    mac
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(entry: &str) -> EnvelopeKey {
        EnvelopeKey::parse(entry).unwrap()
    }

    fn signer(entries: &[&str]) -> Signer {
        Signer::new(entries.iter().map(|e| key(e)).collect()).unwrap()
    }

    const A: &str = "a:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "b:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn record() -> Record {
        Record {
            key: Some(b"ord_1".to_vec()),
            value: Some(br#"{"event_id":"x"}"#.to_vec()),
            headers: BTreeMap::from([
                ("event_id".to_owned(), b"x".to_vec()),
                ("type".to_owned(), b"order.webhook".to_vec()),
            ]),
            timestamp: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_breaks_it() {
        let s = signer(&[A]);
        let mut r = record();
        s.sign(&mut r);
        assert_eq!(s.verify(&r), Ok(()));
        let header = String::from_utf8(r.headers[HEADER_SIGNATURE].clone()).unwrap();
        assert!(
            header.starts_with("v1:a:") && header.len() == 5 + 64,
            "{header}"
        );
        // The timestamp is not signed (the broker may set it).
        let mut later = r.clone();
        later.timestamp += chrono::Duration::hours(1);
        assert_eq!(s.verify(&later), Ok(()));
        type Change = fn(&mut Record);
        let changes: [(&str, Change); 6] = [
            ("key", |r| r.key = Some(b"ord_2".to_vec())),
            ("no key", |r| r.key = None),
            ("value", |r| r.value.as_mut().unwrap().push(b' ')),
            ("header value", |r| {
                r.headers.insert("type".into(), b"dispute.webhook".to_vec());
            }),
            ("header added", |r| {
                r.headers.insert("extra".into(), Vec::new());
            }),
            ("header removed", |r| {
                r.headers.remove("event_id");
            }),
        ];
        for (what, change) in changes {
            let mut c = r.clone();
            change(&mut c);
            assert_eq!(
                s.verify(&c),
                Err(SignatureFault::Mismatch("a".into())),
                "{what}"
            );
        }
        // Moving bytes between key and value changes the signed form.
        let mut shifted = r.clone();
        shifted.key = Some(b"ord_1{".to_vec());
        shifted.value = Some(br#""event_id":"x"}"#.to_vec());
        assert!(s.verify(&shifted).is_err());
    }

    #[test]
    fn every_listed_key_verifies_and_the_first_signs() {
        let old = signer(&[A]);
        let rotating = signer(&[B, A]);
        let new = signer(&[B]);
        let mut by_old = record();
        old.sign(&mut by_old);
        let mut by_rotating = record();
        rotating.sign(&mut by_rotating);
        assert_eq!(rotating.signing_key_id(), "b");
        assert_eq!(rotating.verify(&by_old), Ok(()));
        assert_eq!(new.verify(&by_rotating), Ok(()));
        assert_eq!(
            new.verify(&by_old),
            Err(SignatureFault::UnknownKey("a".into()))
        );
        // Same id, other secret.
        let impostor = signer(&["a:cccccccccccccccccccccccccccccccccccc"]);
        assert_eq!(
            impostor.verify(&by_old),
            Err(SignatureFault::Mismatch("a".into()))
        );
        // Re-signing replaces the header.
        let mut resigned = by_old.clone();
        new.sign(&mut resigned);
        assert_eq!(new.verify(&resigned), Ok(()));
    }

    #[test]
    fn unsigned_and_malformed_headers_are_refused() {
        let s = signer(&[A]);
        assert_eq!(s.verify(&record()), Err(SignatureFault::Unsigned));
        for bad in ["", "v1", "v1:a", "v2:a:00", "v1:a:zz", "v1:a:\u{0}"] {
            let mut r = record();
            r.headers
                .insert(HEADER_SIGNATURE.into(), bad.as_bytes().to_vec());
            let got = s.verify(&r);
            assert!(
                matches!(
                    got,
                    Err(SignatureFault::Malformed | SignatureFault::Mismatch(_))
                ),
                "{bad:?}: {got:?}"
            );
        }
        let mut r = record();
        r.headers.insert(HEADER_SIGNATURE.into(), vec![0xff, 0xfe]);
        assert_eq!(s.verify(&r), Err(SignatureFault::Malformed));
        assert!(Signer::new(Vec::new()).is_none());
    }
}
