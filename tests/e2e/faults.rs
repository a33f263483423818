//! Faults, each on a Synapse of the test's own: the homeserver down while
//! a room is made, and the service killed in the middle of a burst of room
//! creations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::Http;
use crate::poll::eventually;
use crate::service::{Service, matrix_id, room_id};
use crate::synapse::{Admin, OwnSynapse};

/// Waits until `/readyz` answers `status`.
async fn readyz(svc: &Service, status: u16, what: &str) {
    eventually(what, Duration::from_secs(20), || async {
        let resp = svc.call("GET", "/readyz", &svc.api, None).await;
        if resp.status == status { Ok(()) } else { Err(format!("{} {}", resp.status, resp.text)) }
    })
    .await;
}

#[tokio::test]
async fn room_made_during_an_outage_converges_after_it() {
    const SYNC_WAIT: Duration = Duration::from_secs(2);
    let syn = OwnSynapse::start().await;
    let admin = Admin::new(&syn.hs).await;
    let svc = Service::start(&syn.hs, u64::try_from(SYNC_WAIT.as_millis()).expect("ms"));
    svc.org(1, "Acme").await;
    svc.user(1, "Ann", Some((1, "member"))).await;
    readyz(&svc, 200, "/readyz with Synapse up").await;
    let before = room_id(&svc.create_room(json!({"name": "Before", "organizationID": 1, "assignedUsers": [1]})).await);
    svc.ready(before, Duration::from_secs(30)).await;

    syn.stop().await;
    readyz(&svc, 503, "/readyz with Synapse down").await;
    let started = Instant::now();
    let resp = svc
        .call(
            "POST",
            "/v1/chatrooms",
            &svc.api,
            Some(json!({"name": "Outage", "organizationID": 1, "assignedUsers": [1]})),
        )
        .await;
    let answered = started.elapsed();
    let room = resp.expect(201).clone();
    eprintln!(
        "create during the outage answered in {:.2} s (sync_wait {:.1} s)",
        answered.as_secs_f64(),
        SYNC_WAIT.as_secs_f64()
    );
    assert!(
        answered <= SYNC_WAIT + Duration::from_secs(1),
        "with Synapse down, creating a room took {:.2} s (sync_wait {:.1} s + 1 s allowed)",
        answered.as_secs_f64(),
        SYNC_WAIT.as_secs_f64()
    );
    assert_eq!(room["syncState"], "pending", "{room}");
    assert_eq!(room["matrixRoomID"], "", "{room}");
    assert!(room["syncError"].as_str().is_some_and(|e| !e.trim().is_empty()), "a pending room says why: {room}");
    let id = room_id(&room);
    // A login needs the homeserver now: 502/503, never a 500.
    let login = svc.call("POST", "/v1/user/login?user_id=1", &svc.api, Some(json!({}))).await;
    assert!([502, 503].contains(&login.status), "login with Synapse down: {} {}", login.status, login.text);
    login.expect_problem(login.status);

    syn.start_again().await;
    let restarted = Instant::now();
    let room = svc.ready(id, Duration::from_secs(30)).await;
    eprintln!("converged {:.2} s after Synapse answered again", restarted.elapsed().as_secs_f64());
    assert_eq!(room["syncError"], Value::Null, "a ready room has no syncError: {room}");
    let mx = matrix_id(&room);
    let state = admin.state(&mx).await.unwrap_or_else(|| panic!("Synapse does not know {mx}\n{}", syn.log_tail()));
    assert_eq!(state.marker(), Some(id));
    assert_eq!(state.creator(), svc.bot());
    assert_eq!(state.content("m.room.name", "")["name"], "Outage");
    assert_eq!(state.membership(&svc.mxid(1)), "invite", "members {:?}", state.members());
    syn.stop().await;
}

#[tokio::test]
async fn sigkill_in_a_burst_of_creations_loses_nothing_and_duplicates_nothing() {
    const BURST: usize = 30;
    const KILL_AFTER: usize = 10;
    let syn = OwnSynapse::start().await;
    let admin = Admin::new(&syn.hs).await;
    let mut svc = Service::start(&syn.hs, 1500);
    svc.org(1, "Acme").await;
    svc.user(1, "Ann", Some((1, "member"))).await;
    readyz(&svc, 200, "/readyz with Synapse up").await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..BURST {
        let (client, tx) = (svc.client(), tx.clone());
        let auth = format!("Bearer {}", svc.api);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(60) * u32::try_from(i).expect("small")).await;
            let name = format!("Burst {i}");
            let body =
                serde_json::to_vec(&json!({"name": name, "organizationID": 1, "assignedUsers": [1]})).expect("JSON");
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            let answer = client.try_send(Http::H1, "POST", "/v1/chatrooms", &headers, body).await;
            let _ = tx.send((name, answer));
        });
    }
    drop(tx);
    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    let mut unanswered = 0;
    let mut killed = false;
    while let Some((name, answer)) = rx.recv().await {
        match answer {
            Ok(resp) if resp.status == 201 => {
                acked.insert(room_id(&resp.body), name);
            }
            Ok(resp) => panic!("{name}: POST /v1/chatrooms answered {}: {}", resp.status, resp.text),
            Err(_) => unanswered += 1,
        }
        if !killed && acked.len() >= KILL_AFTER {
            svc.kill();
            killed = true;
        }
    }
    assert!(killed, "only {} of {BURST} creations were acknowledged\n{}", acked.len(), svc.log_tail());
    eprintln!("{} creations acknowledged before SIGKILL, {unanswered} unanswered", acked.len());

    svc.restart();
    let list = svc.call("GET", "/v1/chatrooms?organization_id=1&all=true", &svc.api, None).await.expect(200).clone();
    let stored: BTreeMap<i64, String> = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|r| (room_id(r), r["name"].as_str().unwrap_or_default().to_string()))
        .collect();
    for (id, name) in &acked {
        assert_eq!(stored.get(id), Some(name), "acknowledged room {id} ({name}) is not stored; stored: {stored:?}");
    }
    assert!(stored.len() <= BURST, "more rooms stored than requested: {stored:?}");

    let started = Instant::now();
    let mut matrix_ids = BTreeMap::new();
    for id in stored.keys() {
        let room = svc.ready(*id, Duration::from_secs(60)).await;
        matrix_ids.insert(*id, matrix_id(&room));
    }
    eprintln!("{} stored rooms ready {:.1} s after the restart", stored.len(), started.elapsed().as_secs_f64());

    // Synapse's own view: every marked room, by the room id it carries.
    let expected: BTreeMap<i64, Vec<String>> = matrix_ids.iter().map(|(id, mx)| (*id, vec![mx.clone()])).collect();
    eventually(
        "exactly one Matrix room per stored room, and no other marked room",
        Duration::from_secs(60),
        || async {
            let mut by_marker: BTreeMap<i64, Vec<String>> = BTreeMap::new();
            for mx in admin.all_rooms().await {
                if let Some(marker) = admin.state(&mx).await.and_then(|s| s.marker()) {
                    by_marker.entry(marker).or_default().push(mx);
                }
            }
            for rooms in by_marker.values_mut() {
                rooms.sort();
            }
            if by_marker == expected {
                Ok(())
            } else {
                Err(format!("Synapse has {by_marker:?}, the store names {expected:?}"))
            }
        },
    )
    .await;
    syn.stop().await;
}
