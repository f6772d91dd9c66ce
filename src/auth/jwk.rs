//! A JSON Web Key Set read into verification keys, each pinned to one
//! algorithm. Pure: the text comes from the caller (a file or a URL).
//!
//! Owns which algorithm a key may verify: the JWK's own `alg` when it names
//! one, else the single algorithm its type and curve imply (RSA: RS256, EC
//! P-256: ES256, P-384: ES384, OKP Ed25519: EdDSA, oct: HS256). A token whose
//! header names another algorithm than its key's is refused, so no public key
//! can be used as an HMAC secret and no RSA key for another padding. Keys this
//! build cannot use (encryption keys, P-521, X25519, a malformed one) are
//! skipped and named, never fatal: one odd key must not lock every user out.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// One usable key of a set.
#[derive(Clone)]
pub struct Key {
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    pub decoding: DecodingKey,
}

/// Verification keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
}

/// Why a whole set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    /// Not JSON, or no `keys` array.
    #[error("not a JSON Web Key Set (expected {{\"keys\": [...]}}): {0}")]
    NotASet(String),
}

/// The fields of a JWK this module reads; the rest are ignored.
#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Reads a set; returns it with one line per skipped key saying why.
    pub fn parse(text: &str) -> Result<(KeySet, Vec<String>), JwkError> {
        let raw: RawSet = serde_json::from_str(text).map_err(|e| JwkError::NotASet(e.to_string()))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in raw.keys.into_iter().enumerate() {
            match serde_json::from_value::<RawKey>(value).map_err(|e| e.to_string()).and_then(key) {
                Ok((kid, key)) => {
                    set.keys.insert(kid, key);
                }
                Err(why) => skipped.push(format!("key {i}: {why}")),
            }
        }
        Ok((set, skipped))
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key(raw: RawKey) -> Result<(String, Key), String> {
    let kid = raw.kid.clone().ok_or("no `kid`: tokens could not name it")?;
    if raw.usage.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!("`use` is {:?}, not \"sig\"", raw.usage.unwrap_or_default()));
    }
    let alg = pinned_alg(&raw)?;
    let field = |v: &Option<String>, name: &str| v.clone().ok_or(format!("{} key without `{name}`", raw.kty));
    let bad = |e: jsonwebtoken::errors::Error| format!("unusable {} key: {e}", raw.kty);
    let decoding = match raw.kty.as_str() {
        "RSA" => DecodingKey::from_rsa_components(&field(&raw.n, "n")?, &field(&raw.e, "e")?).map_err(bad)?,
        "EC" => DecodingKey::from_ec_components(&field(&raw.x, "x")?, &field(&raw.y, "y")?).map_err(bad)?,
        "OKP" => DecodingKey::from_ed_components(&field(&raw.x, "x")?).map_err(bad)?,
        "oct" => DecodingKey::from_base64_secret(&url_to_standard_base64(&field(&raw.k, "k")?)).map_err(bad)?,
        other => return Err(format!("unsupported key type {other:?}")),
    };
    Ok((kid, Key { alg, decoding }))
}

/// The algorithm a key is pinned to, checked against its type and curve.
fn pinned_alg(raw: &RawKey) -> Result<Algorithm, String> {
    use Algorithm::*;
    let implied = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => RS256,
        ("EC", Some("P-256")) => ES256,
        ("EC", Some("P-384")) => ES384,
        ("OKP", Some("Ed25519")) => EdDSA,
        ("oct", _) => HS256,
        (kty, crv) => return Err(format!("unsupported key type {kty:?} with curve {crv:?}")),
    };
    let Some(named) = raw.alg.as_deref() else { return Ok(implied) };
    let alg: Algorithm = named.parse().map_err(|_| format!("unsupported `alg` {named:?}"))?;
    let fits = match raw.kty.as_str() {
        "RSA" => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        "oct" => matches!(alg, HS256 | HS384 | HS512),
        _ => alg == implied,
    };
    if !fits {
        return Err(format!("`alg` {named:?} does not fit a {} key", raw.kty));
    }
    Ok(alg)
}

/// JWK `k` is unpadded base64url; the decoder wants standard base64.
fn url_to_standard_base64(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while s.len() % 4 != 0 {
        s.push('=');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn parse(keys: serde_json::Value) -> (KeySet, Vec<String>) {
        KeySet::parse(&json!({ "keys": keys }).to_string()).unwrap()
    }

    #[test]
    fn each_key_is_pinned_to_its_alg_or_the_one_its_type_implies() {
        let (set, skipped) = parse(json!([
            {"kty": "RSA", "kid": "r", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "r5", "alg": "RS512", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
        ]));
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.get("r").unwrap().alg, Algorithm::RS256);
        assert_eq!(set.get("r5").unwrap().alg, Algorithm::RS512);
        assert_eq!(set.get("h").unwrap().alg, Algorithm::HS256);
    }

    #[test]
    fn an_alg_that_does_not_fit_the_key_type_skips_the_key() {
        let (set, skipped) = parse(json!([
            {"kty": "RSA", "kid": "r", "alg": "HS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "OKP", "kid": "o", "crv": "Ed25519", "alg": "ES256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]));
        assert!(set.is_empty());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("does not fit a RSA key"), "{skipped:?}");
    }

    #[test]
    fn odd_keys_are_skipped_and_named_while_the_rest_load() {
        let (set, skipped) = parse(json!([
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AAAA"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            "not an object",
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]));
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("ed").unwrap().alg, Algorithm::EdDSA);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
    }

    #[test]
    fn text_that_is_not_a_key_set_is_an_error() {
        assert!(KeySet::parse("{\"keys\": 3}").is_err());
        assert!(KeySet::parse("<html>").is_err());
    }
}
