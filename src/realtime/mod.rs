//! The Supabase Realtime protocol.
//!
//! - `protocol`: v1/v2 framing (pure).
//! - `filter`: the filter language (pure).
//! - `channel`: join planning and subscription notices (pure).
//! - `registry`: live subscriptions and change fan-out.
//! - `socket`: one task per WebSocket.

pub mod channel;
pub mod filter;
pub mod protocol;
pub mod registry;
pub mod socket;
