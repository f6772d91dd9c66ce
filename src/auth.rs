//! JWT verification and minting: token text in, `Principal` out. Pure.
//!
//! The algorithm is pinned to HS256 (no `none`, no RS/HS confusion: any other
//! header algorithm fails the signature check). `role` and `exp` are required
//! as Supabase Realtime requires them; `exp` and `nbf` are checked here with
//! no leeway, and a wrongly typed time claim is an error rather than "absent".
//! Error texts are Supabase's. Owns nothing about who may see which row
//! beyond `Principal::sees_owner`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

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
}

impl Principal {
    /// The service role sees every row of every enabled table.
    pub fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// The user id whose owned rows this principal may see (not for anon).
    pub fn owner_id(&self) -> Option<&str> {
        if self.role == "anon" || self.is_service() {
            return None;
        }
        self.sub.as_deref()
    }

    /// May this principal see a row of an owner-column table owned by `owner`?
    pub fn sees_owner(&self, owner: Option<&str>) -> bool {
        self.is_service() || (owner.is_some() && self.owner_id() == owner)
    }
}

/// Verifies and mints tokens with one HS256 secret.
#[derive(Clone)]
pub struct Verifier {
    decoding: DecodingKey,
    encoding: EncodingKey,
}

impl Verifier {
    /// A verifier for `secret`.
    pub fn new(secret: &str) -> Self {
        Verifier { decoding: DecodingKey::from_secret(secret.as_bytes()), encoding: EncodingKey::from_secret(secret.as_bytes()) }
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
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::BadSignature);
        }
        let claims = jsonwebtoken::decode::<Map<String, Value>>(&token, &self.decoding, &signature_only())
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            })?
            .claims;
        principal_from_claims(&claims, now)
    }

    /// Signs a token for `sub` with `role`, valid for `ttl_secs`.
    pub fn mint(&self, sub: Option<&str>, role: &str, ttl_secs: i64) -> String {
        self.mint_at(sub, role, now_secs(), ttl_secs)
    }

    /// Signs a token as if issued at `iat`.
    pub fn mint_at(&self, sub: Option<&str>, role: &str, iat: i64, ttl_secs: i64) -> String {
        let mut claims = json!({ "role": role, "iat": iat, "exp": iat + ttl_secs });
        if let Some(sub) = sub {
            claims["sub"] = json!(sub);
        }
        if role == "authenticated" {
            claims["aud"] = json!("authenticated");
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
}

/// A validation that checks only the signature and algorithm: time claims are
/// checked by `principal_from_claims` so a mistyped claim cannot slip through.
fn signature_only() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn principal_from_claims(claims: &Map<String, Value>, now: i64) -> Result<Principal, AuthError> {
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
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(Principal { role: role.to_owned(), sub, exp })
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
        let p = v.verify(&v.mint(Some("u1"), "authenticated", 60)).unwrap();
        assert_eq!((p.role.as_str(), p.sub.as_deref()), ("authenticated", Some("u1")));
    }

    #[test]
    fn expired_tokens_say_how_long_ago() {
        let v = Verifier::new(SECRET);
        let t = v.mint_at(Some("u1"), "authenticated", 1_000, 10);
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
        let user = Principal { role: "authenticated".into(), sub: Some("u1".into()), exp: 0 };
        assert!(user.sees_owner(Some("u1")));
        assert!(!user.sees_owner(Some("u2")));
        assert!(!user.sees_owner(None));
        let anon = Principal { role: "anon".into(), sub: Some("u1".into()), exp: 0 };
        assert!(!anon.sees_owner(Some("u1")));
        let service = Principal { role: "service_role".into(), sub: None, exp: 0 };
        assert!(service.sees_owner(Some("anyone")));
    }
}
