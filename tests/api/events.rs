//! The event log as the app's backend reads it: `GET /v1/events`, its
//! cursors, who may read it, the long poll, and that a killed service loses
//! no event of a change it acknowledged.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{TestServer, World, room_id};

/// The id the log names an API token by: 12 hex digits of its SHA-256.
fn token_id(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..6])
}

/// Every event after `after` that `token` may read with `query`, page by page.
async fn all_events(srv: &TestServer, token: &str, query: &str, mut after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = srv.get(&format!("/v1/events?{query}&after={after}&limit=7"), token).await;
        let page = page.expect(200).clone();
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            assert_eq!(page["next"], json!(after), "an empty page keeps the cursor");
            return out;
        }
        after = page["next"].as_u64().expect("next");
        assert_eq!(events.last().unwrap()["id"], json!(after), "next is the last event's id");
        out.extend(events);
    }
}

fn summary(events: &[Value]) -> Vec<(String, Value)> {
    events.iter().map(|e| (e["type"].as_str().unwrap_or_default().to_string(), e["actor"].clone())).collect()
}

fn user_actor(id: i64) -> Value {
    json!({"type": "user", "userID": id})
}

/// What an owner's PAT, a room admin's PAT and the API token did to a room
/// of organization 1 is in its log, in order, each with who did it.
#[tokio::test]
async fn every_change_is_in_the_log_with_who_made_it() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = json!({"type": "apiToken", "apiTokenID": token_id(&w.api)});

    let made = all_events(&srv, &w.api, "organization_id=1", 0).await;
    assert_eq!(made[0]["type"], "organization.created");
    assert_eq!(made[0]["actor"], api);
    assert_eq!(made[0]["organizationID"], json!(1));
    assert!(made.iter().all(|e| e["organizationID"] == json!(1)), "only organization 1's events");
    assert!(made.windows(2).all(|p| p[0]["id"].as_u64() < p[1]["id"].as_u64()), "ascending ids");
    let at = made.last().unwrap()["id"].as_u64().unwrap();

    let body = json!({"name": "Board", "organizationID": 1, "admins": [w.room_admin.id]});
    let room = room_id(srv.post("/v1/chatrooms", &w.owner.token, Some(body)).await.expect(201));
    let add = json!({"assignedUsers": [w.assigned.id]});
    srv.post(&format!("/v1/chatrooms/{room}/users"), &w.room_admin.token, Some(add)).await.expect(200);
    srv.post(&format!("/v1/chatrooms/{room}/claim"), &w.assigned.token, None).await.expect(200);
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(json!({"name": "Board 2"}))).await.expect(200);
    srv.put("/v1/organizations/1/members/13", &w.api, Some(json!({"role": "admin"}))).await.expect(200);
    srv.delete(&format!("/v1/chatrooms/{room}"), &w.room_admin.token, None).await.expect(204);

    // The owner reads its own organization's log with its PAT.
    let step = all_events(&srv, &w.owner.token, "organization_id=1", at).await;
    assert_eq!(
        summary(&step),
        vec![
            ("room.created".to_string(), user_actor(w.owner.id)),
            ("room.members_changed".to_string(), user_actor(w.room_admin.id)),
            ("room.claimed".to_string(), user_actor(w.assigned.id)),
            ("room.updated".to_string(), api.clone()),
            ("member.role_changed".to_string(), api.clone()),
            ("room.deleted".to_string(), user_actor(w.room_admin.id)),
        ]
    );
    assert_eq!(step[0]["data"]["room"]["name"], "Board");
    assert_eq!(
        step[1]["data"],
        json!({"roomID": room, "by": "request", "added": [{"userID": w.assigned.id, "role": "assignedUser"}],
               "removed": [], "promoted": [], "demoted": []})
    );
    assert_eq!(step[3]["data"]["changed"], json!({"name": "Board 2"}));
    assert_eq!(step[4]["data"], json!({"userID": 13, "from": "member", "to": "admin"}));
    assert_eq!(step[5]["data"]["reason"], "request");
    let time = step[0]["time"].as_str().expect("a time");
    assert!(time.len() == 20 && time.ends_with('Z'), "RFC 3339 UTC: {time}");

    // The whole log (API token only) holds the users and tokens too, never a secret.
    let everything = all_events(&srv, &w.api, "", 0).await;
    let issued: Vec<&Value> = everything.iter().filter(|e| e["type"] == "token.issued").collect();
    assert_eq!(issued.len(), 10, "the first start's API token, a PAT for each of the 8 users, and the one revoked");
    assert_eq!(issued[0]["actor"], json!({"type": "system"}), "the first start made the API token");
    assert_eq!(issued[0]["data"]["apiTokenID"], json!(token_id(&w.api)));
    assert!(issued[1..].iter().all(|e| e["organizationID"].is_null() && e["actor"] == api));
    assert!(everything.iter().any(|e| e["type"] == "token.revoked" && e["data"]["userID"] == json!(13)));
    let text = serde_json::to_string(&everything).unwrap();
    for secret in [&w.owner.token, &w.member.token, &w.revoked, &w.api] {
        assert!(!text.contains(secret.as_str()), "a token's secret is in the log");
    }
}

