//! Administration (API token only): organizations, members, users, tokens.

use crate::error::{Error, Remedy, Result};
use crate::model::{Actor, OrgRole, Organization, OutboxOp, Token, TokenKind, User, UserId};
use crate::secrets::{PAT_PREFIX, new_token, token_hash};
use crate::store::Read;
use serde_json::json;

use super::events::{self, Deletion, record};
use super::rooms::{automate_member, remove_from_rooms, remove_room};
use super::{Domain, Principal, org_not_found, positive};

/// A freshly issued token: the only time its secret exists outside the caller.
#[derive(Debug)]
pub struct IssuedToken {
    pub record: Token,
    pub secret: String,
}

impl Domain {
    /// Creates or renames an organization; true when it was created.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id or name.
    pub fn put_org(&self, p: Principal, id: i64, name: &str) -> Result<(Organization, bool)> {
        Self::require_api(p)?;
        let id = positive("organizationID", id)?;
        let name = super::name("name", name)?;
        let now = self.clock.now();
        let actor = Actor::from(p);
        self.write(|w| {
            let created = w.org(id)?.is_none();
            let org = match w.org(id)? {
                Some(mut org) => {
                    if org.name != name {
                        let data = json!({"name": name, "previousName": org.name});
                        record(w, now, Some(id), &actor, "organization.renamed", &data)?;
                    }
                    org.name = name;
                    org
                }
                None => {
                    record(w, now, Some(id), &actor, "organization.created", &json!({"name": name}))?;
                    Organization { id, name, created_at: now }
                }
            };
            w.put_org(&org)?;
            Ok((org, created))
        })
    }

    /// Deletes an organization with all its rooms and memberships.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id, 404 unknown.
    pub fn delete_org(&self, p: Principal, id: i64) -> Result<()> {
        Self::require_api(p)?;
        let id = positive("organizationID", id)?;
        let (now, actor) = (self.clock.now(), Actor::from(p));
        self.write(|w| {
            let org = w.org(id)?.ok_or_else(|| org_not_found(id))?;
            let rooms = w.org_room_ids(id, 0, usize::MAX)?;
            let members = w.members(id)?;
            let data = json!({"name": org.name, "rooms": rooms, "members": members.len()});
            record(w, now, Some(id), &actor, "organization.deleted", &data)?;
            for room_id in rooms {
                if let Some(room) = w.room(room_id)? {
                    remove_room(w, &room, now, &actor, Deletion::Organization)?;
                }
            }
            for (user, _) in members {
                w.remove_member(id, user)?;
            }
            w.delete_org(id)?;
            Ok(())
        })?;
        Ok(())
    }

    /// An organization's members and their roles.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id, 404 unknown organization.
    pub fn members(&self, r: &impl Read, p: Principal, org: i64) -> Result<Vec<(UserId, OrgRole)>> {
        Self::require_api(p)?;
        let org = positive("organizationID", org)?;
        r.org(org)?.ok_or_else(|| org_not_found(org))?;
        Ok(r.members(org)?)
    }

    /// Sets a user's role in an organization (creating the user record when
    /// missing); automated rooms take the member in.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad ids, 404 unknown organization.
    pub fn set_member(&self, p: Principal, org: i64, user: i64, role: OrgRole) -> Result<()> {
        Self::require_api(p)?;
        let org = positive("organizationID", org)?;
        let user = positive("userID", user)?;
        let now = self.clock.now();
        let actor = Actor::from(p);
        self.write(|w| {
            w.org(org)?.ok_or_else(|| org_not_found(org))?;
            match w.user(user)? {
                Some(u) if u.deactivated => {
                    return Err(Error::Conflict(format!("user {user} is deactivated"))
                        .with_remedy(Remedy::ReactivateUser(user)));
                }
                Some(_) => {}
                None => {
                    w.put_user(&User { id: user, display_name: String::new(), deactivated: false, created_at: now })?;
                    record(w, now, None, &actor, "user.created", &json!({"userID": user, "displayName": ""}))?;
                }
            }
            let before = w.member_role(org, user)?;
            w.set_member(org, user, role)?;
            events::member_set(w, now, &actor, org, user, before, role)?;
            automate_member(w, org, user, now, &actor)
        })?;
        Ok(())
    }

