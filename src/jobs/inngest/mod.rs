//! The Inngest SDK protocol, as the unmodified `inngest` 3.54.2 package
//! speaks it (`../shared/reference/inngest-sdk-protocol.md`): apps syncing
//! their functions, events received and starting the functions they
//! trigger, and runs executed step by step as rowcast jobs.
//!
//! - `keys`: the signing key, its bearer hash and request signatures (pure).
//! - `canonical`: RFC 8785 JSON, the form request bodies are signed in (pure).
//! - `expr`: the CEL subset of trigger `if`s and keys (pure).
//! - `sync`: `POST /fn/register`, the stored apps and functions, and the
//!   pinger that PUTs each `--inngest-app` URL so it registers.
//! - `events`: `POST /e/<event key>`, stored through `rowcast.send_event`.
//! - `functions`: synced functions as job types (limits, how to call them).
//! - `dispatch`: stored events -> runs of every function they trigger;
//!   `admit`: its rate-limit windows and per-user caps.
//! - `cron`: cron triggers -> one run per tick.
//! - `call`: one execution request and what its answer means; `gate`: the
//!   keyed concurrency slots a run takes before it calls.

pub mod admit;
pub mod call;
pub mod canonical;
pub mod cron;
pub mod dispatch;
pub mod events;
pub mod expr;
pub mod functions;
pub mod gate;
pub mod keys;
pub mod sync;

use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::config::Secret;
use expr::{Expr, ExprError};
use keys::SigningKey;

/// The event field that names a run's owner (`--inngest-user-key`).
#[derive(Debug, Clone)]
pub struct UserKey {
    text: String,
    expr: Expr,
}

impl UserKey {
    /// Reads a key expression such as `event.data.userId`.
    pub fn parse(text: &str) -> Result<UserKey, ExprError> {
        Ok(UserKey { text: text.to_owned(), expr: Expr::parse(text)? })
    }

    /// The key's text, as functions write it in `concurrency.key`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The owner it names in an event's `names` (`expr::about`), if a string or a number.
    pub fn owner(&self, names: &Map<String, Value>) -> Option<String> {
        match self.expr.eval(names).ok()? {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Without `--inngest-user-key`: `event.data.userId`, then `event.user.id`.
static DEFAULT_USER_KEYS: LazyLock<[UserKey; 2]> =
    LazyLock::new(|| ["event.data.userId", "event.user.id"].map(|k| UserKey::parse(k).expect("the default keys parse")));

/// How this rowcast meets Inngest apps.
#[derive(Debug, Clone, Default)]
pub struct InngestSettings {
    /// Dev mode: apps sync unsigned, as with `inngest dev`.
    pub dev: bool,
    /// Verifies apps' syncs and signs rowcast's calls to them (required outside dev mode).
    pub signing_key: Option<SigningKey>,
    /// The key senders put in `POST /e/<key>` (required outside dev mode).
    pub event_key: Option<Secret>,
    /// The serve URLs rowcast PUTs at start and every few seconds, so they sync.
    pub apps: Vec<String>,
    /// The event field naming a run's owner; `None` reads `event.data.userId`, then `event.user.id`.
    pub user_key: Option<UserKey>,
    /// Most pending or running runs of one function per owner; an event past it is refused (429).
    pub max_active_per_user: Option<i32>,
}

impl InngestSettings {
    /// The server kind apps are told and may expect (`X-Inngest-Server-Kind`).
    pub fn server_kind(&self) -> &'static str {
        if self.dev {
            "dev"
        } else {
            "cloud"
        }
    }

    /// The keys tried, in order, for a run's owner.
    pub fn user_keys(&self) -> &[UserKey] {
        match &self.user_key {
            Some(k) => std::slice::from_ref(k),
            None => &DEFAULT_USER_KEYS[..],
        }
    }

    /// The owner of a run of an event (its `names`, `expr::about`): the first user key that names one.
    pub fn owner(&self, names: &Map<String, Value>) -> Option<String> {
        self.user_keys().iter().find_map(|k| k.owner(names))
    }
}
