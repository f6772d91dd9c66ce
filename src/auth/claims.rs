//! Which claim of a token a table's owner column is compared with. Pure.
//!
//! A `ClaimPath` is written as dot-separated keys into the claims object:
//! `sub`, `app_metadata.org_id`, `app_metadata.team_ids`. A key holding dots
//! itself (Auth0's namespaced claims) is written in double quotes:
//! `"https://example.com/org".id`. The value found there names the owners a
//! principal stands for: a string or a number is one owner, an array is one
//! owner per string or number in it (membership), anything else none.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

/// Most keys one path may have: claims are shallow, and the path is walked per token.
const MAX_DEPTH: usize = 8;

/// A parsed path into a token's claims; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClaimPath {
    text: Arc<str>,
    keys: Arc<[String]>,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimPathError {
    #[error("claim path is empty")]
    Empty,
    #[error("claim path {0:?} has an empty key (check for stray or doubled dots)")]
    EmptyKey(String),
    #[error("claim path {0:?} has an unclosed double quote")]
    Unclosed(String),
    #[error("claim path {0:?} is deeper than {MAX_DEPTH} keys")]
    TooDeep(String),
}

impl ClaimPath {
    /// `sub`: the owner is the user the token speaks for.
    pub fn sub() -> Self {
        ClaimPath { text: "sub".into(), keys: vec!["sub".to_owned()].into() }
    }

    /// Parses `a.b."c.d"`.
    pub fn parse(text: &str) -> Result<Self, ClaimPathError> {
        if text.is_empty() {
            return Err(ClaimPathError::Empty);
        }
        let mut keys = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut key = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => key.push(c),
                        None => return Err(ClaimPathError::Unclosed(text.to_owned())),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != '.') {
                    key.push(c);
                }
            }
            if key.is_empty() {
                return Err(ClaimPathError::EmptyKey(text.to_owned()));
            }
            keys.push(key);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(ClaimPathError::EmptyKey(text.to_owned())),
            }
        }
        if keys.len() > MAX_DEPTH {
            return Err(ClaimPathError::TooDeep(text.to_owned()));
        }
        Ok(ClaimPath { text: text.into(), keys: keys.into() })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The owners `claims` name at this path (see the module header).
    pub fn owners(&self, claims: &Map<String, Value>) -> Vec<String> {
        match self.value(claims) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Whether `claims` name `owner` at this path; allocates nothing (the fan-out asks per subscriber).
    pub fn names(&self, claims: &Map<String, Value>, owner: &str) -> bool {
        let is = |v: &Value| match v {
            Value::String(s) => s == owner,
            Value::Number(n) => n.to_string() == owner,
            _ => false,
        };
        match self.value(claims) {
            Some(Value::Array(items)) => items.iter().any(is),
            Some(v) => is(v),
            None => false,
        }
    }

    fn value<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let mut value = claims.get(&self.keys[0]);
        for key in &self.keys[1..] {
            value = value.and_then(|v| v.get(key));
        }
        value
    }
}

/// A string as it is, a number as Postgres's `->>` prints it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl fmt::Debug for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimPath({})", self.text)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_nested_string_claim_names_one_owner() {
        let c = claims(json!({"sub": "u1", "app_metadata": {"org_id": "acme"}}));
        assert_eq!(ClaimPath::parse("app_metadata.org_id").unwrap().owners(&c), ["acme"]);
        assert_eq!(ClaimPath::sub().owners(&c), ["u1"]);
    }

    #[test]
    fn an_array_claim_names_each_member_and_numbers_read_as_postgres_prints_them() {
        let c = claims(json!({"app_metadata": {"team_ids": ["t1", 7, null, {"x": 1}, "t2"]}}));
        assert_eq!(ClaimPath::parse("app_metadata.team_ids").unwrap().owners(&c), ["t1", "7", "t2"]);
    }

    #[test]
    fn a_missing_or_non_scalar_claim_names_no_one() {
        let c = claims(json!({"app_metadata": {"org": {"id": 1}}, "flag": true}));
        assert!(ClaimPath::parse("app_metadata.org").unwrap().owners(&c).is_empty());
        assert!(ClaimPath::parse("app_metadata.nope.deeper").unwrap().owners(&c).is_empty());
        assert!(ClaimPath::parse("flag").unwrap().owners(&c).is_empty());
    }

    #[test]
    fn quoted_keys_may_hold_dots() {
        let c = claims(json!({"https://example.com/claims": {"org": "acme"}}));
        let path = ClaimPath::parse("\"https://example.com/claims\".org").unwrap();
        assert_eq!(path.owners(&c), ["acme"]);
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(ClaimPath::parse(""), Err(ClaimPathError::Empty));
        assert!(matches!(ClaimPath::parse("a..b"), Err(ClaimPathError::EmptyKey(_))));
        assert!(matches!(ClaimPath::parse("a."), Err(ClaimPathError::EmptyKey(_))));
        assert!(matches!(ClaimPath::parse("\"a.b"), Err(ClaimPathError::Unclosed(_))));
        assert!(matches!(ClaimPath::parse("\"a\"b"), Err(ClaimPathError::EmptyKey(_))));
        assert!(matches!(ClaimPath::parse("a.b.c.d.e.f.g.h.i"), Err(ClaimPathError::TooDeep(_))));
    }
}
