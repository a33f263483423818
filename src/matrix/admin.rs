//! Synapse's admin API: shared-secret registration, joining users to rooms,
//! room deletion, display names and deactivation. Everything but the
//! registration is sent as the bot, which is a server admin.

use hmac::{Hmac, Mac};
use http::Method;
use sha1::Sha1;

use super::client::{Auth, Body, HomeserverClient, enc};
use super::error::{ErrCode, MatrixError};
use super::types::{
    AdminFlag, DeactivateBody, DeleteRoomRequest, DeleteRoomResponse, DeleteStatus, DeleteStatusResponse,
    DisplayNameBody, Ignored, Membership, Nonce, RegisterResponse, Registration, RoomIdResponse, SharedSecretRegister,
    UserIdBody,
};

const REGISTER_PATH: &str = "/_synapse/admin/v1/register";

/// The MAC of a shared-secret registration: HMAC-SHA1 over
/// `nonce \0 user \0 password \0 admin|notadmin`, as hex.
fn registration_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    for (i, part) in [nonce, user, password, if admin { "admin" } else { "notadmin" }].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

impl HomeserverClient {
    /// Creates the account `localpart` through shared-secret registration
    /// (`GET` + `POST /_synapse/admin/v1/register`). An existing account is
    /// not an error: it answers [`Registration::AlreadyExists`] and is left as
    /// it is (password and display name unchanged).
    ///
    /// # Errors
    /// `M_INVALID_USERNAME`, a wrong shared secret (`M_FORBIDDEN` /
    /// `M_UNKNOWN`), or any transport error.
    pub async fn register(
        &self,
        localpart: &str,
        password: &str,
        admin: bool,
        displayname: Option<&str>,
    ) -> Result<Registration, MatrixError> {
        if self.shared_secret().is_empty() {
            return Err(MatrixError::Config(
                "no registration shared secret configured (matrix.registration_shared_secret or _file)".into(),
            ));
        }
        let nonce: Nonce = self.send(Method::GET, REGISTER_PATH, Auth::None, Body::Empty, None).await?;
        let body = SharedSecretRegister {
            nonce: &nonce.nonce,
            username: localpart,
            password,
            admin,
            displayname,
            mac: registration_mac(self.shared_secret(), &nonce.nonce, localpart, password, admin),
        };
        match self.send::<RegisterResponse>(Method::POST, REGISTER_PATH, Auth::None, Body::json(&body), None).await {
            Ok(r) => Ok(Registration::Created { user_id: r.user_id }),
            Err(e) if e.is(&ErrCode::UserInUse) => Ok(Registration::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    /// Registers the bot as a server admin with its password; an existing
    /// bot account is fine.
    ///
    /// # Errors
    /// As [`HomeserverClient::register`].
    pub async fn ensure_bot(&self) -> Result<Registration, MatrixError> {
        self.ensure_bot_with(true).await
    }

    /// Registers the bot with its password, a server admin or not; an
    /// existing bot account is left as it is (its rights too).
    ///
    /// # Errors
    /// As [`HomeserverClient::register`].
    pub async fn ensure_bot_with(&self, admin: bool) -> Result<Registration, MatrixError> {
        self.register(self.bot_localpart(), self.bot_password(), admin, None).await
    }

    /// Whether the admin API works for the bot: `GET
    /// /_synapse/admin/v1/users/{bot}/admin`, which needs a server admin.
    /// The bot logs in first, so a failed login is an error of its own and
    /// not taken for a missing admin API.
    ///
    /// # Errors
    /// The bot's login failing; the homeserver unreachable, failing or
    /// limiting (retryable: ask again later).
    pub async fn probe_admin_api(&self) -> Result<AdminProbe, MatrixError> {
        self.bot_token().await?;
        let path = format!("/_synapse/admin/v1/users/{}/admin", enc(self.bot_user_id()));
        match self.bot_send::<AdminFlag>(Method::GET, &path, || Body::Empty).await {
            Ok(AdminFlag { admin: true }) => Ok(AdminProbe::Answers),
            Ok(AdminFlag { admin: false }) => {
                Ok(AdminProbe::Missing(format!("the homeserver says {} is no server admin", self.bot_user_id())))
            }
            Err(e) => AdminProbe::from_error(e, self.bot_user_id()),
        }
    }

    /// `POST /_synapse/admin/v1/join/{room}`: joins `user_id` to the room
    /// without their session. The bot must be in the room and allowed to
    /// invite (Synapse invites first in an invite-only room). Returns the room id.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot cannot invite, `M_NOT_FOUND` for an unknown user.
    pub async fn admin_join(&self, room_id: &str, user_id: &str) -> Result<String, MatrixError> {
        let path = format!("/_synapse/admin/v1/join/{}", enc(room_id));
        let r: RoomIdResponse = self.bot_send(Method::POST, &path, || Body::json(&UserIdBody { user_id })).await?;
        Ok(r.room_id)
    }

    /// Joins `user_id` with [`HomeserverClient::admin_join`] unless they are
    /// joined already (the admin join answers `M_FORBIDDEN` then, since it
    /// invites first). Returns whether it joined them.
    ///
    /// # Errors
    /// As [`HomeserverClient::admin_join`].
    pub async fn ensure_joined(&self, room_id: &str, user_id: &str) -> Result<bool, MatrixError> {
        if self.membership(room_id, user_id).await? == Some(Membership::Join) {
            return Ok(false);
        }
        self.admin_join(room_id, user_id).await.map(|_| true)
    }

    /// `DELETE /_synapse/admin/v2/rooms/{room}` with `purge: true, block:
    /// false`: removes every member and purges the room in the background.
    /// Returns the `delete_id` to follow with [`HomeserverClient::delete_status`].
    /// Deleting a room that is already gone is accepted and completes, so a
    /// retry is safe.
    ///
    /// # Errors
    /// `M_INVALID_PARAM` for a malformed room id; 400 when a delete of this
    /// room is already running.
    pub async fn delete_room(&self, room_id: &str) -> Result<String, MatrixError> {
        let path = format!("/_synapse/admin/v2/rooms/{}", enc(room_id));
        let r: DeleteRoomResponse = self
            .bot_send(Method::DELETE, &path, || Body::json(&DeleteRoomRequest { purge: true, block: false }))
            .await?;
        Ok(r.delete_id)
    }

    /// `GET /_synapse/admin/v2/rooms/delete_status/{delete_id}`.
    ///
    /// # Errors
    /// `M_NOT_FOUND` once Synapse has forgotten the delete (it keeps finished
    /// ones for a day, and none across a restart).
    pub async fn delete_status(&self, delete_id: &str) -> Result<DeleteStatus, MatrixError> {
        let path = format!("/_synapse/admin/v2/rooms/delete_status/{}", enc(delete_id));
        let r: DeleteStatusResponse = self.bot_send(Method::GET, &path, || Body::Empty).await?;
        Ok(r.into())
    }

    /// `PUT /_synapse/admin/v2/users/{user}` with `displayname`. Beware:
    /// this endpoint creates the account (without a password) when it does
    /// not exist, so register first.
    ///
    /// # Errors
    /// Transport errors; `M_FORBIDDEN` if the bot is not an admin.
    pub async fn set_display_name(&self, user_id: &str, displayname: &str) -> Result<(), MatrixError> {
        let path = format!("/_synapse/admin/v2/users/{}", enc(user_id));
        let _: Ignored = self.bot_send(Method::PUT, &path, || Body::json(&DisplayNameBody { displayname })).await?;
        Ok(())
    }

    /// `POST /_synapse/admin/v1/deactivate/{user}` (not erased): logs the
    /// account out everywhere, removes it from its rooms, and refuses logins.
    ///
    /// # Errors
    /// `M_NOT_FOUND` for an unknown account.
    pub async fn deactivate(&self, user_id: &str) -> Result<(), MatrixError> {
        let path = format!("/_synapse/admin/v1/deactivate/{}", enc(user_id));
        let _: Ignored = self.bot_send(Method::POST, &path, || Body::json(&DeactivateBody { erase: false })).await?;
        Ok(())
    }
}

/// What [`HomeserverClient::probe_admin_api`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminProbe {
    /// The bot's admin request was answered.
    Answers,
    /// It was refused; why, in words for operators.
    Missing(String),
}

impl AdminProbe {
    /// A failed probe request, sorted: a refusal of any kind (no such
    /// endpoint, the bot no admin, a reverse proxy that does not pass
    /// `/_synapse/admin` on) means the admin API cannot be used; a failure
    /// that may pass is returned as an error, to ask again.
    fn from_error(e: MatrixError, bot: &str) -> Result<Self, MatrixError> {
        if e.is_retryable() || matches!(e, MatrixError::Config(_)) {
            return Err(e);
        }
        let why = match &e {
            MatrixError::Api { status: 401 | 403, .. } | MatrixError::Decode { status: 401 | 403, .. } => {
                format!("the homeserver refuses the admin API to {bot}, which is then no server admin ({e})")
            }
            MatrixError::Api { status: 404 | 405, .. } | MatrixError::Decode { status: 404 | 405, .. } => {
                format!("the homeserver (or a proxy in front of it) does not serve /_synapse/admin ({e})")
            }
            _ => format!("the admin API refused the bot's request ({e})"),
        };
        Ok(AdminProbe::Missing(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_probe_means_no_admin_api_and_a_failing_one_asks_again() {
        let bot = "@bot:hs";
        let api = |status, errcode: ErrCode| MatrixError::Api { status, errcode, message: "nope".into() };
        for (e, says) in [
            (api(403, ErrCode::Forbidden), "no server admin"),
            (api(401, ErrCode::Other("M_UNAUTHORIZED".into())), "no server admin"),
            (api(404, ErrCode::Unrecognized), "does not serve /_synapse/admin"),
            (MatrixError::Decode { status: 404, reason: "<html>".into() }, "does not serve /_synapse/admin"),
            (api(400, ErrCode::InvalidParam), "refused the bot's request"),
        ] {
            match AdminProbe::from_error(e, bot) {
                Ok(AdminProbe::Missing(why)) => assert!(why.contains(says), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        for e in [
            MatrixError::Unreachable("refused".into()),
            MatrixError::Server { status: 502, errcode: None, message: String::new() },
            MatrixError::RateLimited { retry_after_ms: Some(5) },
            MatrixError::Config("bad".into()),
        ] {
            assert!(AdminProbe::from_error(e, bot).is_err(), "asked again later");
        }
    }

    #[test]
    fn mac_matches_synapse_docs_shape() {
        // Independent computation of the same HMAC over the joined message.
        let mut m = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
        m.update(b"n\0alice\0pw\0admin");
        assert_eq!(registration_mac("secret", "n", "alice", "pw", true), hex::encode(m.finalize().into_bytes()));
        assert_ne!(
            registration_mac("secret", "n", "alice", "pw", false),
            registration_mac("secret", "n", "alice", "pw", true)
        );
        assert_eq!(registration_mac("k", "", "", "", false).len(), 40);
    }
}
