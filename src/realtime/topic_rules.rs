//! Topic rules: private-channel rights from the config file, checked in
//! memory, for databases without RLS policies on `realtime.messages`. Pure.
//!
//! ```toml
//! [[realtime.topics]]
//! pattern = "user:{sub}"                     # the user's own topic
//! receive = true
//! send = true
//! presence = true
//!
//! [[realtime.topics]]
//! pattern = "org:{app_metadata.org_id}:*"    # any topic of the user's organisation
//! receive = true
//! ```
//!
//! A pattern is the sub-topic (without `realtime:`) with `{claim path}`
//! placeholders (see `auth::ClaimPath`; an array claim matches any member)
//! and `*` for any run of characters. The first rule whose pattern matches
//! the topic, with the token's claims put in, decides: `receive` lets the
//! channel join and hear broadcasts and presence, `send` lets it broadcast,
//! `presence` lets it track. No rule matching means no rights. The service
//! role may do everything, as its BYPASSRLS does on Supabase. Matching is a
//! regex built per join (linear time whatever the topic), so a client's
//! topic name cannot make it slow.

use regex::Regex;
use serde::Deserialize;

use super::policies::Policies;
use crate::auth::{ClaimPath, Principal};

/// Most values one array claim may put into a pattern (they become an alternation).
const MAX_CLAIM_VALUES: usize = 100;

/// The configured rules, in order.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Vec<Piece>,
    receive: bool,
    send: bool,
    presence: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Claim(ClaimPath),
    Any,
}

/// Why the rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicRuleError {
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("realtime.topics[{index}] pattern {pattern:?}: {why}")]
    Pattern { index: usize, pattern: String, why: String },
}

#[derive(Deserialize, Default)]
struct RawFile {
    #[serde(default)]
    realtime: RawRealtime,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    #[serde(default)]
    topics: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    pattern: String,
    #[serde(default)]
    receive: bool,
    #[serde(default)]
    send: bool,
    #[serde(default)]
    presence: bool,
}

impl TopicRules {
    /// The `[[realtime.topics]]` of a config file (other sections are not this module's).
    pub fn parse(text: &str) -> Result<TopicRules, TopicRuleError> {
        let raw: RawFile = toml::from_str(text)?;
        let rules = raw
            .realtime
            .topics
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let pattern = pieces(&r.pattern).map_err(|why| TopicRuleError::Pattern { index, pattern: r.pattern.clone(), why })?;
                Ok(Rule { pattern, receive: r.receive, send: r.send, presence: r.presence })
            })
            .collect::<Result<_, TopicRuleError>>()?;
        Ok(TopicRules { rules })
    }

    /// True when no rule is configured (private channels then ask the RLS policies).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What `principal` may do on private topic `topic` (the sub-topic).
    pub fn rights(&self, principal: &Principal, topic: &str) -> Policies {
        if principal.is_service() {
            return Policies { broadcast_read: true, broadcast_write: true, presence_read: true, presence_write: true };
        }
        let Some(rule) = self.rules.iter().find(|r| matches(&r.pattern, principal, topic)) else { return Policies::default() };
        Policies { broadcast_read: rule.receive, presence_read: rule.receive, broadcast_write: rule.send, presence_write: rule.presence }
    }
}

/// Splits `a:{sub}:*` into text, claim and wildcard pieces.
fn pieces(pattern: &str) -> Result<Vec<Piece>, String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        let next = rest.find(['{', '*']).unwrap_or(rest.len());
        if next > 0 {
            out.push(Piece::Text(rest[..next].to_owned()));
            rest = &rest[next..];
            continue;
        }
        if let Some(after) = rest.strip_prefix('*') {
            out.push(Piece::Any);
            rest = after;
            continue;
        }
        let close = rest.find('}').ok_or("a `{` without its `}`")?;
        let path = ClaimPath::parse(&rest[1..close]).map_err(|e| e.to_string())?;
        out.push(Piece::Claim(path));
        rest = &rest[close + 1..];
    }
    Ok(out)
}