/// Who may read which log, and cursors that cannot be right.
#[tokio::test]
async fn cursors_and_readers_are_checked() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let org1 = all_events(&srv, &w.api, "organization_id=1", 0).await;
    let org2 = all_events(&srv, &w.api, "organization_id=2", 0).await;
    assert_eq!(all_events(&srv, &w.admin.token, "organization_id=1", 0).await, org1, "an admin's PAT reads it too");

    let problem = |status: u16, path: &str, token: &str| {
        let path = path.to_string();
        let token = token.to_string();
        let srv = &srv;
        async move { srv.get(&path, &token).await.expect_problem(status) }
    };
    // A plain member, another organization's owner, a PAT without an organization.
    problem(403, "/v1/events?organization_id=1", &w.member.token).await;
    problem(403, "/v1/events?organization_id=1", &w.other_owner.token).await;
    let why = problem(400, "/v1/events", &w.owner.token).await;
    assert!(why.contains("organization_id"), "{why}");
    problem(404, "/v1/events?organization_id=99", &w.api).await;
    // A cursor from the future; one of another organization.
    let last = all_events(&srv, &w.api, "", 0).await.last().unwrap()["id"].as_u64().unwrap();
    let why = problem(400, &format!("/v1/events?organization_id=1&after={}", last + 1), &w.owner.token).await;
    assert!(why.contains("beyond the last event"), "{why}");
    let theirs = org2[0]["id"].as_u64().unwrap();
    let why = problem(403, &format!("/v1/events?organization_id=1&after={theirs}"), &w.owner.token).await;
    assert!(why.contains("not an event of organization 1"), "{why}");
    // Parameters out of range.
    for bad in ["limit=0", "limit=1001", "wait=31", "wait=-1", "after=-1", "after=x"] {
        let why = problem(400, &format!("/v1/events?organization_id=1&{bad}"), &w.api).await;
        assert!(why.contains(bad.split('=').next().unwrap()), "{bad}: {why}");
    }
    problem(422, "/v1/events?organization_id=0", &w.api).await;
    problem(401, "/v1/events?organization_id=1", &w.revoked).await;
}

/// A long poll answers as soon as an event arrives: within a second of the
/// change as a rule; the bound here is generous for a loaded machine.
#[tokio::test]
async fn a_long_poll_wakes_when_a_change_is_committed() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let last = all_events(&srv, &w.api, "organization_id=1", 0).await.last().unwrap()["id"].as_u64().unwrap();

    // Nothing happens: an empty page once the wait is over, with the same cursor.
    let started = Instant::now();
    let idle = srv.get(&format!("/v1/events?organization_id=1&after={last}&wait=1"), &w.owner.token).await;
    assert_eq!(idle.expect(200), &json!({"events": [], "next": last}));
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());

    // A change in another organization does not answer organization 1's poll; one in it does.
    let path = format!("/v1/events?organization_id=1&after={last}&wait=20");
    let poll = srv.get(&path, &w.owner.token);
    let change = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        srv.put("/v1/organizations/2", &w.api, Some(json!({"name": "Globex 2"}))).await.expect(200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        srv.put("/v1/organizations/1", &w.api, Some(json!({"name": "Acme 2"}))).await.expect(200);
        Instant::now()
    };
    let (page, changed) = tokio::join!(poll, change);
    let woke = changed.elapsed();
    let page = page.expect(200);
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["events"][0]["type"], "organization.renamed");
    assert_eq!(page["events"][0]["data"], json!({"name": "Acme 2", "previousName": "Acme"}));
    assert!(woke < Duration::from_secs(5), "answered {woke:?} after the change");
}

