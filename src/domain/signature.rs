//! Standard Webhooks signatures: what a subscriber's library checks on every delivery of an
//! outcome event.
//!
//! The scheme (the one Svix and many API vendors use) signs `"{id}.{timestamp}.{body}"` with
//! HMAC-SHA256 under the bytes of the secret (the base64 after `whsec_`) and sends
//! `v1,<base64 signature>`; several signatures travel space-separated, so during a rotation a
//! receiver that knows either the new or the old secret accepts the delivery. Pure: no I/O.

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// The prefix every Standard Webhooks secret carries.
const SECRET_PREFIX: &str = "whsec_";

/// The shortest and longest key the specification allows, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// One subscriber's signing key (the decoded bytes of a `whsec_` secret).
#[derive(Clone)]
pub struct SigningKey(SecretSlice<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Why a secret cannot be used; never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected a secret starting with \"whsec_\"")]
    Prefix,
    #[error("the part after \"whsec_\" is not standard base64")]
    Base64,
    #[error("the key is {0} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    Length(usize),
}

impl SigningKey {
    /// Reads a `whsec_<base64>` secret.
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| KeyError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(Self(SecretSlice::from(key)))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length, so this never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of every length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per active key, space-separated.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_example_signs_as_published() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_active_key_signs_and_the_header_joins_them_with_spaces() {
        let current = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let previous =
            SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("other key");
        let header = signature_header(&[current.clone(), previous.clone()], "m", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [current.sign("m", 1, b"{}"), previous.sign("m", 1, b"{}")]
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn bad_secrets_are_told_apart_without_echoing_them() {
        assert_eq!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(),
            Some(KeyError::Prefix)
        );
        assert_eq!(SigningKey::parse("whsec_***").err(), Some(KeyError::Base64));
        assert_eq!(
            SigningKey::parse("whsec_c2hvcnQ=").err(),
            Some(KeyError::Length(5))
        );
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        assert_eq!(format!("{key:?}"), "[REDACTED]");
    }
}
