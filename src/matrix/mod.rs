//! The homeserver: a client of the Matrix client-server API and Synapse's
//! admin API, for exactly what the service does there.
//!
//! - [`client`]: transport (hyper + rustls), timeouts, the bot's session
//! - [`error`]: [`MatrixError`], sorted into retryable and final
//! - [`ids`]: [`MatrixIds`], the Matrix ids of the service's accounts
//! - [`types`]: request and response bodies
//! - [`session`]: user logins, refresh, whoami, and what a user does with
//!   their own session (join, display name, deactivation, logout)
//! - [`rooms`]: room creation, markers, state, power levels, membership, media
//! - [`admin`]: shared-secret registration, the probe of the admin API, admin
//!   join, room delete, users

pub mod admin;
pub mod client;
pub mod error;
pub mod ids;
pub mod rooms;
pub mod session;
pub mod types;

pub use admin::AdminProbe;
pub use client::HomeserverClient;
pub use error::{ErrCode, MatrixError};
pub use ids::MatrixIds;
pub use rooms::RoomCreators;
pub use types::{
    DeleteStatus, LoginResponse, Member, Membership, NewRoom, PowerLevels, ROOM_MARKER_KEY, RefreshResponse,
    Registration, WhoAmI,
};
