//! rowcast: Postgres row changes to supabase-js clients over the Supabase
//! Realtime protocol, per user, with nothing lost.
//!
//! Crate map (imports point downward only):
//! - `app`: composition root; builds and runs everything, ordered shutdown.
//! - `http`: the axum router; the only place routes are wired.
//! - `server`: the HTTP/1.1 accept loop the router runs on (upgrades keep their `TcpStream`).
//! - `realtime`: the Supabase Realtime protocol: framing, filters, channels, sockets, fan-out.
//! - `jobs`: the job runner and its REST API.
//! - `rest`: read-only PostgREST-compatible snapshots of captured tables.
//! - `changes`: capture side: change-log reader, table cache, change rendering.
//! - `grammar`: the filter grammar's tokenizer, shared by realtime filters and REST, pure.
//! - `keyring`: the keys tokens are verified with: secret plus a JWKS fetched and refreshed.
//! - `refresh`: single-flight, spaced reloads (table cache, JWKS).
//! - `auth`: JWT verify/mint, claims, key sets; pure.
//! - `config`: clap settings, pure.
//! - `pg_local`: a private Postgres cluster for the demo and the tests.

pub mod app;
pub mod auth;
pub mod changes;
pub mod config;
pub mod grammar;
pub mod http;
pub mod jobs;
pub mod keyring;
pub mod metrics;
pub mod ops;
pub mod pg_local;
pub mod realtime;
pub mod refresh;
pub mod rest;
pub mod server;
