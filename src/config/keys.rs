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