/// Whether `topic` is `pattern` with `principal`'s claims put in.
fn matches(pattern: &[Piece], principal: &Principal, topic: &str) -> bool {
    let mut re = String::from("^");
    for piece in pattern {
        match piece {
            Piece::Text(t) => re.push_str(&regex::escape(t)),
            Piece::Any => re.push_str(".*"),
            Piece::Claim(path) => {
                let values: Vec<String> = path.owners(&principal.claims).into_iter().take(MAX_CLAIM_VALUES).collect();
                // A claim the token does not have matches nothing (not an empty string).
                if values.iter().all(String::is_empty) {
                    return false;
                }
                let alternatives: Vec<String> = values.iter().filter(|v| !v.is_empty()).map(|v| regex::escape(v)).collect();
                re.push_str(&format!("(?:{})", alternatives.join("|")));
            }
        }
    }
    re.push('$');
    Regex::new(&re).is_ok_and(|r| r.is_match(topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    const RULES: &str = r#"
        [jobs.x]
        builtin = "demo"

        [[realtime.topics]]
        pattern = "user:{sub}"
        receive = true
        send = true
        presence = true

        [[realtime.topics]]
        pattern = "org:{app_metadata.org_id}:*"
        receive = true

        [[realtime.topics]]
        pattern = "team:{app_metadata.teams}"
        receive = true
        presence = true
    "#;

    fn user(sub: &str, app_metadata: serde_json::Value) -> Principal {
        let mut p = Principal::new("authenticated", Some(sub), i64::MAX);
        Arc::make_mut(&mut p.claims).insert("app_metadata".into(), app_metadata);
        p
    }

    #[test]
    fn the_first_matching_rule_decides_with_the_tokens_claims_put_in() {
        let rules = TopicRules::parse(RULES).unwrap();
        let ann = user("ann", json!({"org_id": "acme", "teams": ["red", "blue"]}));
        let own = rules.rights(&ann, "user:ann");
        assert!(own.broadcast_read && own.broadcast_write && own.presence_write);
        let org = rules.rights(&ann, "org:acme:decisions");
        assert!(org.broadcast_read && !org.broadcast_write && !org.presence_write);
        assert!(rules.rights(&ann, "team:blue").presence_write);
        assert_eq!(rules.rights(&ann, "user:ben"), Policies::default());
        assert_eq!(rules.rights(&ann, "org:evil:decisions"), Policies::default());
        assert_eq!(rules.rights(&ann, "team:green"), Policies::default());
    }

    #[test]
    fn a_missing_claim_matches_nothing_and_the_service_role_may_do_everything() {
        let rules = TopicRules::parse(RULES).unwrap();
        let anon = Principal::new("anon", None, i64::MAX);
        assert_eq!(rules.rights(&anon, "user:"), Policies::default());
        assert_eq!(rules.rights(&anon, "org::x"), Policies::default());
        assert!(rules.rights(&Principal::new("service_role", None, i64::MAX), "anything").broadcast_write);
    }

    #[test]
    fn regex_characters_in_topics_and_claims_are_text() {
        let rules = TopicRules::parse("[[realtime.topics]]\npattern = \"a.b:{sub}\"\nreceive = true").unwrap();
        assert!(rules.rights(&user("x+y", json!({})), "a.b:x+y").broadcast_read);
        assert!(!rules.rights(&user("x+y", json!({})), "aXb:x+y").broadcast_read);
        assert!(!rules.rights(&user(".*", json!({})), "a.b:anything").broadcast_read);
    }

    #[test]
    fn bad_patterns_are_refused_with_their_place() {
        let e = TopicRules::parse("[[realtime.topics]]\npattern = \"user:{sub\"").unwrap_err().to_string();
        assert!(e.contains("realtime.topics[0]") && e.contains("without its `}`"), "{e}");
        assert!(TopicRules::parse("[[realtime.topics]]\npattern = \"\"").is_err());
        assert!(TopicRules::parse("[[realtime.topics]]\npattern = \"a\"\nreed = true").is_err());
    }
}
