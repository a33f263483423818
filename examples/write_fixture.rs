//! Writes the upgrade fixture of this release: a small database that holds
//! something in every table, made through the service's own domain and store
//! code with a pinned clock and known token secrets, so every release can
//! keep the file its predecessor wrote and a test can open it with today's
//! code (`tests/upgrade`). Run it through `scripts/write-fixture.sh`.
//!
//! Besides the `.redb` file it writes a JSON manifest: what the fixture holds
//! in words, the secrets of its tokens (test-only values), the JSON this
//! release answers for each room, and this release's `export` of the file
//! (every record, field by field).
//!
//! What the homeserver would have done is written straight into the store,
//! as the reconciler writes it: some rooms synced with a Matrix id and an
//! uploaded avatar, a room delete being followed, accounts known to exist;
//! the rest stays in the outbox as pending work of every kind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use clap::Parser;
use messenger_chat::config::Config;
use messenger_chat::domain::rooms::{NewRoom, RoomPatch, RoomRef, UserLists};
use messenger_chat::domain::webhooks::WebhookSpec;
use messenger_chat::domain::{Clock, Domain, Principal};
use messenger_chat::model::{DeliveryAttempt, OrgRole, OutboxOp, Room, RoomId, Token, TokenKind};
use messenger_chat::secrets::{ServerKey, token_hash};
use messenger_chat::store::{Read, Store, StoreError, codec, tables};
use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Writes tests/fixtures/schema-<N>.redb and its manifest for the current release")]
struct Args {
    /// Directory to write into (tests/fixtures).
    #[arg(long)]
    dir: PathBuf,
    /// The commit the fixture is written from, recorded in the manifest.
    #[arg(long, default_value = "unknown")]
    commit: String,
    /// Replace a fixture of the same schema version.
    #[arg(long)]
    force: bool,
}

/// 2026-01-01T00:00:00Z: every timestamp in the fixture counts from here.
const T0: i64 = 1_767_225_600;
/// 2100-01-01T00:00:00Z: far enough that the scheduled deletions and token
/// expiries below stay in the future whenever the fixture is opened.
const FAR: i64 = 4_102_444_800;

/// Test-only secrets; their SHA-256 is what the fixture stores.
const API_TOKEN: &str = "mca_fixture_api_token_for_tests_only_000000000000000";
const ANN_PHONE: &str = "mcp_fixture_ann_phone_for_tests_only_00000000000000";
const ANN_LAPTOP: &str = "mcp_fixture_ann_laptop_for_tests_only_0000000000000";
const BEN_TABLET: &str = "mcp_fixture_ben_tablet_for_tests_only_0000000000000";
const CARA_PHONE: &str = "mcp_fixture_cara_phone_for_tests_only_0000000000000";
const DAN_PHONE: &str = "mcp_fixture_dan_phone_for_tests_only_00000000000000";
const EVE_PHONE: &str = "mcp_fixture_eve_phone_for_tests_only_00000000000000";

/// A real 1×1 PNG and a real 1×1 GIF.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// A clock that moves one minute on every reading, so records made one
/// after another get distinct, reproducible times.
struct StepClock(AtomicI64);

impl Clock for StepClock {
    fn now(&self) -> i64 {
        self.0.fetch_add(60, Ordering::SeqCst)
    }
}

/// The fixtures' server key (`schema-N.key`, a test-only secret).
const KEY: [u8; 32] = [7; 32];

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Fallible<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let scratch = tempfile::tempdir()?;
    let db = scratch.path().join("fixture.redb");
    // The key a start of this release would have made and recorded; it is
    // written next to the fixture, as an operator backs it up with the database.
    let store = Store::open(&db, 4 << 20)?;
    let key = store.bind_key(Some(ServerKey::from_bytes(KEY)), &db, &scratch.path().join("secret.key"))?;
    let domain = Domain::new(store, Arc::new(Config::default()), key, Arc::new(StepClock(AtomicI64::new(T0))))?;
    let tokens = populate(&domain)?;

    let mut export = Vec::new();
    domain.store.export(&mut export, |_, _| {})?;
    let export: Vec<Value> = String::from_utf8(export)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let served = served_rooms(&domain.store)?;
    drop(domain);

    let schema = schema_version(&db)?;
    let stem = format!("schema-{schema}");
    let target = args.dir.join(format!("{stem}.redb"));
    if target.exists() && !args.force {
        return Err(format!(
            "{} exists: a fixture is written once, by the release it belongs to (--force replaces it)",
            target.display()
        )
        .into());
    }
    std::fs::copy(&db, &target)?;
    std::fs::write(args.dir.join(format!("{stem}.key")), KEY)?;
    let manifest = json!({
        "schema_version": schema,
        "release": env!("CARGO_PKG_VERSION"),
        "commit": args.commit,
        "written_by": "scripts/write-fixture.sh (examples/write_fixture.rs)",
        "description": DESCRIPTION,
        "api_token": API_TOKEN,
        "tokens": tokens,
        "rooms": served,
        "export": export,
    });
    let manifest_path = args.dir.join(format!("{stem}.json"));
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)? + "\n")?;
    println!("{}", target.display());
    println!("{}", manifest_path.display());
    Ok(())
}

