//! Black-box tests of `messenger-chat`: each test starts the real binary on
//! a free port with its own data directory, speaks HTTPS to it with a client
//! that trusts only the server's self-signed certificate, and checks what a
//! user of the API would see. The contract is the served `/openapi.json`.
//!
//! Run with `cargo test --test api`.

mod common;

mod admin;
mod api_tokens;
mod auth;
mod automation;
mod bodies;
mod connections;
mod events;
mod fair;
mod limits;
mod matrix;
mod openapi;
mod persistence;
mod proxy;
mod read_only;
mod roles;
mod rooms;
mod service;
mod token_cache;
mod user;
mod validation;
mod webhooks;
