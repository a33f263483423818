//! `export` / `import`: every record as JSON Lines, from one consistent
//! snapshot, and its restore into an empty database. Indexes are not
//! exported: importing writes each record through the same `Writer`
//! methods as the service, which rebuild them.

use std::io::{BufRead, Write};

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Read, Reader, Store, StoreError, Writer, decode};
use crate::model::{DeliveryAttempt, Event, Organization, OutboxOp, Room, Token, User, Webhook};

/// Name of the dump format, in its first line.
pub const FORMAT: &str = "messenger-chat-export";
/// Version of the dump format written today. 2: rooms carry `topic` and
/// `automation_given` (who gave each role), `read_only` and `read_only_at`
/// (absent: false and none); `event` records hold the event log. Import reads every version up
/// to this one: a version 1 room has no topic, read as empty, and the
/// origin of its roles is inferred as the migration from schema 1 infers it
/// (`migrate::settle_schema_1_room`, from the organization roles the dump
/// lists before its rooms). An older release refuses a newer dump rather
/// than dropping what it does not know.
pub const VERSION: u32 = 2;

/// One line of a dump.
#[allow(
    clippy::large_enum_variant,
    reason = "records pass one at a time; boxing rooms would only add allocations (allow: which variant is largest changes as records grow)"
)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Header {
        format: String,
        version: u32,
        records: u64,
    },
    Counter {
        name: String,
        value: u64,
    },
    Organization(Organization),
    User(User),
    Member {
        organization: i64,
        user: i64,
        role: u8,
    },
    Token(Token),
    Room(Room),
    Avatar {
        room: u64,
        base64: String,
    },
    Outbox {
        seq: u64,
        op: OutboxOp,
    },
    MatrixAccount {
        user: i64,
    },
    DeleteId {
        matrix_room_id: String,
        delete_id: String,
    },
    /// An entry of the event log (the audit trail survives a restore).
    Event(Event),
    /// A webhook, its sealed secret and its delivery cursor (the secret
    /// opens only with the same server key).
    Webhook(Webhook),
    /// One attempt of a webhook's delivery log.
    Delivery {
        webhook: String,
        seq: u64,
        attempt: DeliveryAttempt,
    },
}

/// Why a dump cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the dump: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {why}")]
    Bad { line: u64, why: String },
    #[error("the database is not empty; import only into a new data directory, or pass --force to add to it")]
    NotEmpty,
}

impl From<redb::StorageError> for DumpError {
    fn from(e: redb::StorageError) -> Self {
        DumpError::Store(e.into())
    }
}

impl Store {
    /// Writes every record to `out`, one JSON object a line, from one
    /// snapshot. `progress` gets (done, total) now and then. Returns the
    /// number of records.
    ///
    /// # Errors
    /// Storage or write failures.
    pub fn export(&self, out: &mut impl Write, mut progress: impl FnMut(u64, u64)) -> Result<u64, DumpError> {
        use base64::Engine as _;
        let r = self.read()?;
        let total = r.record_count()?;
        let header = Record::Header { format: FORMAT.into(), version: VERSION, records: total };
        serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        let mut done = 0u64;
        let mut emit = |rec: &Record| -> Result<(), DumpError> {
            serde_json::to_writer(&mut *out, rec).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            done += 1;
            if done.is_multiple_of(4096) {
                progress(done, total);
            }
            Ok(())
        };
        for e in r.table(NAME_COUNTER)?.iter()? {
            let (k, v) = e?;
            emit(&Record::Counter { name: k.value().to_string(), value: v.value() })?;
        }
        for e in r.table(ORGID_ORG)?.iter()? {
            emit(&Record::Organization(decode("orgid_org", e?.1.value())?))?;
        }
        for e in r.table(USERID_USER)?.iter()? {
            emit(&Record::User(decode("userid_user", e?.1.value())?))?;
        }
        for e in r.table(ORGIDUSERID_ROLE)?.iter()? {
            let (k, v) = e?;
            let (organization, user) = k.value();
            emit(&Record::Member { organization, user, role: v.value() })?;
        }
        for e in r.table(USERIDTOKENID_TOKENHASH)?.iter()? {
            let (_, hash) = e?;
            if let Some(v) = r.table(TOKENHASH_TOKEN)?.get(hash.value())? {
                emit(&Record::Token(decode("tokenhash_token", v.value())?))?;
            }
        }
        for e in r.table(ROOMID_ROOM)?.iter()? {
            emit(&Record::Room(decode("roomid_room", e?.1.value())?))?;
        }
        for e in r.table(ROOMID_AVATAR)?.iter()? {
            let (k, v) = e?;
            let base64 = base64::engine::general_purpose::STANDARD.encode(v.value());
            emit(&Record::Avatar { room: k.value(), base64 })?;
        }
        for e in r.table(SEQ_OUTBOX)?.iter()? {
            let (k, v) = e?;
            emit(&Record::Outbox { seq: k.value(), op: decode("seq_outbox", v.value())? })?;
        }
        for e in r.table(USERID_MATRIXACCOUNT)?.iter()? {
            emit(&Record::MatrixAccount { user: e?.0.value() })?;
        }
        for e in r.table(MATRIXROOMID_DELETEID)?.iter()? {
            let (k, v) = e?;
            emit(&Record::DeleteId { matrix_room_id: k.value().to_string(), delete_id: v.value().to_string() })?;
        }
        for e in r.table(EVENTID_EVENT)?.iter()? {
            emit(&Record::Event(decode("eventid_event", e?.1.value())?))?;
        }
        for e in r.table(WEBHOOKID_WEBHOOK)?.iter()? {
            emit(&Record::Webhook(decode("webhookid_webhook", e?.1.value())?))?;
        }
        for e in r.table(WEBHOOKIDSEQ_DELIVERY)?.iter()? {
            let (k, v) = e?;
            let (webhook, seq) = k.value();
            let attempt = decode("webhookidseq_delivery", v.value())?;
            emit(&Record::Delivery { webhook: webhook.to_string(), seq, attempt })?;
        }
        out.flush()?;
        progress(done, total);
        Ok(done)
    }

