//! JWT verification and minting: token text in, `Principal` out. Pure.
//!
//! Keys, as Supabase Realtime picks them: an HS256/384/512 token is checked
//! with the `oct` JWK its `kid` names, else with the project secret (pinned
//! to HS256); an RS/ES/EdDSA token with the JWK its `kid` names, pinned to
//! that key's algorithm (see `jwk`). No `none`, and no key verifies under an
//! algorithm other than its own, so a public key is never an HMAC secret.
//! `role` and `exp` are required as Supabase Realtime requires them; `exp`
//! and `nbf` are checked here with no leeway, and a wrongly typed time claim
//! is an error rather than "absent". Error texts are Supabase's.
//!
//! - `jwk`: a JSON Web Key Set read into pinned keys.
//! - `claims`: the claim a table's owner column is compared with.
//!
//! Fetching a key set is IO and lives in `keyring`; this module only reads
//! the set it is given.

pub mod claims;
pub mod jwk;

pub use claims::ClaimPath;
pub use jwk::KeySet;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

/// Longest `kid` repeated back in an error: it is the client's own text.
const MAX_KID_ECHO: usize = 128;

/// Why a token was refused; `Display` is Supabase's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("API key is missing")]
    Missing,
    /// Not three base64 parts of JSON, or an unknown algorithm.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// Signed with another key or algorithm.
    #[error("Failed to validate JWT signature")]
    BadSignature,
    /// An asymmetric token whose `kid` no known key has (after a refresh, when there is a source).
    #[error("Failed to generate JWT signer for key ID (kid) {0:?}, check your JWT secret or JWKS configuration")]
    UnknownKey(String),
    /// No key could verify this token at all (an asymmetric token without `kid`, or no secret).
    #[error("Failed to generate JWT signer, check your JWT secret or JWKS configuration")]
    NoKey,
    /// `role` or `exp` absent.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
    /// `exp` (or `nbf`) not a number.
    #[error("Token expiration time is invalid")]
    BadTimeClaim,
    /// `exp` has passed.
    #[error("Token has expired {0} seconds ago")]
    Expired(i64),
    /// `nbf` is still in the future.
    #[error("Token is not valid yet")]
    NotYetValid,
}

impl AuthError {
    /// The `Code: message` reason Supabase puts in a refused join's reply.
    pub fn join_reason(&self) -> String {
        let code = match self {
            AuthError::Malformed | AuthError::Missing => "MalformedJWT",
            AuthError::BadSignature => "JwtSignatureError",
            AuthError::UnknownKey(_) | AuthError::NoKey => "JwtSignerError",
            _ => "InvalidJWTToken",
        };
        format!("{code}: {self}")
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `role` claim: `anon`, `authenticated`, `service_role`, or another.
    pub role: String,
    /// The `sub` claim, if any.
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Every claim, for visibility rules on other claims than `sub`.
    pub claims: Arc<Map<String, Value>>,
}

impl Principal {
    /// A principal with only `role`, `sub` and `exp` claims (tests and fixtures).
    pub fn new(role: &str, sub: Option<&str>, exp: i64) -> Self {
        let mut claims = Map::new();
        claims.insert("role".into(), json!(role));
        claims.insert("exp".into(), json!(exp));
        if let Some(sub) = sub {
            claims.insert("sub".into(), json!(sub));
        }
        Principal { role: role.to_owned(), sub: sub.map(str::to_owned), exp, claims: Arc::new(claims) }
    }

    /// The service role sees every row of every enabled table.
    pub fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// Whether this principal is a signed-in user (not anon, not the service role).
    fn is_user(&self) -> bool {
        self.role != "anon" && !self.is_service()
    }

    /// The user id whose owned rows this principal may see (not for anon).
    pub fn owner_id(&self) -> Option<&str> {
        if !self.is_user() {
            return None;
        }
        self.sub.as_deref()
    }

    /// The owners whose rows this principal may see through `claim`
    /// (empty for anon and the service role, which is decided apart).
    pub fn owners(&self, claim: &ClaimPath) -> Vec<String> {
        if !self.is_user() {
            return Vec::new();
        }
        claim.owners(&self.claims)
    }