/// SIGTERM ends a waiting long poll at once with its empty page, rather
/// than holding the stop for the rest of its wait.
#[tokio::test]
async fn a_stopping_service_answers_its_long_polls() {
    let mut srv = TestServer::start_with(&[("MESSENGER_CHAT_SERVER__SHUTDOWN_GRACE_SECS", "60")]);
    let api = srv.api_token.clone();
    let last = all_events(&srv, &api, "", 0).await.last().unwrap()["id"].as_u64().unwrap();
    let client = srv.client().clone();
    let auth = format!("Bearer {api}");
    let poll = tokio::spawn(async move {
        let path = format!("/v1/events?after={last}&wait=25");
        client.try_send(crate::common::Http::H1, "GET", &path, &[("authorization", &auth)], Vec::new()).await
    });
    // Time for the poll to arrive and wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    assert!(srv.stop(), "a clean stop");
    let took = started.elapsed();
    let page = poll.await.unwrap().expect("an answer before the service went");
    assert_eq!(page.expect(200), &json!({"events": [], "next": last}));
    assert!(took < Duration::from_secs(15), "the stop waited {took:?} for the long poll");
}

/// `events.max_waiters` bounds the long polls waiting at once: one more
/// gets 503 with Retry-After, and a poll without `wait` is still answered.
#[tokio::test]
async fn long_polls_beyond_the_limit_are_refused() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_EVENTS__MAX_WAITERS", "1")]);
    let w = World::new(&srv).await;
    let last = all_events(&srv, &w.api, "", 0).await.last().unwrap()["id"].as_u64().unwrap();
    // Two long polls at once: one waits, the other is refused at once.
    let path = format!("/v1/events?after={last}&wait=20");
    let (a, b) = (srv.get(&path, &w.api), srv.get(&path, &w.api));
    tokio::pin!(a, b);
    let (refused, holder) = tokio::select! {
        r = &mut a => (r, b),
        r = &mut b => (r, a),
    };
    assert_eq!(refused.header("retry-after"), "1");
    assert!(refused.expect_problem(503).contains("events.max_waiters"));
    // Operators see the waiting poll and how far the log has come.
    let metrics = srv.get("/metrics", &w.api).await;
    metrics.expect(200);
    assert!(metrics.text.contains("messenger_chat_event_polls_waiting 1\n"), "{}", metrics.text);
    assert!(metrics.text.contains(&format!("messenger_chat_events_last_id {last}\n")), "{}", metrics.text);
    // A poll without wait needs no place; the waiting one gets the next event.
    srv.get(&format!("/v1/events?after={last}"), &w.api).await.expect(200);
    srv.put("/v1/organizations/3", &w.api, Some(json!({"name": "Initech"}))).await.expect(201);
    let page = holder.await;
    assert_eq!(page.expect(200)["events"][0]["type"], "organization.created");
}

