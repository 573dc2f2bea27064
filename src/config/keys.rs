//! Key material read from the settings: the webhook signing secrets, parsed
//! once when the configuration is read, so a malformed secret stops start-up
//! with every other problem. The providers compute the HMACs
//! ([`crate::providers::signature`], [`crate::providers::adyen`]); nothing
//! here ever shows a key: every `Debug` is redacted.

use std::fmt;

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// Base64 for Standard Webhooks secrets: the standard alphabet, padding
/// optional, since people copy secrets by hand.
const B64_SECRET: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which signature format an endpoint expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`).
    Standard,
    /// Stripe (`Stripe-Signature`).
    Stripe,
}

impl Scheme {
    /// `standard` or `stripe` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "standard" => Some(Self::Standard),
            "stripe" => Some(Self::Stripe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Stripe => "stripe",
        }
    }
}

/// An HMAC key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<{} bytes, redacted>)", self.0.len())
    }
}

/// Why a configured secret cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a secret is empty")]
    Empty,
    #[error("a Standard Webhooks secret must start with whsec_")]
    NotWhsec,
    #[error("the part after whsec_ is not base64")]
    NotBase64,
    #[error("a secret must hold at least {} bytes of key", SigningKey::MIN_BYTES)]
    TooShort,
}

impl SigningKey {
    /// Shortest key accepted. HMAC takes any length, but a short key can be
    /// guessed; providers issue 24 to 64 bytes.
    pub const MIN_BYTES: usize = 16;

    /// One secret as the provider shows it.
    pub fn parse(scheme: Scheme, secret: &str) -> Result<Self, KeyError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        let key = match scheme {
            Scheme::Standard => {
                let b64 = secret.strip_prefix("whsec_").ok_or(KeyError::NotWhsec)?;
                if b64.is_empty() {
                    return Err(KeyError::Empty);
                }
                B64_SECRET.decode(b64).map_err(|_| KeyError::NotBase64)?
            }
            // Stripe signs with the secret string's bytes, `whsec_` and all.
            Scheme::Stripe => secret.as_bytes().to_vec(),
        };
        if key.len() < Self::MIN_BYTES {
            return Err(KeyError::TooShort);
        }
        Ok(Self(key))
    }

    /// A comma-separated list; an empty list is allowed here (start-up
    /// decides whether that may serve), an empty entry is not.
    pub fn parse_list(scheme: Scheme, list: &str) -> Result<Vec<Self>, KeyError> {
        if list.trim().is_empty() {
            return Ok(Vec::new());
        }
        list.split(',').map(|s| Self::parse(scheme, s)).collect()
    }

    /// The key bytes, for the one place that computes the HMAC.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// An Adyen HMAC key (hex in the Customer Area). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacKey(Vec<u8>);

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacKey(<{} bytes, redacted>)", self.0.len())
    }
}

/// Why a configured Adyen key cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HmacKeyError {
    #[error("a key is empty")]
    Empty,
    #[error("a key is not hex")]
    NotHex,
    #[error("a key must hold at least 16 bytes (32 hex digits)")]
    TooShort,
}

impl HmacKey {
    pub fn parse(hex_key: &str) -> Result<Self, HmacKeyError> {
        let s = hex_key.trim();
        if s.is_empty() {
            return Err(HmacKeyError::Empty);
        }
        let key = hex::decode(s).map_err(|_| HmacKeyError::NotHex)?;
        if key.len() < 16 {
            return Err(HmacKeyError::TooShort);
        }
        Ok(Self(key))
    }

    /// A comma-separated list; empty means "none configured".
    pub fn parse_list(list: &str) -> Result<Vec<Self>, HmacKeyError> {
        if list.trim().is_empty() {
            return Ok(Vec::new());
        }
        list.split(',').map(Self::parse).collect()
    }

    /// The key bytes, for the one place that computes the HMAC.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// One key of `ENVELOPE_SIGNING_KEYS`: an id carried in each record's
/// signature header, and the HMAC key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvelopeKey {
    id: String,
    key: Vec<u8>,
}

impl fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EnvelopeKey({}, <{} bytes, redacted>)",
            self.id,
            self.key.len()
        )
    }
}

/// Why `ENVELOPE_SIGNING_KEYS` cannot be used. Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeKeyError {
    #[error("an entry is not id:secret")]
    NotIdSecret,
    #[error("a key id must be 1 to 32 of A-Z a-z 0-9 . _ -")]
    BadId,
    #[error("key id {0:?} is listed twice")]
    Repeated(String),
    #[error("the secret of key {0:?} is shorter than {min} characters", min = EnvelopeKey::MIN_BYTES)]
    TooShort(String),
}

impl EnvelopeKey {
    /// Shortest secret accepted: 32 bytes, e.g. `openssl rand -hex 32`
    /// (64 hex characters) is more than enough.
    pub const MIN_BYTES: usize = 32;

    /// One `id:secret` entry; the secret's bytes are the key.
    pub fn parse(entry: &str) -> Result<Self, EnvelopeKeyError> {
        let (id, secret) = entry
            .trim()
            .split_once(':')
            .ok_or(EnvelopeKeyError::NotIdSecret)?;
        let id_ok = (1..=32).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(EnvelopeKeyError::BadId);
        }
        if secret.len() < Self::MIN_BYTES {
            return Err(EnvelopeKeyError::TooShort(id.to_owned()));
        }
        Ok(Self {
            id: id.to_owned(),
            key: secret.as_bytes().to_vec(),
        })
    }

    /// A comma-separated list, the signing key first; empty: no keys.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, EnvelopeKeyError> {
        if list.trim().is_empty() {
            return Ok(Vec::new());
        }
        let keys = list
            .split(',')
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(EnvelopeKeyError::Repeated(k.id.clone()));
            }
        }
        Ok(keys)
    }

    /// The id the signature header names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key bytes, for the one place that computes the HMAC.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keys_are_id_secret_pairs_and_never_printed() {
        let secret = "s".repeat(32);
        let keys = EnvelopeKey::parse_list(&format!("k2:{secret}, k1:{secret}x")).unwrap();
        assert_eq!(
            keys.iter().map(EnvelopeKey::id).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
        assert!(!format!("{keys:?}").contains(&secret));
        assert_eq!(EnvelopeKey::parse_list(" ").unwrap(), []);
        let err = |s: &str| EnvelopeKey::parse_list(s).unwrap_err();
        assert_eq!(err("nocolon"), EnvelopeKeyError::NotIdSecret);
        assert_eq!(err(&format!("a b:{secret}")), EnvelopeKeyError::BadId);
        assert_eq!(err(&format!(":{secret}")), EnvelopeKeyError::BadId);
        assert_eq!(err("k:short"), EnvelopeKeyError::TooShort("k".into()));
        assert_eq!(
            err(&format!("k:{secret},k:{secret}")),
            EnvelopeKeyError::Repeated("k".into())
        );
        // A secret may itself hold colons.
        let k = EnvelopeKey::parse(&format!("k:{secret}:x")).unwrap();
        assert_eq!(k.expose().len(), 34);
    }
}
