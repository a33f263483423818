//! A database belongs to one `secret.key`: every Matrix password is derived
//! from the key and every webhook secret sealed with it, so the same
//! database with another key (or a new one) would break every Matrix login
//! and every webhook.
//!
//! The database records a fingerprint of its key in `name_meta` (HMAC-SHA256
//! of the key over a label of its own: it tells nothing about the key) at the
//! first start that has a key: a new database gets a new key and its
//! fingerprint; a database of an earlier release, which recorded none, gets
//! the fingerprint of the key present at its first start after the upgrade.
//! From then on a start without that key is refused. A database of an
//! earlier release that holds users, webhooks or rooms and finds no key at
//! all is refused too: a new key would break them just the same; and so is
//! one whose webhook secret the key present does not open (another key).
//!
//! The start decides from a read-only open ([`inspect`]) before it opens the
//! file for writing, so a refused start leaves the file as it was. A new
//! entry in `name_meta` changes no stored type: the schema version stays.

use std::fmt;
use std::path::Path;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::migrate::{SCHEMA_KEY, SCHEMA_VERSION};
use super::tables::{NAME_META, ROOMID_ROOM, USERID_USER, WEBHOOKID_WEBHOOK};
use super::{Store, StoreError, codec, guarded};
use crate::model::Webhook;
use crate::secrets::ServerKey;

/// `name_meta` key of the fingerprint of the database's `secret.key`.
pub const FINGERPRINT_KEY: &str = "key_fingerprint";

/// Cache of the read-only open: it reads a handful of pages.
const INSPECT_CACHE_BYTES: usize = 1 << 20;

/// What the database keeps to recognise its key ([`ServerKey::fingerprint`]).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl codec::Versioned for Fingerprint {
    const VERSION: u8 = 1;
}

impl Fingerprint {
    #[must_use]
    pub fn of(key: &ServerKey) -> Self {
        Fingerprint(key.fingerprint())
    }
}

/// The first 8 bytes in hex: enough to tell two keys apart by eye.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// What the database holds that was made with its key: users (their Matrix
/// passwords), webhooks (their sealed secrets) and rooms (made on the
/// homeserver by the service's account, whose password comes from the key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Derived {
    pub users: u64,
    pub webhooks: u64,
    pub rooms: u64,
}

impl Derived {
    #[must_use]
    pub fn any(&self) -> bool {
        self.users + self.webhooks + self.rooms > 0
    }
}

impl fmt::Display for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} users, {} webhooks and {} rooms", self.users, self.webhooks, self.rooms)
    }
}

/// What the database says about its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRecord {
    pub fingerprint: Option<Fingerprint>,
    pub derived: Derived,
    /// The id and sealed secret of one webhook: where no fingerprint was
    /// recorded (an earlier release), the key must still open it.
    pub sealed: Option<(String, Vec<u8>)>,
}