/// One user's long polls hold at most its share of `events.max_waiters`
/// (beyond it 429 with Retry-After, naming the key), so the API token's own
/// poll still finds a place and waits for the next event.
#[tokio::test]
async fn one_callers_long_polls_do_not_starve_the_api_token() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_EVENTS__MAX_WAITERS", "8")]);
    let w = World::new(&srv).await;
    let last = all_events(&srv, &w.api, "", 0).await.last().unwrap()["id"].as_u64().unwrap();
    let last_of_1 = all_events(&srv, &w.api, "organization_id=1", 0).await.last().unwrap()["id"].as_u64().unwrap();
    let owners = format!("/v1/events?organization_id=1&after={last_of_1}&wait=20");
    let mut polls: futures_util::stream::FuturesUnordered<_> =
        (0..10).map(|_| srv.get(&owners, &w.owner.token)).collect();
    // The refused ones answer at once; the waiting ones stay in `polls`.
    let mut refused = Vec::new();
    while let Ok(Some(r)) =
        tokio::time::timeout(Duration::from_secs(3), futures_util::StreamExt::next(&mut polls)).await
    {
        refused.push(r);
    }
    assert_eq!((polls.len(), refused.len()), (1, 9), "one place of 8 for one user (events.caller_share_percent = 10)");
    for r in &refused {
        assert_eq!(r.header("retry-after"), "1");
        assert!(r.expect_problem(429).contains("events.caller_share_percent"), "{}", r.text);
    }
    // The backend's poll waits for the next event, as does the owner's.
    let backend = format!("/v1/events?after={last}&wait=20");
    let api = srv.get(&backend, &w.api);
    tokio::pin!(api);
    assert!(tokio::time::timeout(Duration::from_secs(1), &mut api).await.is_err(), "the API token's poll waits");
    srv.put("/v1/organizations/1", &w.api, Some(json!({"name": "Acme Corp"}))).await.expect(200);
    let page = api.await;
    assert!(!page.expect(200)["events"].as_array().unwrap().is_empty(), "{}", page.text);
    let owner = futures_util::StreamExt::next(&mut polls).await.expect("the owner's waiting poll");
    assert!(!owner.expect(200)["events"].as_array().unwrap().is_empty(), "{}", owner.text);
}

/// kill -9 in the middle of a burst of writes: after the restart, every
/// change the service acknowledged has its event, in the order of the
/// acknowledgements of each writer.
#[tokio::test]
async fn a_kill_during_a_burst_loses_no_event_of_an_acknowledged_change() {
    let mut srv = TestServer::start();
    let api = srv.api_token.clone();
    let client = srv.client().clone();
    let pid = srv.pid();
    let writers = 4;
    let acknowledged = std::sync::Mutex::new(vec![Vec::new(); writers]);
    let count = std::sync::atomic::AtomicUsize::new(0);
    let write = |writer: usize| {
        let (client, api, acknowledged, count) = (&client, &api, &acknowledged, &count);
        async move {
            let auth = format!("Bearer {api}");
            for i in 0.. {
                let id = i64::try_from(1000 * (writer + 1) + i).unwrap();
                let body = serde_json::to_vec(&json!({"displayName": format!("User {id}")})).unwrap();
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
                let at = format!("/v1/users/{id}");
                match client.try_send(crate::common::Http::H1, "PUT", &at, &headers, body).await {
                    Ok(resp) if resp.status == 201 => {
                        acknowledged.lock().unwrap()[writer].push(id);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // The service is gone: this writer is done.
                    _ => return,
                }
            }
        }
    };
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count.load(std::sync::atomic::Ordering::SeqCst) < 60 {
            assert!(Instant::now() < deadline, "the burst never got going");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ok = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().expect("run kill");
        assert!(ok.success(), "kill -9 {pid}");
    };
    tokio::join!(killer, futures_util::future::join_all((0..writers).map(write)));
    srv.start_after_kill();

    let log = all_events(&srv, &api, "", 0).await;
    let created: Vec<i64> =
        log.iter().filter(|e| e["type"] == "user.created").map(|e| e["data"]["userID"].as_i64().unwrap()).collect();
    let acknowledged = acknowledged.into_inner().unwrap();
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(total >= 60, "acknowledged {total}");
    for (writer, ids) in acknowledged.iter().enumerate() {
        let logged: Vec<i64> = created.iter().copied().filter(|id| *id / 1000 == writer as i64 + 1).collect();
        // A change in flight at the kill may be in the log without its answer; never the other way.
        assert!(
            logged.len() <= ids.len() + 1 && logged[..ids.len()] == ids[..],
            "writer {writer}: acknowledged {ids:?}, logged {logged:?}"
        );
    }
    // The ids go on where they stopped.
    let last = log.last().unwrap()["id"].as_u64().unwrap();
    srv.put("/v1/users/99", &api, Some(json!({"displayName": "After"}))).await.expect(201);
    let after = all_events(&srv, &api, "", last).await;
    assert_eq!(
        summary(&after),
        vec![("user.created".to_string(), json!({"type": "apiToken", "apiTokenID": token_id(&api)}))]
    );
    assert_eq!(after[0]["id"], json!(last + 1));
}
