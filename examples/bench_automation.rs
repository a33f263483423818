//! Automation at scale (scripts/bench-automation.sh runs it): what adding a
//! member costs in an organization of 100,000 rooms of which 3 are
//! automated, against one of 10 rooms of which 3 are automated. The member
//! change must touch only the automated rooms (found by the
//! `orgid_automatedroomid` index), so both should cost the same.
//!
//! Works on the domain and a real redb file (each change one durable write
//! transaction), without HTTP, so that what is compared is the change
//! itself. The rooms are written straight through the store (seconds
//! instead of 100,000 requests); the adds alternate between the two
//! organizations so both see the same machine load.
//!
//! bench_automation [--big 100000] [--small 10] [--adds 300]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use messenger_chat::config::Config;
use messenger_chat::domain::{Domain, Principal, SystemClock};
use messenger_chat::model::{OrgRole, Organization, Room, RoomKind, User};
use messenger_chat::secrets::ServerKey;
use messenger_chat::store::{Read, Store, StoreError};

#[derive(Parser)]
#[command(about = "Times adding a member to a small and a big organization with 3 automated rooms each")]
struct Args {
    /// Rooms of the big organization.
    #[arg(long, default_value_t = 100_000)]
    big: u64,
    /// Rooms of the small organization.
    #[arg(long, default_value_t = 10)]
    small: u64,
    /// Members added to each organization (alternating).
    #[arg(long, default_value_t = 300)]
    adds: i64,
}

const SMALL_ORG: i64 = 1;
const BIG_ORG: i64 = 2;
/// The organizations' owner, admin of every room.
const OWNER: i64 = 1;
/// Rooms of each organization with automation on.
const AUTOMATED: u64 = 3;
/// Rooms per write transaction while seeding.
const BATCH: u64 = 10_000;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn room(id: u64, org: i64, automation: bool, at: i64) -> Room {
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
        admins: vec![OWNER],
        moderators: vec![],
        assigned: vec![],
        claimed: vec![],
        automation_given: vec![],
        automation,
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

/// `n` rooms of `org`, the first [`AUTOMATED`] of them automated (spread
/// over the id range: first, middle, last).
fn add_rooms(store: &Store, org: i64, n: u64, at: i64) -> Result<(), StoreError> {
    let automated = [0, n / 2, n - 1];
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(BATCH);
        store.write(|w| {
            for i in done..done + batch {
                let id = w.next_id("room")?;
                w.put_room(&room(id, org, automated.contains(&i), at), None)?;
            }
            Ok::<_, StoreError>(())
        })?;
        done += batch;
    }
    Ok(())
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn mean_ms(samples: &[Duration]) -> f64 {
    samples.iter().sum::<Duration>().as_secs_f64() * 1000.0 / samples.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    assert!(args.small >= AUTOMATED && args.big >= AUTOMATED, "each organization needs 3 rooms at least");
    let dir = tempfile::Builder::new().prefix("messenger-chat-bench-automation-").tempdir()?;
    let store = Store::open(&dir.path().join("messenger-chat.redb"), 64 << 20)?;
    let at = now();
    let seeding = Instant::now();
    store.write(|w| {
        w.put_user(&User { id: OWNER, display_name: "Owner".into(), deactivated: false, created_at: at })?;
        for (id, name) in [(SMALL_ORG, "Small"), (BIG_ORG, "Big")] {
            w.put_org(&Organization { id, name: name.into(), created_at: at })?;
            w.set_member(id, OWNER, OrgRole::Owner)?;
        }
        Ok::<_, StoreError>(())
    })?;
    add_rooms(&store, SMALL_ORG, args.small, at)?;
    add_rooms(&store, BIG_ORG, args.big, at)?;
    eprintln!(
        "bench_automation: seeded {} + {} rooms in {:.1} s",
        args.small,
        args.big,
        seeding.elapsed().as_secs_f64()
    );

    let domain =
        Domain::new(store, Arc::new(Config::default()), ServerKey::from_bytes([7; 32]), Arc::new(SystemClock))?;
    // Users 1000.. go to the small organization, 100000.. to the big one.
    let (small_base, big_base) = (1000, 100_000);
    for i in 0..args.adds {
        for u in [small_base + i, big_base + i] {
            domain.put_user(Principal::COMMAND_LINE, u, &format!("User {u}"))?;
        }
    }
    let mut small = Vec::new();
    let mut big = Vec::new();
    for i in 0..args.adds {
        for (org, u, samples) in [(SMALL_ORG, small_base + i, &mut small), (BIG_ORG, big_base + i, &mut big)] {
            let t = Instant::now();
            domain.set_member(Principal::COMMAND_LINE, org, u, OrgRole::Member)?;
            samples.push(t.elapsed());
        }
    }
    // The adds did what automation says: each new member is in the 3 automated rooms.
    let r = domain.store.read()?;
    for (base, org) in [(small_base, SMALL_ORG), (big_base, BIG_ORG)] {
        let rooms = r.user_room_ids(base)?;
        assert_eq!(rooms.len(), 3, "organization {org}: the first added member is in {rooms:?}");
    }
    drop(r);

    let (m_small, m_big) = (median_ms(small.clone()), median_ms(big.clone()));
    let ratio = m_big / m_small;
    println!("| add a member (3 automated rooms), {} adds each | median | mean |", args.adds);
    println!("|---|---|---|");
    println!("| organization of {} rooms | {m_small:.2} ms | {:.2} ms |", args.small, mean_ms(&small));
    println!("| organization of {} rooms | {m_big:.2} ms | {:.2} ms |", args.big, mean_ms(&big));
    println!(
        "| big / small (medians) | {:.0}% | target within 20%: {} |",
        ratio * 100.0,
        if (0.8..=1.2).contains(&ratio) { "met" } else { "MISSED" }
    );
    Ok(())
}