    /// Removes a member; they leave every room of the organization.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad ids, 404 unknown organization or not a member.
    pub fn remove_member(&self, p: Principal, org: i64, user: i64) -> Result<()> {
        Self::require_api(p)?;
        let org = positive("organizationID", org)?;
        let user = positive("userID", user)?;
        let now = self.clock.now();
        self.write(|w| {
            w.org(org)?.ok_or_else(|| org_not_found(org))?;
            let Some(role) = w.member_role(org, user)? else {
                return Err(Error::NotFound(format!("user {user} is not a member of organization {org}")));
            };
            let actor = Actor::from(p);
            let data = json!({"userID": user, "role": role.as_str(), "reason": "request"});
            record(w, now, Some(org), &actor, "member.removed", &data)?;
            w.remove_member(org, user)?;
            remove_from_rooms(w, user, Some(org), now, &actor)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Creates or updates a user (a deactivated user is reactivated); true when created.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id or name.
    pub fn put_user(&self, p: Principal, id: i64, display_name: &str) -> Result<(User, bool)> {
        Self::require_api(p)?;
        let id = positive("userID", id)?;
        let display_name = super::name("displayName", display_name)?;
        let now = self.clock.now();
        let result = self.write(|w| {
            let existing = w.user(id)?;
            let created = existing.is_none();
            let user = User {
                id,
                display_name,
                deactivated: false,
                created_at: existing.as_ref().map_or(now, |u| u.created_at),
            };
            let (kind, data) = match &existing {
                None => ("user.created", json!({"userID": id, "displayName": user.display_name})),
                Some(old) => (
                    "user.updated",
                    json!({"userID": id, "displayName": user.display_name, "reactivated": old.deactivated}),
                ),
            };
            if existing.as_ref() != Some(&user) {
                record(w, now, None, &Actor::from(p), kind, &data)?;
            }
            w.put_user(&user)?;
            w.push_outbox(&OutboxOp::SyncUser { user_id: id })?;
            Ok((user, created))
        })?;
        Ok(result)
    }

    /// Deactivates a user: tokens revoked, out of every room and organization,
    /// Matrix account deactivated.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id, 404 unknown user.
    pub fn deactivate_user(&self, p: Principal, id: i64) -> Result<()> {
        Self::require_api(p)?;
        let id = positive("userID", id)?;
        let now = self.clock.now();
        let actor = Actor::from(p);
        self.write(|w| {
            let mut user = w.user(id)?.ok_or_else(|| no_user(id))?;
            if !user.deactivated {
                record(w, now, None, &actor, "user.deactivated", &json!({"userID": id}))?;
            }
            for mut token in w.tokens_of(id)? {
                if !token.revoked {
                    token.revoked = true;
                    w.put_token(&token)?;
                    let data = json!({"userID": id, "tokenID": token.id, "reason": "deactivated"});
                    record(w, now, None, &actor, "token.revoked", &data)?;
                }
            }
            for (org, role) in w.orgs_of(id)? {
                let data = json!({"userID": id, "role": role.as_str(), "reason": "deactivated"});
                record(w, now, Some(org), &actor, "member.removed", &data)?;
            }
            remove_from_rooms(w, id, None, now, &actor)?;
            for (org, _) in w.orgs_of(id)? {
                w.remove_member(org, id)?;
            }
            if !user.deactivated {
                user.deactivated = true;
                w.put_user(&user)?;
                w.push_outbox(&OutboxOp::DeactivateUser { user_id: id })?;
            }
            Ok(())
        })?;
        self.forget_password(id);
        Ok(())
    }

    /// Issues a personal access token for a user.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id, name or lifetime, 404 unknown or deactivated user.
    pub fn issue_token(&self, p: Principal, user: i64, name: Option<&str>, days: Option<i64>) -> Result<IssuedToken> {
        Self::require_api(p)?;
        let user = positive("userID", user)?;
        let name = match name {
            Some(n) => super::name("name", n)?,
            None => "token".to_string(),
        };
        let max = i64::from(self.config.auth.pat_max_days);
        let days = days.unwrap_or(i64::from(self.config.auth.pat_default_days));
        if !(1..=max).contains(&days) {
            return Err(Error::invalid("expiresInDays", format!("must be between 1 and {max}, got {days}")));
        }
        let now = self.clock.now();
        let secret = new_token(PAT_PREFIX);
        let issued = self.write(|w| {
            match w.user(user)? {
                Some(u) if !u.deactivated => {}
                Some(_) => return Err(Error::NotFound(format!("user {user} is deactivated"))),
                None => return Err(no_user(user)),
            }
            let record = Token {
                id: w.next_id("token")?,
                kind: TokenKind::Personal,
                user_id: user,
                name,
                hash: token_hash(&secret),
                created_at: now,
                expires_at: Some(now + days * 86_400),
                revoked: false,
            };
            w.put_token(&record)?;
            let data = json!({
                "userID": user, "tokenID": record.id, "name": record.name,
                "expiresAt": record.expires_at.map(crate::model::rfc3339),
            });
            events::record(w, now, None, &Actor::from(p), "token.issued", &data)?;
            Ok(record)
        })?;
        Ok(IssuedToken { record: issued, secret })
    }

    /// A user's tokens (never their secrets).
    ///
    /// # Errors
    /// 403 not an API token, 422 bad id, 404 unknown user.
    pub fn tokens(&self, r: &impl Read, p: Principal, user: i64) -> Result<Vec<Token>> {
        Self::require_api(p)?;
        let user = positive("userID", user)?;
        r.user(user)?.ok_or_else(|| no_user(user))?;
        Ok(r.tokens_of(user)?)
    }

    /// Revokes one token of a user.
    ///
    /// # Errors
    /// 403 not an API token, 422 bad ids, 404 unknown token.
    pub fn revoke_token(&self, p: Principal, user: i64, token_id: i64) -> Result<()> {
        Self::require_api(p)?;
        let user = positive("userID", user)?;
        let token_id = positive("tokenID", token_id)?;
        let now = self.clock.now();
        self.write(|w| {
            let mut token = w
                .tokens_of(user)?
                .into_iter()
                .find(|t| i64::try_from(t.id) == Ok(token_id))
                .ok_or_else(|| Error::NotFound(format!("user {user} has no token {token_id}")))?;
            if !token.revoked {
                token.revoked = true;
                w.put_token(&token)?;
                let data = json!({"userID": user, "tokenID": token.id, "reason": "request"});
                record(w, now, None, &Actor::from(p), "token.revoked", &data)?;
            }
            Ok(())
        })
    }

    /// The user an operation acts for: a PAT's own user, or the one an API
    /// token names with `?user_id=`.
    ///
    /// # Errors
    /// 400 an API token without user_id, 422 bad id, 403 a PAT naming someone else, 404 unknown user.
    pub fn acting_user(&self, r: &impl Read, p: Principal, user_id: Option<i64>) -> Result<UserId> {
        let id = match (p, user_id) {
            (Principal::User(u), None) => u,
            (Principal::User(u), Some(v)) if v == u => u,
            (Principal::User(_), Some(_)) => {
                return Err(Error::Forbidden("a personal access token acts for its own user only".into()));
            }
            (Principal::Api(_), Some(v)) => positive("user_id", v)?,
            (Principal::Api(_), None) => {
                return Err(Error::Malformed("an API token must name the user: add ?user_id=<id>".into()));
            }
        };
        match r.user(id)? {
            Some(u) if !u.deactivated => Ok(id),
            Some(_) => Err(Error::NotFound(format!("user {id} is deactivated"))),
            None => Err(no_user(id)),
        }
    }
}

fn no_user(id: UserId) -> Error {
    Error::NotFound(format!("no user {id}")).with_remedy(Remedy::CreateUser(id))
}
