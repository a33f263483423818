//! Logins: the app users' password logins with refresh tokens, `whoami`
//! and `refresh`. The bot's own session lives in the client.

use std::net::IpAddr;

use http::Method;

use super::client::{Auth, Body, HomeserverClient, enc};
use super::error::{ErrCode, MatrixError};
use super::types::{
    DisplayNameBody, DisplayNameResponse, EventIdResponse, Ignored, JoinedRooms, LoginResponse, OwnDeactivateBody,
    PasswordAuth, PasswordLogin, RefreshRequest, RefreshResponse, TextMessage, UserIdentifier, WhoAmI,
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

    /// `POST /_matrix/client/v3/rooms/{room}/join` as the user of
    /// `access_token`: accepts an invite (or re-joins; joining a room one is
    /// in already changes nothing).
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the user is not invited to an invite-only room;
    /// transport errors.
    pub async fn join_as(&self, access_token: &str, room_id: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/join", enc(room_id));
        let _: Ignored =
            self.send(Method::POST, &path, Auth::Token(access_token), Body::json(&serde_json::json!({})), None).await?;
        Ok(())
    }

    /// `POST /_matrix/client/v3/logout`: ends the session of `access_token`
    /// and removes its device.
    ///
    /// # Errors
    /// `M_UNKNOWN_TOKEN` for a session that has ended already; transport errors.
    pub async fn logout(&self, access_token: &str) -> Result<(), MatrixError> {
        let body = Body::json(&serde_json::json!({}));
        let _: Ignored =
            self.send(Method::POST, "/_matrix/client/v3/logout", Auth::Token(access_token), body, None).await?;
        Ok(())
    }

    /// `PUT /_matrix/client/v3/profile/{user}/displayname` as that user.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when `access_token` is not `user_id`'s; transport errors.
    pub async fn set_own_display_name(
        &self,
        access_token: &str,
        user_id: &str,
        displayname: &str,
    ) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(user_id));
        let body = Body::json(&DisplayNameBody { displayname });
        let _: Ignored = self.send(Method::PUT, &path, Auth::Token(access_token), body, None).await?;
        Ok(())
    }

    /// `POST /_matrix/client/v3/account/deactivate` as the user, the
    /// password as its authentication (not erased): the account is logged
    /// out everywhere, leaves its rooms and refuses logins from then on.
    ///
    /// # Errors
    /// 401 when the homeserver wants another authentication; transport errors.
    pub async fn deactivate_own(&self, access_token: &str, user_id: &str, password: &str) -> Result<(), MatrixError> {
        let body = OwnDeactivateBody {
            auth: PasswordAuth {
                kind: "m.login.password",
                identifier: UserIdentifier { kind: "m.id.user", user: user_id },
                password,
            },
            erase: false,
        };
        let _: Ignored = self
            .send(
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                Auth::Token(access_token),
                Body::json(&body),
                None,
            )
            .await?;
        Ok(())
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
