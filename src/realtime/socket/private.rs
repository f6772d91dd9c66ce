//! Private channels on one socket: whether a join asks for one, its
//! policies at join, and again when a new token arrives.

use serde_json::Value;

use super::Conn;
use crate::auth::Principal;
use crate::realtime::channel::JoinRefusal;
use crate::realtime::policies::Policies;

/// Whether a join's payload asks for a private channel (`config.private`, true or "true").
pub(super) fn asks_private(payload: &Value) -> bool {
    match payload.get("config").and_then(|c| c.get("private")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

impl Conn {
    /// The policies of `topic` for `principal`, or Supabase's refusal.
    pub(super) async fn policies_for(&self, principal: &Principal, topic: &str) -> Result<Policies, JoinRefusal> {
        match self.ctx.policies.check(principal, topic).await {
            Ok(p) if p.may_join() => Ok(p),
            Ok(_) => Err(JoinRefusal::Unauthorized(topic.to_owned())),
            Err(e) => {
                tracing::warn!(error = %e, "could not ask the private channel's policies");
                Err(JoinRefusal::PolicySetup)
            }
        }
    }

    /// A new token on private channel `topic`: asks the policies again, and
    /// closes the channel (Supabase's words) when they no longer let it read.
    /// False when the channel was closed.
    pub(super) async fn recheck_private(&mut self, topic: &str, principal: &Principal) -> bool {
        let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
        match self.policies_for(principal, sub_topic).await {
            Ok(policies) => {
                if let Some(joined) = self.channels.get_mut(topic) {
                    joined.policies = Some(policies);
                }
                true
            }
            Err(_) => {
                self.shut_channel(topic, &format!("You no longer have permission to read from this Channel topic: {sub_topic}"));
                false
            }
        }
    }
}
