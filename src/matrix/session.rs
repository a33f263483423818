//! Logins: the app users' password logins with refresh tokens, `whoami`
//! and `refresh`. The bot's own session lives in the client.

use std::net::IpAddr;

use http::Method;

use super::client::{Auth, Body, HomeserverClient, enc};
use super::error::{ErrCode, MatrixError};
use super::types::{
    DisplayNameResponse, EventIdResponse, JoinedRooms, LoginResponse, PasswordLogin, RefreshRequest, RefreshResponse,
    TextMessage, UserIdentifier, WhoAmI,
};

impl HomeserverClient {
    /// `POST /_matrix/client/v3/login` for an app user: password login with
    /// `device_id` (the homeserver picks one when `None`), asking for a
    /// refresh token. `client_addr` goes to the homeserver as
    /// `X-Forwarded-For`, so its per-address login limit counts the app's
    /// clients, not the service.
    ///
    /// # Errors
    /// `M_FORBIDDEN` for a wrong password or a deactivated account, rate limits
    /// and the transport errors of every request.
    pub async fn login_user(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
        client_addr: Option<IpAddr>,
    ) -> Result<LoginResponse, MatrixError> {
        self.password_login(user, password, device_id, true, client_addr).await
    }

    /// `POST /_matrix/client/v3/login` with `m.login.password`. `user` is a
    /// localpart or a full user id.
    pub(crate) async fn password_login(
        &self,
        user: &str,
        password: &str,
        device_id: Option<&str>,
        refresh_token: bool,
        client_addr: Option<IpAddr>,
    ) -> Result<LoginResponse, MatrixError> {
        let body = PasswordLogin {
            kind: "m.login.password",
            identifier: UserIdentifier { kind: "m.id.user", user },
            password,
            device_id,
            initial_device_display_name: None,
            refresh_token,
        };
        self.send(Method::POST, "/_matrix/client/v3/login", Auth::None, Body::json(&body), client_addr).await
    }

    /// `POST /_matrix/client/v3/refresh`: a new access token (and usually a
    /// new refresh token) for a session that asked for refresh tokens.
    ///
    /// # Errors
    /// `M_UNKNOWN_TOKEN` (401) for a spent or unknown refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshResponse, MatrixError> {
        self.send(
            Method::POST,
            "/_matrix/client/v3/refresh",
            Auth::None,
            Body::json(&RefreshRequest { refresh_token }),
            None,
        )
        .await
    }

    /// `GET /_matrix/client/v3/account/whoami` with `access_token`.
    ///
    /// # Errors
    /// `M_UNKNOWN_TOKEN` for an expired or logged-out token.
    pub async fn whoami(&self, access_token: &str) -> Result<WhoAmI, MatrixError> {
        self.send(Method::GET, "/_matrix/client/v3/account/whoami", Auth::Token(access_token), Body::Empty, None).await
    }

    /// `GET /_matrix/client/v3/joined_rooms` with a user's `access_token`:
    /// the rooms that user is joined to, as their own client sees them.
    ///
    /// # Errors
    /// `M_UNKNOWN_TOKEN`; transport errors.
    pub async fn user_joined_rooms(&self, access_token: &str) -> Result<Vec<String>, MatrixError> {
        let r: JoinedRooms = self
            .send(Method::GET, "/_matrix/client/v3/joined_rooms", Auth::Token(access_token), Body::Empty, None)
            .await?;
        Ok(r.joined_rooms)
    }

    /// `PUT /rooms/{room}/send/m.room.message/{txn_id}` with a text message,
    /// as the user of `access_token`. Returns the event id; repeating a
    /// `txn_id` in the same session sends nothing new.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the user is not joined; transport errors.
    pub async fn send_text(
        &self,
        access_token: &str,
        room_id: &str,
        txn_id: &str,
        body: &str,
    ) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(room_id), enc(txn_id));
        let message = TextMessage { msgtype: "m.text", body };
        let r: EventIdResponse =
            self.send(Method::PUT, &path, Auth::Token(access_token), Body::json(&message), None).await?;
        Ok(r.event_id)
    }

    /// `GET /_matrix/client/v3/profile/{user}/displayname`: `None` when the
    /// account has no display name or does not exist (Synapse answers both
    /// with `M_NOT_FOUND`). Registration without a name gives the localpart.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn display_name(&self, user_id: &str) -> Result<Option<String>, MatrixError> {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(user_id));
        match self.bot_send::<DisplayNameResponse>(Method::GET, &path, || Body::Empty).await {
            Ok(r) => Ok(r.displayname),
            Err(e) if e.is(&ErrCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
