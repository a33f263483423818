//! Tokens in, principals out; and the role checks every operation uses.

use crate::error::{Error, Result};
use crate::model::{OrgId, OrgRole, Room, RoomRole, TokenKind};
use crate::secrets::{API_TOKEN_PREFIX, PAT_PREFIX, hashes_equal, token_hash};
use crate::store::{Read, StoreError};

use super::{Domain, Principal};

impl Domain {
    /// Finds who holds `token`: one hash, then the token cache, or at most
    /// one point lookup in `r` (remembered when `r` is a snapshot).
    ///
    /// # Errors
    /// 401 for a missing, unknown, revoked or expired token.
    pub fn authenticate(&self, r: &impl Read, token: &str) -> Result<Principal> {
        let hash = token_hash(token);
        let generation = r.token_generation();
        let now = self.clock.now();
        if let Some(p) = generation.and_then(|g| self.tokens.get(&hash, g, now)) {
            return Ok(p);
        }
        let (p, expires_at) = self.authenticate_stored(r, token, &hash, now)?;
        if let Some(g) = generation {
            self.tokens.insert(hash, p, expires_at, g);
        }
        Ok(p)
    }

    /// Finds who holds `token` in the token records and the config; the
    /// principal comes with the time from which the token is refused.
    fn authenticate_stored(
        &self,
        r: &impl Read,
        token: &str,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<(Principal, Option<i64>)> {
        let hash = *hash;
        if token.starts_with(API_TOKEN_PREFIX) {
            // Compare against every configured hash so the time does not tell which matched.
            let listed = self.api_hashes.iter().fold(false, |acc, (h, _)| acc | hashes_equal(h, &hash));
            // The database holds the first-start token and the revocations of config tokens.
            let stored = r.token_by_hash(&hash)?.filter(|t| t.kind == TokenKind::Api && hashes_equal(&t.hash, &hash));
            return match stored {
                Some(t) if t.revoked => Err(Error::Unauthorized("this API token was revoked".into())),
                _ if listed => Ok((Principal::api_token(&hash), None)),
                // The first-start token stands in only while the config lists none.
                Some(_) if self.api_hashes.is_empty() => Ok((Principal::api_token(&hash), None)),
                Some(_) => Err(Error::Unauthorized(
                    "this API token is no longer accepted: auth.api_token_hashes does not list it".into(),
                )),
                None => Err(Error::Unauthorized("unknown API token".into())),
            };
        }
        if token.starts_with(PAT_PREFIX) {
            let Some(t) = r.token_by_hash(&hash)? else {
                return Err(Error::Unauthorized("unknown personal access token".into()));
            };
            if t.kind != TokenKind::Personal || !hashes_equal(&t.hash, &hash) {
                return Err(Error::Unauthorized("unknown personal access token".into()));
            }
            if t.revoked {
                return Err(Error::Unauthorized("this personal access token was revoked; issue a new one".into()));
            }
            if t.expires_at.is_some_and(|at| at <= now) {
                return Err(Error::Unauthorized("this personal access token has expired; issue a new one".into()));
            }
            return Ok((Principal::User(t.user_id), t.expires_at));
        }
        Err(Error::Unauthorized(format!(
            "send a token starting {API_TOKEN_PREFIX} or {PAT_PREFIX} as `Authorization: Bearer <token>` or `API-TOKEN: <token>`"
        )))
    }

    /// The caller's role in an organization (`None` for the API token, which needs none).
    pub(crate) fn caller_role(r: &impl Read, p: Principal, org: OrgId) -> Result<Option<OrgRole>, StoreError> {
        match p {
            Principal::Api(_) => Ok(Some(OrgRole::Owner)),
            Principal::User(u) => r.member_role(org, u),
        }
    }

    /// Any member may read an organization's rooms.
    pub(crate) fn require_member(r: &impl Read, p: Principal, org: OrgId) -> Result<OrgRole> {
        match Self::caller_role(r, p, org)? {
            Some(role) => Ok(role),
            None => Err(not_member(p, org)),
        }
    }

    /// Owners and admins manage an organization's rooms.
    pub(crate) fn require_org_manager(r: &impl Read, p: Principal, org: OrgId) -> Result<()> {
        match Self::caller_role(r, p, org)? {
            Some(role) if role.manages() => Ok(()),
            Some(_) => Err(Error::Forbidden(format!("only owners and admins of organization {org} may do this"))),
            None => Err(not_member(p, org)),
        }
    }

    /// The caller's power over a room: `Admin` for organization managers and
    /// room admins, the room role otherwise; 403 for non-members.
    pub(crate) fn room_power(r: &impl Read, p: Principal, room: &Room) -> Result<Option<RoomRole>> {
        let role = Self::require_member(r, p, room.org_id)?;
        if role.manages() {
            return Ok(Some(RoomRole::Admin));
        }
        match p {
            Principal::Api(_) => Ok(Some(RoomRole::Admin)),
            Principal::User(u) => Ok(room.role_of(u)),
        }
    }

    /// API-token-only operations (administration).
    pub(crate) fn require_api(p: Principal) -> Result<()> {
        match p {
            Principal::Api(_) => Ok(()),
            Principal::User(_) => Err(Error::Forbidden("administration needs an API token".into())),
        }
    }
}

fn not_member(p: Principal, org: OrgId) -> Error {
    match p {
        Principal::User(u) => Error::Forbidden(format!("user {u} is not a member of organization {org}")),
        Principal::Api(_) => Error::Forbidden(format!("not a member of organization {org}")),
    }
}