/// What the fixture holds, for people; the test reads the rest of the manifest.
const DESCRIPTION: &[&str] = &[
    "Written with a clock pinned at 2026-01-01T00:00:00Z that moves one minute per reading.",
    "Organizations: 1 Acme, 2 Beta Club, 3 Gamma Works (no rooms).",
    "Users: 1 Ann Owner, 2 Ben Admin, 3 Cara Member, 4 Dan Departed (deactivated), 5 Eve Owner, \
     6 (no display name: made by a membership), 7 Gus Guest (in rooms, in no organization).",
    "Members: org 1: Ann owner, Ben admin, Cara member (Dan was a member until deactivated); \
     org 2: Eve owner, Cara member, user 6 member; org 3: Ann admin.",
    "Tokens: the first-start API token (id 1); PATs: Ann phone (expires 2100), Ann laptop (revoked), \
     Ben tablet (expired 2026-01-31), Cara phone, Dan phone (revoked by the deactivation), Eve phone.",
    "Rooms: 1 Acme's default room (automation on, synced); 2 custom Board (PNG avatar uploaded, scheduled \
     deletion 2100-01-01, Cara claimed it, synced); 3 event 42 Launch party (GIF avatar waiting, automation \
     on, scheduled deletion 2100-03-01, pending with a sync error); 4 custom Doomed (synced, then deleted: \
     its homeserver delete is being followed); 5 custom Pending plain (pending); 6 Beta Club's default room \
     (PNG avatar waiting, Eve claimed it, pending); 7 event 7 Beta meetup (made by Eve's PAT, pending).",
    "Topics (schema 2 on): room 1 Everything Acme, room 2 two lines, room 5 set and then cleared; \
     the others none.",
    "Origin of roles (schema 2 on): in rooms 1 and 3 (automation on) Ann and Ben are admins and Cara \
     assigned through automation, except Ben in room 3, named admin explicitly with add-users afterwards; \
     every other role was given explicitly (Ann as the creator of room 2, Eve of room 7).",
    "Read-only (schema 2 on): room 2 made read-only by Ann; room 3 to become read-only at 2100-02-28 \
     (readOnlyAt); the others writable.",
    "Event log (schema 2 on): the events of every change above as the domain wrote them, with their \
     actors (the command line, or the PATs of the users who made or claimed rooms); none from the \
     reconciler, whose work is written directly.",
    "Webhooks (schema 2 on): acme-backend, for Acme's room.* and member.added events to \
     https://hooks.example.com/messenger, failing since 2026-01-01 (gave up; sends nothing), with one \
     attempt (503) in its delivery log; its secret is random, sealed with the fixture's server key.",
    "Outbox: SyncRoom for rooms 3, 5, 6, 7; DeleteRoom for room 4; SyncUser for user 5; DeactivateUser \
     for user 4. Matrix accounts known to exist: users 1, 2, 3, 4, 7.",
];