    /// Reads a dump into this database, in batches of one write transaction
    /// each. Refuses a database that holds anything unless `force`.
    ///
    /// # Errors
    /// A malformed line (nothing after it is written), or storage failures.
    pub fn import(
        &self,
        input: impl BufRead,
        force: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, DumpError> {
        if !force && self.read()?.record_count()? > 0 {
            return Err(DumpError::NotEmpty);
        }
        let mut lines = input.lines();
        let bad = |line: u64, why: String| DumpError::Bad { line, why };
        let header = match lines.next() {
            Some(l) => serde_json::from_str::<Record>(&l?).map_err(|e| bad(1, e.to_string()))?,
            None => return Err(bad(1, "empty input: expected a messenger-chat export".into())),
        };
        let (total, header_version) = match header {
            Record::Header { format, version, records } if format == FORMAT && (1..=VERSION).contains(&version) => {
                (records, version)
            }
            Record::Header { format, version, .. } if format == FORMAT => {
                return Err(bad(
                    1,
                    format!(
                        "a {FORMAT} version {version} dump, from a newer release; this one reads versions 1 to {VERSION}"
                    ),
                ));
            }
            _ => return Err(bad(1, format!("not a {FORMAT} dump (versions 1 to {VERSION})"))),
        };
        // Written by the release of schema 1: rooms as that release kept them.
        let schema_1 = header_version == 1;
        let mut batch = Vec::with_capacity(1024);
        let mut n = 0u64;
        for (i, line) in lines.enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: Record = serde_json::from_str(&line).map_err(|e| bad(i as u64 + 2, e.to_string()))?;
            batch.push(rec);
            if batch.len() == 1024 {
                n += self.write(|w| apply(w, batch.drain(..), schema_1))?;
                progress(n, total);
            }
        }
        n += self.write(|w| apply(w, batch.drain(..), schema_1))?;
        progress(n, total);
        Ok(n)
    }
}

/// Writes records; `schema_1` rooms get what the migration from schema 1 gives them.
fn apply(w: &mut Writer, records: impl Iterator<Item = Record>, schema_1: bool) -> Result<u64, StoreError> {
    use base64::Engine as _;
    let mut n = 0;
    for rec in records {
        match rec {
            Record::Header { .. } => continue,
            Record::Counter { name, value } => {
                w.txn.open_table(NAME_COUNTER)?.insert(name.as_str(), value)?;
            }
            Record::Organization(o) => w.put_org(&o)?,
            Record::User(u) => w.put_user(&u)?,
            Record::Member { organization, user, role } => {
                w.set_member(organization, user, super::role_from_byte(role)?)?;
            }
            Record::Token(t) => w.put_token(&t)?,
            Record::Room(mut r) => {
                if schema_1 {
                    let org = r.org_id;
                    super::migrate::settle_schema_1_room(&mut r, |u| w.member_role(org, u))?;
                }
                let previous = w.room(r.id)?;
                w.put_room(&r, previous.as_ref())?;
            }
            Record::Avatar { room, base64 } => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(base64).map_err(|e| {
                    StoreError::Corrupt { table: "roomid_avatar", key: room.to_string(), why: e.to_string() }
                })?;
                w.set_avatar(room, Some(&bytes))?;
            }
            Record::Outbox { seq, op } => {
                w.txn.open_table(SEQ_OUTBOX)?.insert(seq, super::codec::encode(&op).as_slice())?;
            }
            Record::MatrixAccount { user } => w.set_matrix_account(user, true)?,
            Record::DeleteId { matrix_room_id, delete_id } => w.set_delete_id(&matrix_room_id, Some(&delete_id))?,
            Record::Event(e) => w.put_event(&e)?,
            Record::Webhook(h) => w.put_webhook(&h)?,
            Record::Delivery { webhook, seq, attempt } => w.put_delivery(&webhook, seq, &attempt)?,
        }
        n += 1;
    }
    Ok(n)
}

