//! The Inngest SDK protocol, as the unmodified `inngest` 3.54.2 package
//! speaks it (`../shared/reference/inngest-sdk-protocol.md`): so far, apps
//! syncing their functions and events being received.
//!
//! - `keys`: the signing key, its bearer hash and request signatures (pure).
//! - `sync`: `POST /fn/register`, the stored apps and functions, and the
//!   pinger that PUTs each `--inngest-app` URL so it registers.
//! - `events`: `POST /e/<event key>`, stored through `rowcast.send_event`.

pub mod events;
pub mod keys;
pub mod sync;

use crate::config::Secret;
use keys::SigningKey;

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
}