impl KeyRecord {
    fn read(txn: &ReadTransaction) -> Result<Self, StoreError> {
        let fingerprint = match meta(txn, FINGERPRINT_KEY)? {
            None => None,
            Some(bytes) => Some(codec::decode(&bytes).map_err(|why| StoreError::Corrupt {
                table: "name_meta",
                key: FINGERPRINT_KEY.into(),
                why,
            })?),
        };
        let derived = Derived {
            users: entries(txn, USERID_USER)?,
            webhooks: entries(txn, WEBHOOKID_WEBHOOK)?,
            rooms: entries(txn, ROOMID_ROOM)?,
        };
        let sealed = match txn.open_table(WEBHOOKID_WEBHOOK) {
            Ok(t) => match t.first()? {
                Some((k, v)) => {
                    let hook: Webhook = codec::decode(v.value()).map_err(|why| StoreError::Corrupt {
                        table: "webhookid_webhook",
                        key: k.value().to_string(),
                        why,
                    })?;
                    Some((hook.id, hook.sealed_secret))
                }
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(KeyRecord { fingerprint, derived, sealed })
    }
}

/// Entries of a table; a table an older file does not have holds none.
fn entries<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<u64, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(t.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn meta(txn: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    match txn.open_table(NAME_META) {
        Ok(t) => Ok(t.get(key)?.map(|v| v.value().to_vec())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How the key file at hand stands to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key the database recorded.
    Matches(Fingerprint),
    /// The database recorded none yet (new, or of an earlier release): the
    /// next start records this key's.
    NotRecorded(Fingerprint),
    /// No key, and the database recorded none and holds nothing made with
    /// one: the next start makes a new key.
    NoKeyYet,
    /// No key, where the database needs one: `expected` is `None` for a
    /// database of an earlier release, which recorded none.
    Missing { expected: Option<Fingerprint>, derived: Derived },
    /// Another key than the one the database recorded.
    Differs { expected: Fingerprint, found: Fingerprint },
    /// The database recorded no fingerprint (an earlier release), and the
    /// key does not open the secret sealed in this webhook: another key.
    OpensNothing { found: Fingerprint, webhook: String },
}

/// Judges `key` (the key file's, `None` when there is none) against what the database says.
#[must_use]
pub fn verdict(record: &KeyRecord, key: Option<&ServerKey>) -> Verdict {
    let found = key.map(Fingerprint::of);
    match (record.fingerprint, found) {
        (Some(expected), Some(found)) if expected == found => Verdict::Matches(found),
        (Some(expected), Some(found)) => Verdict::Differs { expected, found },
        (None, Some(found)) => match (&record.sealed, key) {
            (Some((webhook, sealed)), Some(key)) if key.open_webhook_secret(webhook, sealed).is_err() => {
                Verdict::OpensNothing { found, webhook: webhook.clone() }
            }
            _ => Verdict::NotRecorded(found),
        },
        (expected @ Some(_), None) => Verdict::Missing { expected, derived: record.derived },
        (None, None) if record.derived.any() => Verdict::Missing { expected: None, derived: record.derived },
        (None, None) => Verdict::NoKeyYet,
    }
}

impl Verdict {
    /// Why the service must not start with this key, naming the key file,
    /// the fingerprint the database expects and what to restore; `None`
    /// when it may.
    #[must_use]
    pub fn refusal(&self, db: &Path, key_file: &Path) -> Option<String> {
        let (db, file) = (db.display(), key_file.display());
        let why = "a new or other key would change every user's Matrix password (breaking their Matrix logins) \
                   and leave the stored webhook secrets unreadable";
        let restore = format!(
            "restore the secret.key backed up with this database to {file} (owner-only, chmod 600), then start again; \
             nothing was changed"
        );
        match self {
            Verdict::Matches(_) | Verdict::NotRecorded(_) | Verdict::NoKeyYet => None,
            Verdict::Missing { expected: Some(expected), derived } => Some(format!(
                "{file} is missing, and the database {db} belongs to the key with fingerprint {expected} \
                 (it holds {derived}): {why}; {restore}"
            )),
            Verdict::Missing { expected: None, derived } => Some(format!(
                "{file} is missing, and the database {db} holds {derived} made with a key (its release did not \
                 record the key's fingerprint): {why}; {restore}"
            )),
            Verdict::Differs { expected, found } => Some(format!(
                "{file} is not the key of the database {db}: its fingerprint is {found}, the database expects \
                 {expected}: {why}; {restore}"
            )),
            Verdict::OpensNothing { found, webhook } => Some(format!(
                "{file} (fingerprint {found}) is not the key of the database {db}: it does not open the secret of \
                 webhook {webhook:?} sealed there (the database's release did not record its key's fingerprint): \
                 {why}; {restore}"
            )),
        }
    }

    /// One line for `check`.
    #[must_use]
    pub fn report(&self, key_file: &Path) -> String {
        let file = key_file.display();
        match self {
            Verdict::Matches(f) => format!("server key {file}: fingerprint {f}, the one the database recorded"),
            Verdict::NotRecorded(f) => format!(
                "server key {file}: fingerprint {f}; the database recorded none yet, its next start records this one"
            ),
            Verdict::NoKeyYet => {
                format!("server key {file}: none yet, and the database needs none; the next start makes one")
            }
            Verdict::Missing { expected: Some(e), .. } => {
                format!("problem: server key {file} is missing; the database expects fingerprint {e}")
            }
            Verdict::Missing { expected: None, derived } => format!(
                "problem: server key {file} is missing; the database holds {derived} made with a key \
                 (fingerprint not recorded by its release)"
            ),
            Verdict::Differs { expected, found } => format!(
                "problem: server key {file} has fingerprint {found}; the database expects {expected}: \
                 restore the secret.key backed up with this database"
            ),
            Verdict::OpensNothing { found, webhook } => format!(
                "problem: server key {file} (fingerprint {found}) does not open the secret of webhook {webhook:?}: \
                 restore the secret.key backed up with this database"
            ),
        }
    }
}

/// What the database file at `path` says about its key, read without
/// writing to the file. A missing file is a new database. `Ok(None)` when
/// redb must repair the file before it can be read (it was not closed
/// cleanly): the writable open repairs it, and [`Store::bind_key`] decides.
///
/// # Errors
/// An empty file, one written by a newer release or with an unknown schema
/// version, one held by a running service, one that is not a database.
pub fn inspect(path: &Path) -> Result<Option<KeyRecord>, StoreError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(KeyRecord::default())),
        Ok(m) if m.len() == 0 => return Err(StoreError::Empty),
        _ => {}
    }
    guarded(|| {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(INSPECT_CACHE_BYTES);
        let db = match builder.open_read_only(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let txn = db.begin_read()?;
        if let Some(bytes) = meta(&txn, SCHEMA_KEY)? {
            // Anything else about the schema is judged by the writable open.
            if let Ok(found) = codec::decode::<u64>(&bytes) {
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Newer { found, known: SCHEMA_VERSION });
                }
                if found == 0 {
                    return Err(StoreError::UnknownSchema { found, known: SCHEMA_VERSION });
                }
            }
        }
        KeyRecord::read(&txn).map(Some)
    })
}

impl Store {
    /// What this database says about its key.
    ///
    /// # Errors
    /// Storage failures; a fingerprint that does not decode.
    pub fn key_record(&self) -> Result<KeyRecord, StoreError> {
        KeyRecord::read(&self.read()?.txn)
    }