impl Reader {
    /// How many records an export of this snapshot holds (without its header).
    fn record_count(&self) -> Result<u64, StoreError> {
        Ok(self.table(NAME_COUNTER)?.len()?
            + self.table(ORGID_ORG)?.len()?
            + self.table(USERID_USER)?.len()?
            + self.table(ORGIDUSERID_ROLE)?.len()?
            + self.table(TOKENHASH_TOKEN)?.len()?
            + self.table(ROOMID_ROOM)?.len()?
            + self.table(ROOMID_AVATAR)?.len()?
            + self.table(SEQ_OUTBOX)?.len()?
            + self.table(USERID_MATRIXACCOUNT)?.len()?
            + self.table(MATRIXROOMID_DELETEID)?.len()?
            + self.table(EVENTID_EVENT)?.len()?
            + self.table(WEBHOOKID_WEBHOOK)?.len()?
            + self.table(WEBHOOKIDSEQ_DELIVERY)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OrgRole, RoomKind, TokenKind};

    fn sample(store: &Store) {
        store
            .write(|w| {
                w.next_id("room")?;
                w.put_org(&Organization { id: 1, name: "Acme".into(), created_at: 5 })?;
                w.put_user(&User { id: 7, display_name: "Ann".into(), deactivated: false, created_at: 5 })?;
                w.set_member(1, 7, OrgRole::Owner)?;
                w.put_token(&Token {
                    id: 1,
                    kind: TokenKind::Personal,
                    user_id: 7,
                    name: "phone".into(),
                    hash: [9; 32],
                    created_at: 5,
                    expires_at: Some(99),
                    revoked: false,
                })?;
                let mut room = crate::domain::rooms::blank_room(1, 1, 5);
                room.kind = RoomKind::Default;
                room.name = "General".into();
                room.admins = vec![7];
                room.matrix_room_id = "!a:hs".into();
                room.scheduled_deletion = Some(1000);
                room.read_only_at = Some(1500);
                w.put_room(&room, None)?;
                w.set_avatar(1, Some(b"\x89PNG\r\n\x1a\nxx"))?;
                w.push_outbox(&OutboxOp::SyncRoom { room_id: 1 })?;
                w.set_matrix_account(7, true)?;
                w.append_event(
                    5,
                    Some(1),
                    crate::model::Actor::User(7),
                    "room.created",
                    &serde_json::json!({"roomID": 1}),
                )?;
                w.append_event(6, None, crate::model::Actor::System, "user.deactivated", &serde_json::json!({}))?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn export_import_export_is_identical() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a.redb"), 1 << 20).unwrap();
        sample(&a);
        let mut first = Vec::new();
        a.export(&mut first, |_, _| {}).unwrap();
        let b = Store::open(&dir.path().join("b.redb"), 1 << 20).unwrap();
        b.import(first.as_slice(), false, |_, _| {}).unwrap();
        let mut second = Vec::new();
        b.export(&mut second, |_, _| {}).unwrap();
        assert_eq!(String::from_utf8(first.clone()).unwrap(), String::from_utf8(second).unwrap());
        // Indexes are rebuilt, not copied.
        let r = b.read().unwrap();
        assert_eq!(r.default_room_id(1).unwrap(), Some(1));
        assert_eq!(r.room_id_by_matrix_id("!a:hs").unwrap(), Some(1));
        assert_eq!(r.user_room_ids(7).unwrap(), vec![1]);
        assert_eq!(r.rooms_due(2000, 10).unwrap(), vec![1]);
        assert_eq!(r.rooms_read_only_due(2000, 10).unwrap(), vec![1]);
        assert_eq!(r.orgs_of(7).unwrap(), vec![(1, OrgRole::Owner)]);
        assert_eq!(r.tokens_of(7).unwrap().len(), 1);
        let org_events: Vec<u64> = r.events_after(Some(1), 0, 10).unwrap().iter().map(|e| e.id).collect();
        assert_eq!((org_events, r.last_event_id().unwrap()), (vec![1], 2), "the event log and its index");
        drop(r);
        assert!(matches!(b.import(first.as_slice(), false, |_, _| {}), Err(DumpError::NotEmpty)));
    }

    /// A room of a dump written before read-only rooms: not read-only, nothing scheduled.
    #[test]
    fn a_room_without_read_only_fields_reads_as_writable() {
        let mut room = serde_json::to_value(crate::domain::rooms::blank_room(1, 1, 5)).unwrap();
        let fields = room.as_object_mut().unwrap();
        assert!(fields.remove("read_only").is_some() && fields.remove("read_only_at").is_some());
        let back: Room = serde_json::from_value(room).unwrap();
        assert_eq!((back.read_only, back.read_only_at), (false, None));
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.redb"), 1 << 20).unwrap();
        let input = format!(
            "{{\"record\":\"header\",\"format\":\"{FORMAT}\",\"version\":1,\"records\":1}}\n{{\"record\":\"nope\"}}\n"
        );
        let err = s.import(input.as_bytes(), false, |_, _| {}).unwrap_err().to_string();
        assert!(err.starts_with("line 2"), "{err}");
    }
}
