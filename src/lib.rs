//! messenger-chat: the chatroom service of a mobile messenger, on a Matrix homeserver.
//!
//! Layers, each testable alone: `api` (HTTP: parsing and status codes),
//! `domain` (rules and roles), `store` (redb), `homeserver` (the homeserver as
//! a trait, its Synapse adapter over the client in `matrix`, and a fake),
//! `reconciler` (the task that makes the homeserver match the database),
//! `webhooks` (the task that sends the event log to webhooks).

pub mod api;
pub mod app;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod domain;
pub mod error;
pub mod homeserver;
pub mod matrix;
pub mod model;
pub mod proxy;
pub mod reconciler;
pub mod secrets;
pub mod server;
pub mod store;
pub mod webhooks;
