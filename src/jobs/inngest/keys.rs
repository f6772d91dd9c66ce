//! An Inngest signing key: `signkey-<env>-<hex>`, or the bare hex.
//!
//! Apps prove who they are on `/fn/register` with `Authorization: Bearer
//! signkey-<env>-<sha256 of the hex-decoded key, in hex>`; requests to an app
//! carry `X-Inngest-Signature: t=<unix secs>&s=<hex HMAC-SHA256>`, keyed by
//! the key's characters after the prefix, over the canonical JSON body
//! followed by `t`. Never printed: `Debug` shows only the prefix.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The shared signing key.
#[derive(Clone)]
pub struct SigningKey {
    prefix: String,
    hex: String,
}

/// Why a configured signing key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the Inngest signing key must be hex (even length, after an optional signkey-<env>- prefix), as the SDK's INNGEST_SIGNING_KEY is"
    )]
    NotHex,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}[redacted])", self.prefix)
    }
}

impl SigningKey {
    /// Reads a key as the SDK takes it from `INNGEST_SIGNING_KEY`.
    pub fn parse(text: &str) -> Result<SigningKey, KeyError> {
        let text = text.trim();
        let (prefix, hex) = match text.strip_prefix("signkey-").and_then(|rest| rest.split_once('-')) {
            Some((env, hex)) if !env.is_empty() && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                (format!("signkey-{env}-"), hex)
            }
            _ => (String::new(), text),
        };
        if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex);
        }
        Ok(SigningKey { prefix, hex: hex.to_owned() })
    }

    /// The bearer token an app holding this key sends to `/fn/register`.
    pub fn bearer(&self) -> String {
        let bytes: Vec<u8> =
            (0..self.hex.len()).step_by(2).map(|i| u8::from_str_radix(&self.hex[i..i + 2], 16).expect("checked at parse")).collect();
        format!("{}{}", self.prefix, to_hex(&Sha256::digest(bytes)))
    }

    /// Whether `authorization` (the header's value) is this key's bearer token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let expected = self.bearer();
        authorization.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|got| constant_time_eq(got.as_bytes(), expected.as_bytes()))
    }

    /// The `X-Inngest-Signature` value for `canonical_body` (RFC 8785 JSON) at `t`.
    pub fn sign(&self, canonical_body: &str, t: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.hex.as_bytes()).expect("HMAC takes any key length");
        mac.update(canonical_body.as_bytes());
        mac.update(t.to_string().as_bytes());
        format!("t={t}&s={}", to_hex(&mac.finalize().into_bytes()))
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal bytes, compared in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_keeps_the_prefix_and_hashes_the_decoded_key() {
        let key = SigningKey::parse("signkey-test-0123abcd").unwrap();
        // sha256 of the four bytes 01 23 ab cd.
        let hash = to_hex(&Sha256::digest([0x01, 0x23, 0xab, 0xcd]));
        assert_eq!(key.bearer(), format!("signkey-test-{hash}"));
        assert!(key.admits(Some(&format!("Bearer signkey-test-{hash}"))));
        assert!(!key.admits(Some("Bearer undefined")) && !key.admits(None));
        assert_eq!(SigningKey::parse("0123abcd").unwrap().bearer(), hash, "a bare key has no prefix");
    }

    #[test]
    fn keys_that_are_not_hex_are_refused_and_never_printed() {
        assert_eq!(SigningKey::parse("signkey-prod-xyz").unwrap_err(), KeyError::NotHex);
        assert_eq!(SigningKey::parse("abc").unwrap_err(), KeyError::NotHex);
        let key = SigningKey::parse("signkey-prod-00ff00ff").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(signkey-prod-[redacted])");
    }

    #[test]
    fn signatures_cover_the_body_then_the_timestamp_with_the_key_text() {
        let key = SigningKey::parse("signkey-test-00ff").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"00ff").unwrap();
        mac.update(b"{\"url\":\"u\"}1700000000");
        assert_eq!(key.sign("{\"url\":\"u\"}", 1_700_000_000), format!("t=1700000000&s={}", to_hex(&mac.finalize().into_bytes())));
    }
}
