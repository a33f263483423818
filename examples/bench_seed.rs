//! Fills a data directory for `scripts/bench.sh` straight through the store,
//! so that 100,000 rooms take seconds instead of 100,000 HTTP requests that
//! would each wait for a homeserver.
//!
//! Writes two organizations (a small and a big one), one user who is a member
//! of both, and a personal access token for that user. The rooms look synced
//! (a Matrix id, generation = synced generation) and nothing goes into the
//! outbox, so the service starts without homeserver work to catch up on.
//! Prints `key=value` lines on stdout for the script to read.
//!
//! With `--users N --tokens-file PATH` it also writes N more users (ids 2 to
//! N + 1), members of the small organization, each with a PAT of its own,
//! one token per line in PATH: `scripts/abuse.sh` sends concurrent requests
//! of many users, which the per-user rate limits would otherwise refuse.
//!
//! With `--old-schema` the rooms are written as the first release wrote them
//! (schema 1: room record version 1, its room JSON, no topic), straight into
//! the tables, so `scripts/bench-capacity.sh` can time the migration of a
//! big database of the previous release.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use messenger_chat::model::{OrgRole, Organization, Room, RoomKind, Token, TokenKind, User};
use messenger_chat::secrets::{PAT_PREFIX, new_token, token_hash};
use messenger_chat::store::migrate::{self, v1};
use messenger_chat::store::{Store, StoreError, codec, tables};
use redb::ReadableTable;

/// Rooms per write transaction: one huge transaction would hold every dirty
/// page in memory until its commit.
const BATCH: u64 = 10_000;

#[derive(Parser)]
#[command(about = "Seeds a messenger-chat data directory for the benchmark")]
struct Args {
    /// The service's data directory (created when missing; must not be in use).
    #[arg(long)]
    data_dir: PathBuf,
    /// Rooms of the small organization (id 1).
    #[arg(long, default_value_t = 100)]
    small: u64,
    /// Rooms of the big organization (id 2).
    #[arg(long, default_value_t = 100_000)]
    big: u64,
    /// Write the rooms in the format of schema 1 (the release before versioned records).
    #[arg(long)]
    old_schema: bool,
    /// More users, each with a PAT of its own, members of the small organization.
    #[arg(long, default_value_t = 0, requires = "tokens_file")]
    users: u64,
    /// Where the PATs of those users go, one per line (mode 0600).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
}

/// The counters the service draws room and token ids from: seeding through
/// them keeps ids the service hands out later from colliding with seeded ones.
const ROOM_COUNTER: &str = "room";
const TOKEN_COUNTER: &str = "token";

const SMALL_ORG: i64 = 1;
const BIG_ORG: i64 = 2;
const USER: i64 = 1;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn room(id: u64, org: i64, at: i64) -> Room {
    Room {
        id,
        kind: RoomKind::Custom,
        org_id: org,
        event_id: 0,
        name: format!("Room {id}"),
        topic: String::new(),
        matrix_room_id: format!("!bench{id}:localhost"),
        avatar_url: String::new(),
        avatar_sha256: None,
        admins: vec![USER],
        moderators: vec![],
        assigned: vec![],
        claimed: vec![],
        automation_given: vec![],
        automation: false,
        scheduled_deletion: None,
        generation: 1,
        synced_generation: 1,
        sync_error: None,
        created_at: at,
        updated_at: at,
        read_only: false,
        read_only_at: None,
    }
}

/// Adds `n` rooms to `org`; returns the first room id.
fn add_rooms(store: &Store, org: i64, n: u64, at: i64) -> Result<Option<u64>, StoreError> {
    let mut first = None;
    let mut left = n;
    while left > 0 {
        let batch = left.min(BATCH);
        let start = store.write(|w| {
            let mut start = None;
            for _ in 0..batch {
                let id = w.next_id(ROOM_COUNTER)?;
                start.get_or_insert(id);
                w.put_room(&room(id, org, at), None)?;
            }
            Ok::<_, StoreError>(start)
        })?;
        first = first.or(start);
        left -= batch;
    }
    Ok(first)
}

