//! messenger-chat: chatrooms of a mobile messenger, backed by a Matrix homeserver.

pub mod config;
pub mod matrix;
