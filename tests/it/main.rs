//! Integration tests: a real Postgres, the real app on port 0, raw WebSocket
//! frames, the real supabase-js under Node. One binary, one module per area.

mod harness;
mod step_server;

mod alerts;
mod authz;
mod broadcast;
mod browser;
mod capture;
mod claims;
mod cli;
mod cluster;
mod delivery;
mod example_handler;
mod faults;
mod fuzz;
mod handoff;
mod hardening;
mod https;
mod inngest;
mod inngest_runs;
mod interop;
mod jobs_api;
mod jobs_runners;
mod jwks;
mod limits;
mod lockdown;
mod ops;
mod presence;
mod protocol;
mod rest;
mod watched_capture;