/// Fills every table; returns the tokens as the manifest lists them.
fn populate(d: &Domain) -> Fallible<Value> {
    let api = Principal::COMMAND_LINE;
    let mut tokens = Vec::new();
    // The first start's API token, as `ensure_api_token` stores it.
    let created = d.clock.now();
    d.store.write(|w| {
        let id = w.next_id("token")?;
        w.put_token(&Token {
            id,
            kind: TokenKind::Api,
            user_id: 0,
            name: "first start".into(),
            hash: token_hash(API_TOKEN),
            created_at: created,
            expires_at: None,
            revoked: false,
        })
    })?;

    for (id, name) in [(1, "Acme"), (2, "Beta Club"), (3, "Gamma Works")] {
        d.put_org(api, id, name)?;
    }
    for (id, name) in [(1, "Ann Owner"), (2, "Ben Admin"), (3, "Cara Member"), (4, "Dan Departed"), (5, "Eve Owner")] {
        d.put_user(api, id, name)?;
    }
    d.put_user(api, 7, "Gus Guest")?;
    for (org, user, role) in [
        (1, 1, OrgRole::Owner),
        (1, 2, OrgRole::Admin),
        (1, 3, OrgRole::Member),
        (1, 4, OrgRole::Member),
        (2, 5, OrgRole::Owner),
        (2, 3, OrgRole::Member),
        // Makes user 6, without a display name.
        (2, 6, OrgRole::Member),
        (3, 1, OrgRole::Admin),
    ] {
        d.set_member(api, org, user, role)?;
    }

    // Personal access tokens as `issue_token` stores them, with known secrets.
    for (user, name, secret, expires, state) in [
        (1, "phone", ANN_PHONE, Some(FAR), "active"),
        (1, "old laptop", ANN_LAPTOP, Some(FAR), "revoked"),
        (2, "tablet", BEN_TABLET, Some(T0 + 30 * 86_400), "expired"),
        (3, "phone", CARA_PHONE, Some(FAR), "active"),
        (4, "phone", DAN_PHONE, Some(FAR), "revoked"),
        (5, "phone", EVE_PHONE, Some(FAR), "active"),
    ] {
        let at = d.clock.now();
        let id = d.store.write(|w| {
            let id = w.next_id("token")?;
            w.put_token(&Token {
                id,
                kind: TokenKind::Personal,
                user_id: user,
                name: name.into(),
                hash: token_hash(secret),
                created_at: at,
                expires_at: expires,
                revoked: false,
            })?;
            Ok::<_, StoreError>(id)
        })?;
        tokens.push(json!({"user": user, "id": id, "name": name, "secret": secret, "state": state}));
    }
    d.revoke_token(api, 1, 3)?;

    let id = |r: &Room| RoomRef::Id(r.id);
    let acme_default = d.create_default_room(api, 1, true, Some("Everything Acme"))?;
    let board = d.create_room(
        Principal::User(1),
        NewRoom {
            org_id: 1,
            name: Some("Board".into()),
            topic: Some("Quarterly numbers\nand the plan for next year".into()),
            users: UserLists { moderators: vec![2], assigned: vec![3, 7], ..UserLists::default() },
            avatar: Some(PNG.to_vec()),
            scheduled_deletion: Some(FAR),
            ..NewRoom::default()
        },
    )?;
    let launch = d.create_room(
        api,
        NewRoom {
            org_id: 1,
            event_id: Some(42),
            name: Some("Launch party".into()),
            automation: true,
            avatar: Some(GIF.to_vec()),
            scheduled_deletion: Some(FAR + 59 * 86_400),
            ..NewRoom::default()
        },
    )?;
    let doomed = d.create_room(
        api,
        NewRoom {
            org_id: 1,
            name: Some("Doomed".into()),
            users: UserLists { assigned: vec![3], ..UserLists::default() },
            ..NewRoom::default()
        },
    )?;
    let plain = d.create_room(
        api,
        NewRoom {
            org_id: 1,
            name: Some("Pending plain".into()),
            users: UserLists { admins: vec![2], assigned: vec![7], ..UserLists::default() },
            ..NewRoom::default()
        },
    )?;
    let beta_default = d.create_default_room(api, 2, false, None)?;
    d.update_room(api, &id(&beta_default), RoomPatch { avatar: Some(Some(PNG.to_vec())), ..RoomPatch::default() })?;
    let meetup = d.create_room(
        Principal::User(5),
        NewRoom {
            org_id: 2,
            event_id: Some(7),
            name: Some("Beta meetup".into()),
            users: UserLists { moderators: vec![3], assigned: vec![6], ..UserLists::default() },
            ..NewRoom::default()
        },
    )?;
    d.claim(3, &id(&board))?;
    d.claim(5, &id(&beta_default))?;
    d.add_users(api, &id(&plain), &UserLists { moderators: vec![3], ..UserLists::default() })?;
    // Ben, admin of room 3 through automation, named admin explicitly too:
    // his role there is explicit from then on (schema 2 keeps who gave a role).
    d.add_users(api, &id(&launch), &UserLists { admins: vec![2], ..UserLists::default() })?;
    d.update_room(api, &id(&plain), RoomPatch { topic: Some(Some("Soon gone".into())), ..RoomPatch::default() })?;
    d.update_room(api, &id(&plain), RoomPatch { topic: Some(None), ..RoomPatch::default() })?;
    // Read-only rooms (schema 2 on): Board frozen by its creator; the
    // Launch party to freeze itself a day before its deletion.
    d.update_room(Principal::User(1), &id(&board), RoomPatch { read_only: Some(true), ..RoomPatch::default() })?;
    let freeze = RoomPatch { read_only_at: Some(Some(FAR + 58 * 86_400)), ..RoomPatch::default() };
    d.update_room(api, &id(&launch), freeze)?;
    d.put_user(api, 5, "Eve Owner-Smith")?;
    d.deactivate_user(api, 4)?;

    // The homeserver side, as the reconciler writes it: room 4 was made and
    // is being deleted; rooms 1 and 2 match the homeserver.
    synced(d, doomed.id, "!fixturedoomed4:localhost", None)?;
    d.delete_room(api, &id(&doomed))?;
    synced(d, acme_default.id, "!fixturedefault1:localhost", None)?;
    synced(d, board.id, "!fixtureboard2:localhost", Some("mxc://localhost/fixtureboardavatar"))?;
    d.store.write(|w| {
        w.set_delete_id("!fixturedoomed4:localhost", Some("fixture-delete-4"))?;
        for user in [1, 2, 3, 4, 7] {
            w.set_matrix_account(user, true)?;
        }
        // Work the reconciler finished: the synced rooms' and the made accounts'.
        for (seq, op) in w.outbox_head(usize::MAX)? {
            let done = match op {
                OutboxOp::SyncRoom { room_id } => [acme_default.id, board.id, doomed.id].contains(&room_id),
                OutboxOp::SyncUser { user_id } => [1, 2, 3, 4, 7].contains(&user_id),
                OutboxOp::DeleteRoom { .. } | OutboxOp::DeactivateUser { .. } => false,
            };
            if done {
                w.remove_outbox(seq)?;
            }
        }
        // A failed attempt at room 3, as `note_failure` keeps it.
        let old = w.room(launch.id)?.ok_or(StoreError::Db("room 3 vanished".into()))?;
        let mut failed = old.clone();
        failed.sync_error = Some("error sending request: connection refused (os error 111)".into());
        w.put_room(&failed, Some(&old))
    })?;
    // A webhook of Acme's room events that gave up after its retry window:
    // failing, so a service opening the fixture sends nothing, with one
    // attempt in its delivery log.
    let hook = d.put_webhook(
        api,
        "acme-backend",
        WebhookSpec {
            url: "https://hooks.example.com/messenger".into(),
            event_types: vec!["room.*".into(), "member.added".into()],
            org_id: Some(1),
        },
    )?;
    d.store.write(|w| {
        let mut failing = hook.webhook.clone();
        failing.failing_since = Some(T0);
        failing.failing = true;
        w.put_webhook(&failing)?;
        let attempt = DeliveryAttempt {
            event_id: failing.cursor + 1,
            time: T0 + 60,
            status: Some(503),
            error: None,
            latency_ms: 41,
        };
        w.log_delivery(&failing.id, &attempt, d.config.webhooks.delivery_log_size as usize)
    })?;
    let _ = (plain, meetup);
    Ok(Value::Array(tokens))
}