/// Adds `n` rooms to `org` as schema 1 stored them, with every index the
/// first release wrote; returns the first room id.
fn add_old_rooms(db: &redb::Database, org: i64, n: u64, at: i64) -> Result<Option<u64>, Box<dyn std::error::Error>> {
    let mut first = None;
    let mut left = n;
    while left > 0 {
        let batch = left.min(BATCH);
        let t = db.begin_write()?;
        {
            let mut counters = t.open_table(tables::NAME_COUNTER)?;
            let mut rooms = t.open_table(tables::ROOMID_ROOM)?;
            let mut keys = t.open_table(tables::ORGIDROOMID)?;
            let mut json = t.open_table(tables::ORGIDROOMID_JSON)?;
            let mut users = t.open_table(tables::USERIDROOMID)?;
            let mut matrix = t.open_table(tables::MATRIXROOMID_ROOMID)?;
            let mut counts = t.open_table(tables::ORGID_ROOMCOUNT)?;
            let start = counters.get(ROOM_COUNTER)?.map_or(0, |v| v.value()) + 1;
            for id in start..start + batch {
                let today = room(id, org, at);
                let old = v1::Room::from(&today);
                rooms.insert(id, codec::encode_as(1, &old).as_slice())?;
                keys.insert((org, id), ())?;
                json.insert((org, id), v1::room_json(&today).as_slice())?;
                users.insert((USER, id), ())?;
                matrix.insert(today.matrix_room_id.as_str(), id)?;
            }
            counters.insert(ROOM_COUNTER, start + batch - 1)?;
            let count = counts.get(org)?.map_or(0, |v| v.value());
            counts.insert(org, count + batch)?;
            first = first.or(Some(start));
        }
        t.commit()?;
        left -= batch;
    }
    Ok(first)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::DirBuilder::new().recursive(true).create(&args.data_dir)?;
    let store = Store::open(&args.data_dir.join("messenger-chat.redb"), 64 << 20)?;
    // The users seeded here belong to a key: the service starts only with it.
    let key_file = args.data_dir.join("secret.key");
    let key = messenger_chat::secrets::ServerKey::load_or_create(&key_file)?;
    store.bind_key(Some(key), &args.data_dir.join("messenger-chat.redb"), &key_file)?;
    let at = now();
    let started = std::time::Instant::now();

    let token = new_token(PAT_PREFIX);
    let extra: Vec<(i64, String)> =
        (0..args.users).map(|n| (USER + 1 + i64::try_from(n).unwrap_or(i64::MAX - 2), new_token(PAT_PREFIX))).collect();
    store.write(|w| {
        for (id, name) in [(SMALL_ORG, "Bench small"), (BIG_ORG, "Bench big")] {
            w.put_org(&Organization { id, name: name.into(), created_at: at })?;
            w.set_member(id, USER, OrgRole::Member)?;
        }
        for (user, secret) in std::iter::once(&(USER, token.clone())).chain(&extra) {
            let display_name = if *user == USER { "Bench".to_string() } else { format!("Bench {user}") };
            w.put_user(&User { id: *user, display_name, deactivated: false, created_at: at })?;
            if *user != USER {
                w.set_member(SMALL_ORG, *user, OrgRole::Member)?;
            }
            let id = w.next_id(TOKEN_COUNTER)?;
            w.put_token(&Token {
                id,
                kind: TokenKind::Personal,
                user_id: *user,
                name: "bench".into(),
                hash: token_hash(secret),
                created_at: at,
                expires_at: Some(at + 86_400),
                revoked: false,
            })?;
        }
        Ok::<_, StoreError>(())
    })?;
    if let Some(path) = &args.tokens_file {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        for (_, secret) in &extra {
            writeln!(f, "{secret}")?;
        }
    }
    let room = if args.old_schema {
        drop(store);
        let db = redb::Database::create(args.data_dir.join("messenger-chat.redb"))?;
        let room = add_old_rooms(&db, SMALL_ORG, args.small, at)?.unwrap_or(0);
        add_old_rooms(&db, BIG_ORG, args.big, at)?;
        // What the first release's file says about itself: schema 1, no room JSON version.
        let t = db.begin_write()?;
        let mut meta = t.open_table(tables::NAME_META)?;
        meta.insert(migrate::SCHEMA_KEY, codec::encode(&1u64).as_slice())?;
        meta.remove(migrate::ROOM_VIEW_KEY)?;
        drop(meta);
        t.commit()?;
        room
    } else {
        let room = add_rooms(&store, SMALL_ORG, args.small, at)?.unwrap_or(0);
        add_rooms(&store, BIG_ORG, args.big, at)?;
        room
    };

    eprintln!("bench_seed: {} rooms in {:.1?}", args.small + args.big, started.elapsed());
    println!("small_org={SMALL_ORG}");
    println!("big_org={BIG_ORG}");
    println!("room={room}");
    println!("token={token}");
    Ok(())
}