    /// May this principal see a row whose owner column (compared with `claim`) holds `owner`?
    pub fn sees_owner(&self, claim: &ClaimPath, owner: Option<&str>) -> bool {
        self.is_service() || owner.is_some_and(|o| self.is_user() && claim.names(&self.claims, o))
    }
}

/// Verifies tokens with an HS256 secret and a JSON Web Key Set.
#[derive(Clone, Default)]
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: KeySet,
}

impl Verifier {
    /// A verifier for one HS256 `secret` and no key set.
    pub fn new(secret: &str) -> Self {
        Verifier::with_keys(Some(secret), KeySet::default())
    }

    /// A verifier for an optional HS256 secret and a key set.
    pub fn with_keys(secret: Option<&str>, keys: KeySet) -> Self {
        Verifier { secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())), keys }
    }

    /// The same secret with another key set.
    pub fn replacing_keys(&self, keys: KeySet) -> Self {
        Verifier { secret: self.secret.clone(), keys }
    }

    /// Checks a token at the current time.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_at(token, now_secs())
    }

    /// Checks a token as of `now` (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let token: String = token.chars().filter(|c| !c.is_whitespace()).collect();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(&token).map_err(|_| AuthError::Malformed)?;
        let (key, alg) = self.key_for(header.alg, header.kid.as_deref())?;
        if header.alg != alg {
            return Err(AuthError::BadSignature);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(&token, key, &signature_only(alg))
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?
            .claims;
        principal_from_claims(claims, now)
    }

    /// The key that may verify a token with this header, and the one algorithm it allows.
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<(&DecodingKey, Algorithm), AuthError> {
        let hmac = is_hmac(alg);
        let from_set = kid.and_then(|k| self.keys.get(k)).filter(|key| is_hmac(key.alg) == hmac);
        match (from_set, hmac, kid) {
            (Some(key), _, _) => Ok((&key.decoding, key.alg)),
            // Supabase's own HS256 tokens carry a `kid` no published set has: the secret checks them.
            (None, true, _) => self.secret.as_ref().map(|s| (s, Algorithm::HS256)).ok_or(AuthError::NoKey),
            (None, false, Some(kid)) => Err(AuthError::UnknownKey(kid.chars().take(MAX_KID_ECHO).collect())),
            (None, false, None) => Err(AuthError::NoKey),
        }
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Signs HS256 tokens with the project secret (the demo, `rowcast token` and tests).
#[derive(Clone)]
pub struct Minter {
    encoding: EncodingKey,
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &str) -> Self {
        Minter { encoding: EncodingKey::from_secret(secret.as_bytes()) }
    }

    /// Signs a token for `sub` with `role`, valid for `ttl_secs`.
    pub fn mint(&self, sub: Option<&str>, role: &str, ttl_secs: i64) -> String {
        self.mint_at(sub, role, now_secs(), ttl_secs)
    }

    /// Signs a token as if issued at `iat`.
    pub fn mint_at(&self, sub: Option<&str>, role: &str, iat: i64, ttl_secs: i64) -> String {
        self.mint_claims(sub, role, iat, ttl_secs, Map::new())
    }

    /// Signs a token with `extra` claims beside the standard ones.
    pub fn mint_claims(&self, sub: Option<&str>, role: &str, iat: i64, ttl_secs: i64, extra: Map<String, Value>) -> String {
        let mut claims = extra;
        claims.insert("role".into(), json!(role));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + ttl_secs));
        if let Some(sub) = sub {
            claims.insert("sub".into(), json!(sub));
        }
        if role == "authenticated" {
            claims.insert("aud".into(), json!("authenticated"));
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// A validation that checks only the signature and algorithm: time claims are
/// checked by `principal_from_claims` so a mistyped claim cannot slip through.
fn signature_only(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn principal_from_claims(claims: Map<String, Value>, now: i64) -> Result<Principal, AuthError> {
    let role = claims.get("role").and_then(Value::as_str);
    let exp = claims.get("exp");
    let (Some(role), Some(exp)) = (role, exp) else {
        return Err(AuthError::MissingClaims);
    };
    let exp = time_claim(exp)?;
    if exp <= now {
        return Err(AuthError::Expired(now - exp));
    }
    if let Some(nbf) = claims.get("nbf") {
        if time_claim(nbf)? > now {
            return Err(AuthError::NotYetValid);
        }
    }
    let role = role.to_owned();
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(Principal { role, sub, exp, claims: Arc::new(claims) })
}

fn time_claim(v: &Value) -> Result<i64, AuthError> {
    v.as_f64().map(|f| f.round() as i64).ok_or(AuthError::BadTimeClaim)
}

/// The token of an HTTP request: the `Authorization: Bearer` value, else the
/// `apikey` header, as supabase-js sends them.
pub fn request_token<'a>(authorization: Option<&'a str>, apikey: Option<&'a str>) -> Option<&'a str> {
    authorization.and_then(|v| v.strip_prefix("Bearer ")).or(apikey)
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-at-least-16-bytes";

    fn sign(claims: Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_its_principal() {
        let v = Verifier::new(SECRET);
        let p = v.verify(&Minter::new(SECRET).mint(Some("u1"), "authenticated", 60)).unwrap();
        assert_eq!((p.role.as_str(), p.sub.as_deref()), ("authenticated", Some("u1")));
    }

    #[test]
    fn expired_tokens_say_how_long_ago() {
        let v = Verifier::new(SECRET);
        let t = Minter::new(SECRET).mint_at(Some("u1"), "authenticated", 1_000, 10);
        assert_eq!(v.verify_at(&t, 1_017), Err(AuthError::Expired(7)));
        assert_eq!(AuthError::Expired(7).to_string(), "Token has expired 7 seconds ago");
    }

    #[test]
    fn role_and_exp_are_required() {
        let v = Verifier::new(SECRET);
        let t = sign(json!({"sub": "u1", "exp": now_secs() + 60}), Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::MissingClaims));
        let t = sign(json!({"role": "anon"}), Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::MissingClaims));
    }

    #[test]
    fn a_string_exp_or_nbf_is_refused_not_ignored() {
        let v = Verifier::new(SECRET);
        let t = sign(json!({"role": "anon", "exp": "9999999999"}), Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::BadTimeClaim));
        let t = sign(json!({"role": "anon", "exp": now_secs() + 60, "nbf": "0"}), Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::BadTimeClaim));
    }

    #[test]
    fn a_future_nbf_is_refused() {
        let v = Verifier::new(SECRET);
        let t = sign(json!({"role": "anon", "exp": now_secs() + 60, "nbf": now_secs() + 30}), Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::NotYetValid));
    }

    #[test]
    fn other_secrets_and_algorithms_fail_the_signature() {
        let v = Verifier::new(SECRET);
        let claims = json!({"role": "anon", "exp": now_secs() + 60});
        assert_eq!(v.verify(&sign(claims.clone(), Algorithm::HS256, "another-secret-of-16-bytes")), Err(AuthError::BadSignature));
        assert_eq!(v.verify(&sign(claims, Algorithm::HS384, SECRET)), Err(AuthError::BadSignature));
    }

    #[test]
    fn unsigned_and_garbage_tokens_are_malformed() {
        let v = Verifier::new(SECRET);
        // header {"alg":"none","typ":"JWT"}, claims {"role":"service_role","exp":9999999999}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none), Err(AuthError::Malformed));
        assert_eq!(v.verify("not-a-jwt"), Err(AuthError::Malformed));
        assert_eq!(v.verify("  "), Err(AuthError::Missing));
    }

    #[test]
    fn a_bearer_token_wins_over_the_apikey_header() {
        assert_eq!(request_token(Some("Bearer user"), Some("anon")), Some("user"));
        assert_eq!(request_token(Some("Basic x"), Some("anon")), Some("anon"));
        assert_eq!(request_token(None, None), None);
    }

    #[test]
    fn join_reasons_carry_supabase_codes() {
        assert_eq!(AuthError::Malformed.join_reason(), "MalformedJWT: The token provided is not a valid JWT");
        assert_eq!(AuthError::Expired(3).join_reason(), "InvalidJWTToken: Token has expired 3 seconds ago");
    }

    #[test]
    fn users_see_only_their_own_rows_and_anon_sees_none() {
        let sub = ClaimPath::sub();
        let user = Principal::new("authenticated", Some("u1"), 0);
        assert!(user.sees_owner(&sub, Some("u1")));
        assert!(!user.sees_owner(&sub, Some("u2")));
        assert!(!user.sees_owner(&sub, None));
        let anon = Principal::new("anon", Some("u1"), 0);
        assert!(!anon.sees_owner(&sub, Some("u1")));
        let service = Principal::new("service_role", None, 0);
        assert!(service.sees_owner(&sub, Some("anyone")));
    }

    #[test]
    fn a_claim_other_than_sub_names_the_owners_a_user_sees() {
        let extra = json!({"app_metadata": {"org_id": "acme", "team_ids": ["red", "blue"]}}).as_object().cloned().unwrap();
        let t = Minter::new(SECRET).mint_claims(Some("u1"), "authenticated", now_secs(), 60, extra);
        let p = Verifier::new(SECRET).verify(&t).unwrap();
        let org = ClaimPath::parse("app_metadata.org_id").unwrap();
        let teams = ClaimPath::parse("app_metadata.team_ids").unwrap();
        assert!(p.sees_owner(&org, Some("acme")) && !p.sees_owner(&org, Some("u1")));
        assert!(p.sees_owner(&teams, Some("blue")) && !p.sees_owner(&teams, Some("green")));
    }

    fn with_header(header: Header, claims: Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn hs256_with_kid(kid: &str) -> Header {
        Header { kid: Some(kid.into()), ..Header::new(Algorithm::HS256) }
    }

    #[test]
    fn an_hmac_token_whose_kid_names_an_oct_key_is_checked_with_that_key_and_others_with_the_secret() {
        let (keys, _) = KeySet::parse(r#"{"keys": [{"kty": "oct", "kid": "k1", "k": "b2N0LWtleS1vZi1zaXh0ZWVuLWJ5dGVz"}]}"#).unwrap();
        let v = Verifier::with_keys(Some(SECRET), keys);
        let claims = json!({"role": "anon", "exp": now_secs() + 60});
        assert!(v.verify(&with_header(hs256_with_kid("k1"), claims.clone(), b"oct-key-of-sixteen-bytes")).is_ok());
        assert_eq!(v.verify(&with_header(hs256_with_kid("k1"), claims.clone(), SECRET.as_bytes())), Err(AuthError::BadSignature));
        // Supabase's own tokens carry a kid that no published set holds.
        assert!(v.verify(&with_header(hs256_with_kid("other"), claims, SECRET.as_bytes())).is_ok());
    }

    #[test]
    fn an_asymmetric_token_with_an_unknown_or_no_kid_gets_supabases_signer_error() {
        let v = Verifier::new(SECRET);
        let header = |kid: Option<&str>| {
            let h = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
            let b64 = |v: &Value| base64_url(v.to_string().as_bytes());
            format!("{}.{}.c2ln", b64(&h), b64(&json!({"role": "anon", "exp": now_secs() + 60})))
        };
        let e = v.verify(&header(Some("gone"))).unwrap_err();
        assert_eq!(e, AuthError::UnknownKey("gone".into()));
        assert_eq!(
            e.join_reason(),
            "JwtSignerError: Failed to generate JWT signer for key ID (kid) \"gone\", check your JWT secret or JWKS configuration"
        );
        assert_eq!(v.verify(&header(None)), Err(AuthError::NoKey));
    }

    #[test]
    fn without_a_secret_hmac_tokens_have_no_key() {
        let v = Verifier::with_keys(None, KeySet::default());
        let t = Minter::new(SECRET).mint(None, "anon", 60);
        assert_eq!(v.verify(&t), Err(AuthError::NoKey));
    }

    fn base64_url(bytes: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