    /// The server key this database is served with: the key file's when it
    /// is the one the database recorded; a new key file for a database that
    /// needs none yet. Records the fingerprint when none is.
    ///
    /// # Errors
    /// The refusal of [`Verdict::refusal`]; the key file or the database
    /// cannot be written.
    pub fn bind_key(&self, key: Option<ServerKey>, db: &Path, key_file: &Path) -> Result<ServerKey, String> {
        let fail = |e: StoreError| format!("cannot open {}: {e}", db.display());
        let record = self.key_record().map_err(fail)?;
        if let Some(refusal) = verdict(&record, key.as_ref()).refusal(db, key_file) {
            return Err(refusal);
        }
        let key = match key {
            Some(key) => key,
            None => {
                let key = ServerKey::create(key_file)?;
                tracing::info!(file = %key_file.display(), "made a new server key for a new database");
                key
            }
        };
        if record.fingerprint.is_none() {
            let fingerprint = Fingerprint::of(&key);
            self.write(|w| {
                w.txn.open_table(NAME_META)?.insert(FINGERPRINT_KEY, codec::encode(&fingerprint).as_slice())?;
                Ok::<_, StoreError>(())
            })
            .map_err(fail)?;
            tracing::info!(
                %fingerprint,
                file = %key_file.display(),
                "recorded the fingerprint of the server key in the database: it starts with this key only from now on"
            );
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fingerprint: Option<&ServerKey>, users: u64) -> KeyRecord {
        KeyRecord {
            fingerprint: fingerprint.map(Fingerprint::of),
            derived: Derived { users, webhooks: 0, rooms: 0 },
            sealed: None,
        }
    }

    #[test]
    fn verdicts() {
        let (a, b) = (ServerKey::from_bytes([1; 32]), ServerKey::from_bytes([2; 32]));
        assert_eq!(verdict(&record(Some(&a), 3), Some(&a)), Verdict::Matches(Fingerprint::of(&a)));
        assert!(matches!(verdict(&record(Some(&a), 0), Some(&b)), Verdict::Differs { .. }));
        assert!(matches!(verdict(&record(Some(&a), 0), None), Verdict::Missing { expected: Some(_), .. }));
        assert!(matches!(verdict(&record(None, 1), None), Verdict::Missing { expected: None, .. }));
        assert_eq!(verdict(&record(None, 0), None), Verdict::NoKeyYet);
        assert_eq!(verdict(&record(None, 5), Some(&b)), Verdict::NotRecorded(Fingerprint::of(&b)));
        let sealed = Some(("crm".to_string(), a.seal_webhook_secret("crm", b"secret")));
        let old = KeyRecord { sealed, ..record(None, 1) };
        assert_eq!(verdict(&old, Some(&a)), Verdict::NotRecorded(Fingerprint::of(&a)), "its key opens it");
        assert!(matches!(verdict(&old, Some(&b)), Verdict::OpensNothing { .. }), "another key does not");
    }

    #[test]
    fn refusals_name_the_file_the_fingerprint_and_the_backup() {
        let (a, b) = (ServerKey::from_bytes([1; 32]), ServerKey::from_bytes([2; 32]));
        let (db, file) = (Path::new("/srv/db.redb"), Path::new("/srv/secret.key"));
        let text = verdict(&record(Some(&a), 3), Some(&b)).refusal(db, file).unwrap();
        let (fa, fb) = (Fingerprint::of(&a).to_string(), Fingerprint::of(&b).to_string());
        assert_eq!(fa.len(), 16);
        assert!(text.contains("/srv/secret.key") && text.contains(&fa) && text.contains(&fb), "{text}");
        assert!(text.contains("restore the secret.key backed up with this database"), "{text}");
        let text = verdict(&record(Some(&a), 3), None).refusal(db, file).unwrap();
        assert!(text.contains("is missing") && text.contains(&fa) && text.contains("3 users"), "{text}");
        assert!(verdict(&record(None, 0), None).refusal(db, file).is_none());
        assert!(!format!("{:?}", Fingerprint::of(&a)).contains(&hex::encode([1u8; 32])));
    }
}
