//! API tokens as operators manage them: the ones listed in
//! `auth.api_token_hashes` and the one the first start made (stored in the
//! database). Each has an id (the first 12 hex digits of its SHA-256, so a
//! config entry needs no stored id) and a name; none is ever kept or shown
//! in plaintext.
//!
//! Revoking a config token writes a revoked API token record under its
//! hash, in the same table as the first-start token: authentication looks
//! the hash up anyway, and the config may keep listing it until the
//! operator edits the file.

use crate::error::{Error, Result};
use crate::model::{Token, TokenKind};
use crate::secrets::{API_TOKEN_PREFIX, new_token, token_hash};
use crate::store::Read;

use super::Domain;

/// Name of the token the first start makes.
pub const FIRST_START_NAME: &str = "first start";

/// The id operators know an API token by: the first 12 hex digits of its SHA-256.
#[must_use]
pub fn api_token_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..6])
}

/// Where an API token is accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTokenSource {
    /// Entry `index` of `auth.api_token_hashes`.
    Config { index: usize },
    /// Only the database (the first-start token, or a revoked config token
    /// whose entry is gone from the config).
    Database,
}

/// Whether an API token is accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTokenStatus {
    Active,
    Revoked,
    /// A stored token while `auth.api_token_hashes` is set and does not list it.
    NotListed,
}

/// One API token as `token list-api` shows it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub id: String,
    pub name: String,
    pub source: ApiTokenSource,
    pub status: ApiTokenStatus,
}

/// The token a first start made: its secret, to be shown once, and its id.
#[derive(Debug)]
pub struct FirstStartToken {
    pub secret: String,
    pub id: String,
}

impl Domain {
    /// Creates the first API token when the config names none and the
    /// database holds no usable one: returns it, to be shown once.
    ///
    /// # Errors
    /// Storage failures.
    pub fn ensure_api_token(&self) -> Result<Option<FirstStartToken>> {
        if !self.api_hashes.is_empty() {
            return Ok(None);
        }
        // A revoked first-start token does not count: the operator would
        // otherwise be locked out with nothing to log in with.
        if self.store.read()?.tokens_of(0)?.iter().any(|t| t.kind == TokenKind::Api && !t.revoked) {
            return Ok(None);
        }
        let secret = new_token(API_TOKEN_PREFIX);
        let hash = token_hash(&secret);
        let now = self.clock.now();
        self.write(|w| {
            let record = Token {
                id: w.next_id("token")?,
                kind: TokenKind::Api,
                user_id: 0,
                name: FIRST_START_NAME.into(),
                hash,
                created_at: now,
                expires_at: None,
                revoked: false,
            };
            Ok(w.put_token(&record)?)
        })?;
        Ok(Some(FirstStartToken { secret, id: api_token_id(&hash) }))
    }

    /// Every API token: the config's in their order, then those only the
    /// database knows.
    ///
    /// # Errors
    /// Storage failures.
    pub fn api_tokens(&self, r: &impl Read) -> Result<Vec<ApiTokenInfo>> {
        let stored: Vec<Token> = r.tokens_of(0)?.into_iter().filter(|t| t.kind == TokenKind::Api).collect();
        let mut out = Vec::new();
        for (index, (hash, name)) in self.api_hashes.iter().enumerate() {
            let revoked = stored.iter().any(|t| t.hash == *hash && t.revoked);
            out.push(ApiTokenInfo {
                id: api_token_id(hash),
                name: name.clone(),
                source: ApiTokenSource::Config { index },
                status: if revoked { ApiTokenStatus::Revoked } else { ApiTokenStatus::Active },
            });
        }
        for t in stored.iter().filter(|t| !self.api_hashes.iter().any(|(h, _)| *h == t.hash)) {
            let status = if t.revoked {
                ApiTokenStatus::Revoked
            } else if self.api_hashes.is_empty() {
                ApiTokenStatus::Active
            } else {
                ApiTokenStatus::NotListed
            };
            out.push(ApiTokenInfo {
                id: api_token_id(&t.hash),
                name: t.name.clone(),
                source: ApiTokenSource::Database,
                status,
            });
        }
        Ok(out)
    }

    /// Revokes the API token with this id (or full hex hash): from now on it
    /// gets 401, even while the config still lists it. Returns the token as
    /// it is now.
    ///
    /// # Errors
    /// 400 a malformed id, 404 no such token.
    pub fn revoke_api_token(&self, id: &str) -> Result<ApiTokenInfo> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 12 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Malformed(format!(
                "{id:?} is not an API token id: give the 12 hex digits `token list-api` shows"
            )));
        }
        let now = self.clock.now();
        self.write(|w| {
            let stored: Vec<Token> = w.tokens_of(0)?.into_iter().filter(|t| t.kind == TokenKind::Api).collect();
            let mut hashes: Vec<[u8; 32]> = self.api_hashes.iter().map(|(h, _)| *h).collect();
            hashes.extend(stored.iter().map(|t| t.hash));
            hashes.sort_unstable();
            hashes.dedup();
            let matching: Vec<[u8; 32]> = hashes.into_iter().filter(|h| hex::encode(h).starts_with(&id)).collect();
            let hash = match matching.as_slice() {
                [one] => *one,
                [] => return Err(Error::NotFound(format!("no API token {id}; `token list-api` shows every id"))),
                _ => return Err(Error::Malformed(format!("{id} names several API tokens; give more hex digits"))),
            };
            match stored.into_iter().find(|t| t.hash == hash) {
                Some(mut t) if !t.revoked => {
                    t.revoked = true;
                    w.put_token(&t)?;
                }
                Some(_) => {}
                None => {
                    let name = self.api_hashes.iter().find(|(h, _)| *h == hash).map(|(_, n)| n.clone());
                    let record = Token {
                        id: w.next_id("token")?,
                        kind: TokenKind::Api,
                        user_id: 0,
                        name: name.unwrap_or_default(),
                        hash,
                        created_at: now,
                        expires_at: None,
                        revoked: true,
                    };
                    w.put_token(&record)?;
                }
            }
            let info = self.api_tokens(w)?.into_iter().find(|t| t.id == api_token_id(&hash));
            info.ok_or_else(|| Error::Internal("a revoked API token vanished".into()))
        })
    }
}