/// Marks a room as made on the homeserver, with its avatar uploaded.
fn synced(d: &Domain, room: RoomId, matrix_id: &str, avatar_url: Option<&str>) -> Fallible<()> {
    d.store.write(|w| {
        let old = w.room(room)?.ok_or(StoreError::Db(format!("room {room} vanished")))?;
        let mut done = old.clone();
        done.matrix_room_id = matrix_id.into();
        if let Some(url) = avatar_url {
            done.avatar_url = url.into();
            w.set_avatar(room, None)?;
        }
        done.synced_generation = done.generation;
        done.sync_error = None;
        w.put_room(&done, Some(&old))
    })?;
    Ok(())
}

/// Each room's API JSON as this release answers it, by room id.
fn served_rooms(store: &Store) -> Fallible<Value> {
    let r = store.read()?;
    let mut out = serde_json::Map::new();
    for id in 1..=64 {
        if let Some(room) = r.room(id)? {
            out.insert(id.to_string(), serde_json::from_slice(&room.to_json())?);
        }
    }
    Ok(Value::Object(out))
}

/// The schema version the file records, and a check that every table holds something.
fn schema_version(path: &Path) -> Fallible<u64> {
    let db = redb::Database::open(path)?;
    let r = db.begin_read()?;
    let mut empty = Vec::new();
    for table in r.list_tables()? {
        let name = table.name().to_string();
        if r.open_untyped_table(table)?.len()? == 0 {
            empty.push(name);
        }
    }
    if !empty.is_empty() {
        return Err(format!("the fixture leaves tables empty: {empty:?}").into());
    }
    let meta = r.open_table(tables::NAME_META)?;
    let raw = meta.get("schema_version")?.ok_or("no schema_version in name_meta")?;
    Ok(codec::decode::<u64>(raw.value())?)
}
