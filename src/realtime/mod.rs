//! The Supabase Realtime protocol.
//!
//! - `protocol`: v1/v2 framing (pure).
//! - `filter`: the filter language (pure).
//! - `payload`: the `data` object of a `postgres_changes` frame (pure).
//! - `selection`: a binding's `select` columns (pure).
//! - `channel`: join planning and subscription notices (pure).
//! - `policies`: what a private channel's token may do, from the RLS policies on `realtime.messages`.
//! - `presence`: who is present on a topic; state and diff payloads (pure).
//! - `handoff`: channels closed by a draining gateway resume elsewhere with the changes they missed.
//! - `replay`: broadcasts sent from the database that a private join asks to see again.
//! - `registry`: live subscriptions, change fan-out, broadcast and presence delivery.
//! - `outbox`: one socket's bounded outgoing queue and its slow-consumer rule.
//! - `admission`: connection limits, in all and per client IP.
//! - `broadcast_api`: the broadcast REST API (`/realtime/v1/api/broadcast`).
//! - `topic_rules`: private-channel rights from the config file, for databases without policies (pure).
//! - `socket`: one task per WebSocket: control loop and writer.
//! - `cluster`: many gateways on one database: presence and broadcasts through the change log.

pub mod admission;
pub mod broadcast_api;
pub mod channel;
pub mod cluster;
pub mod filter;
pub mod handoff;
pub mod outbox;
pub mod payload;
pub mod policies;
pub mod presence;
pub mod protocol;
pub mod registry;
pub mod replay;
pub mod selection;
pub mod socket;
pub mod topic_rules;
