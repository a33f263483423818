//! The role table of api.md, row by row: every kind of caller tries the
//! action; those allowed succeed, the others get 403 (401 for a revoked
//! token) and nothing changes. (An expired token: `auth::an_expired_pat_gets_401`.)

use serde_json::{Value, json};

use crate::common::{Resp, TestServer, World, ids, room_id, stable, stable_list};

/// The callers, in the order of the expectation rows below.
const CALLERS: [&str; 10] = [
    "API token",
    "organization owner",
    "organization admin",
    "organization member",
    "room admin",
    "room moderator",
    "assigned user",
    "outsider",
    "owner of another organization",
    "revoked PAT",
];

fn tokens(w: &World) -> [String; 10] {
    [
        w.api.clone(),
        w.owner.token.clone(),
        w.admin.token.clone(),
        w.member.token.clone(),
        w.room_admin.token.clone(),
        w.room_mod.token.clone(),
        w.assigned.token.clone(),
        w.outsider.token.clone(),
        w.other_owner.token.clone(),
        w.revoked.clone(),
    ]
}

/// The user behind each caller (0 for the API token and the revoked token's holder does not matter).
fn user_ids(w: &World) -> [i64; 10] {
    [
        0,
        w.owner.id,
        w.admin.id,
        w.member.id,
        w.room_admin.id,
        w.room_mod.id,
        w.assigned.id,
        w.outsider.id,
        w.other_owner.id,
        w.member.id,
    ]
}

/// Read rooms: any member of the organization.
const READ: [u16; 10] = [200, 200, 200, 200, 200, 200, 200, 403, 403, 401];
/// Create a custom, event or default room: owner/admin of the organization.
const CREATE: [u16; 10] = [201, 201, 201, 403, 403, 403, 403, 403, 403, 401];
/// Remove the default room: owner/admin of the organization.
const REMOVE_DEFAULT: [u16; 10] = [204, 204, 204, 403, 403, 403, 403, 403, 403, 401];
/// Update a custom room, change its admins and moderators: owner/admin or room admin.
const MANAGE: [u16; 10] = [200, 200, 200, 403, 200, 403, 403, 403, 403, 401];
/// Delete a custom room: owner/admin or room admin.
const DELETE: [u16; 10] = [204, 204, 204, 403, 204, 403, 403, 403, 403, 401];
/// Add or remove assigned users: also a room moderator.
const MODERATE: [u16; 10] = [200, 200, 200, 403, 200, 200, 403, 403, 403, 401];
/// Claim a custom room without automation: members listed in it. The API
/// token must name the user (400 without `user_id`).
const CLAIM_LISTED: [u16; 10] = [400, 403, 403, 403, 200, 200, 200, 403, 403, 401];
/// Claim the default room or a room with automation: any member.
const CLAIM_OPEN: [u16; 10] = [400, 200, 200, 200, 200, 200, 200, 403, 403, 401];

#[track_caller]
fn check(who: &str, resp: &Resp, status: u16) {
    assert_eq!(
        resp.status, status,
        "{who}: {} answered {} (expected {status}): {}",
        resp.request, resp.status, resp.text
    );
    if status >= 400 {
        resp.expect_problem(status);
    }
}

fn ok(status: u16) -> bool {
    status < 300
}

#[tokio::test]
async fn reading_rooms() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let event = json!({"name": "Gala", "organizationID": 1, "eventID": 9});
    srv.post("/v1/chatrooms/event", &w.api, Some(event)).await.expect(201);
    for ((who, token), status) in CALLERS.iter().zip(tokens(&w)).zip(READ) {
        check(who, &srv.get("/v1/chatrooms?organization_id=1", &token).await, status);
        check(who, &srv.get("/v1/chatrooms?organization_id=1&all=true", &token).await, status);
        check(who, &srv.get(&format!("/v1/chatrooms/{room}"), &token).await, status);
        check(who, &srv.get("/v1/chatrooms/event?organization_id=1&event_id=9", &token).await, status);
    }
}

#[tokio::test]
async fn creating_a_custom_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let mut created = 0;
    for (((who, token), user), status) in CALLERS.iter().zip(tokens(&w)).zip(user_ids(&w)).zip(CREATE) {
        let body = json!({"name": format!("By {who}"), "organizationID": 1, "assignedUsers": [17]});
        let resp = srv.post("/v1/chatrooms", &token, Some(body)).await;
        check(who, &resp, status);
        if ok(status) {
            created += 1;
            let admins = ids(&resp.body["admins"]);
            assert_eq!(admins, if user == 0 { vec![] } else { vec![user] }, "{who}: the creator is the room admin");
        }
        assert_eq!(srv.rooms(1).await["total"], created, "{who}: only allowed creates store a room");
    }
}

#[tokio::test]
async fn creating_an_event_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let mut created = 0;
    for (n, ((who, token), status)) in CALLERS.iter().zip(tokens(&w)).zip(CREATE).enumerate() {
        let body = json!({"name": "Gala", "organizationID": 1, "eventID": 100 + n});
        check(who, &srv.post("/v1/chatrooms/event", &token, Some(body)).await, status);
        if ok(status) {
            created += 1;
        }
        assert_eq!(srv.rooms(1).await["total"], created, "{who}: only allowed creates store a room");
    }
}

#[tokio::test]
async fn creating_and_removing_the_default_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for ((who, token), status) in CALLERS.iter().zip(tokens(&w)).zip(CREATE) {
        let resp = srv.post("/v1/chatrooms/default", &token, Some(json!({"organizationID": 1}))).await;
        check(who, &resp, status);
        let total = srv.rooms(1).await["total"].clone();
        assert_eq!(total, u16::from(ok(status)), "{who}: only an allowed create stores the default room");
        if ok(status) {
            srv.delete("/v1/chatrooms/default/1", &w.api, None).await.expect(204);
        }
    }
    for ((who, token), status) in CALLERS.iter().zip(tokens(&w)).zip(REMOVE_DEFAULT) {
        srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await.expect(201);
        check(who, &srv.delete("/v1/chatrooms/default/1", &token, None).await, status);
        let total = srv.rooms(1).await["total"].clone();
        assert_eq!(total, u16::from(!ok(status)), "{who}: only an allowed removal removes it");
        if !ok(status) {
            srv.delete("/v1/chatrooms/default/1", &w.api, None).await.expect(204);
        }
    }
}

/// Runs `action` for every caller on a fresh room of [`World::room`], checks
/// the status, and on refusal that the room is unchanged; returns the rooms
/// after each allowed action.
async fn on_fresh_rooms<F, Fut>(srv: &TestServer, w: &World, table: [u16; 10], action: F) -> Vec<(String, Value)>
where
    F: Fn(i64, String) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let mut after = Vec::new();
    for ((who, token), status) in CALLERS.iter().zip(tokens(w)).zip(table) {
        let room = w.room(srv, who).await;
        let before = srv.room(room).await;
        let resp = action(room, token).await;
        check(who, &resp, status);
        if ok(status) {
            let now = srv.get(&format!("/v1/chatrooms/{room}"), &w.api).await;
            if now.status == 200 {
                after.push(((*who).to_string(), now.body.clone()));
            } else {
                now.expect_problem(404);
                after.push(((*who).to_string(), Value::Null));
            }
        } else {
            assert_eq!(stable(&srv.room(room).await), stable(&before), "{who}: a refused action changed the room");
        }
    }
    after
}

#[tokio::test]
async fn updating_a_custom_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, MANAGE, |room, token| {
        let srv = &srv;
        async move {
            let body = json!({"automationEnabled": true, "name": "Renamed"});
            srv.patch(&format!("/v1/chatrooms/{room}"), &token, Some(body)).await
        }
    })
    .await;
    for (who, room) in after {
        assert_eq!(room["automationEnabled"], true, "{who}");
        assert_eq!(room["name"], "Renamed", "{who}");
    }
}

#[tokio::test]
async fn deleting_a_custom_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, DELETE, |room, token| {
        let srv = &srv;
        async move { srv.delete(&format!("/v1/chatrooms/{room}"), &token, None).await }
    })
    .await;
    for (who, room) in after {
        assert_eq!(room, Value::Null, "{who}: the room is gone");
    }
}

#[tokio::test]
async fn adding_admins_and_moderators() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, MANAGE, |room, token| {
        let srv = &srv;
        async move {
            let body = json!({"admins": [30], "moderators": [31]});
            srv.post(&format!("/v1/chatrooms/{room}/users"), &token, Some(body)).await
        }
    })
    .await;
    for (who, room) in after {
        assert_eq!(ids(&room["admins"]), vec![15, 30], "{who}");
        assert_eq!(ids(&room["moderators"]), vec![16, 31], "{who}");
    }
}

#[tokio::test]
async fn removing_admins_and_moderators() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, MANAGE, |room, token| {
        let srv = &srv;
        async move {
            let body = json!({"moderators": [16]});
            srv.delete(&format!("/v1/chatrooms/{room}/users"), &token, Some(body)).await
        }
    })
    .await;
    for (who, room) in after {
        assert_eq!(ids(&room["moderators"]), Vec::<i64>::new(), "{who}");
        assert_eq!(ids(&room["admins"]), vec![15], "{who}");
    }
}

#[tokio::test]
async fn adding_assigned_users() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, MODERATE, |room, token| {
        let srv = &srv;
        async move {
            let body = json!({"assignedUsers": [30, 13]});
            srv.post(&format!("/v1/chatrooms/{room}/users"), &token, Some(body)).await
        }
    })
    .await;
    for (who, room) in after {
        assert_eq!(ids(&room["assignedUsers"]), vec![13, 17, 30], "{who}");
    }
}

#[tokio::test]
async fn removing_assigned_users() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let after = on_fresh_rooms(&srv, &w, MODERATE, |room, token| {
        let srv = &srv;
        async move {
            let body = json!({"assignedUsers": [17]});
            srv.delete(&format!("/v1/chatrooms/{room}/users"), &token, Some(body)).await
        }
    })
    .await;
    for (who, room) in after {
        assert_eq!(ids(&room["assignedUsers"]), Vec::<i64>::new(), "{who}");
    }
}

#[tokio::test]
async fn a_moderator_touches_only_assigned_users() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let users = format!("/v1/chatrooms/{room}/users");
    let before = srv.room(room).await;
    let m = &w.room_mod.token;
    for body in [
        json!({"admins": [30]}),
        json!({"moderators": [30]}),
        json!({"assignedUsers": [30], "moderators": [31]}),
        // Demoting the room admin or another moderator is not theirs to do.
        json!({"assignedUsers": [15]}),
    ] {
        srv.post(&users, m, Some(body)).await.expect_problem(403);
    }
    for body in [json!({"admins": [15]}), json!({"moderators": [16]}), json!({"assignedUsers": [15]})] {
        srv.delete(&users, m, Some(body)).await.expect_problem(403);
    }
    assert_eq!(stable(&srv.room(room).await), stable(&before));
    // What they may do.
    let added = srv.post(&users, m, Some(json!({"assignedUsers": [30]}))).await;
    assert_eq!(ids(&added.expect(200)["assignedUsers"]), vec![17, 30]);
}

#[tokio::test]
async fn claiming_a_room_someone_is_listed_in() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    on_fresh_rooms(&srv, &w, CLAIM_LISTED, |room, token| {
        let srv = &srv;
        async move { srv.post(&format!("/v1/chatrooms/{room}/claim"), &token, None).await }
    })
    .await;
}

#[tokio::test]
async fn claiming_the_default_room_or_an_automated_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let default = room_id(default.expect(201));
    let open = room_id(&w.room_from(&srv, json!({"name": "Open", "automationEnabled": true})).await);
    for room in [default, open] {
        for (((who, token), user), status) in CALLERS.iter().zip(tokens(&w)).zip(user_ids(&w)).zip(CLAIM_OPEN) {
            let resp = srv.post(&format!("/v1/chatrooms/{room}/claim"), &token, None).await;
            check(who, &resp, status);
            let listed = srv.room(room).await;
            let everyone = [&listed["admins"], &listed["moderators"], &listed["assignedUsers"]]
                .into_iter()
                .flat_map(ids)
                .collect::<Vec<_>>();
            if ok(status) {
                assert!(everyone.contains(&user), "{who} claimed and is listed: {listed}");
            } else if user != w.member.id {
                assert!(!everyone.contains(&user), "{who} was refused and is not listed: {listed}");
            }
        }
    }
}

#[tokio::test]
async fn a_pat_of_one_organization_cannot_reach_into_another() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let theirs = srv.post("/v1/chatrooms", &w.api, Some(json!({"name": "Theirs", "organizationID": 2}))).await;
    let theirs = room_id(theirs.expect(201));
    let event = json!({"name": "Their gala", "organizationID": 2, "eventID": 4});
    srv.post("/v1/chatrooms/event", &w.api, Some(event)).await.expect(201);
    let before = srv.rooms(w.other_org).await;
    let owner = &w.owner.token;

    srv.get("/v1/chatrooms?organization_id=2", owner).await.expect_problem(403);
    srv.get(&format!("/v1/chatrooms/{theirs}"), owner).await.expect_problem(403);
    srv.get("/v1/chatrooms/event?organization_id=2&event_id=4", owner).await.expect_problem(403);
    srv.post("/v1/chatrooms", owner, Some(json!({"name": "Mine now", "organizationID": 2}))).await.expect_problem(403);
    let event = json!({"name": "Mine", "organizationID": 2, "eventID": 5});
    srv.post("/v1/chatrooms/event", owner, Some(event)).await.expect_problem(403);
    srv.post("/v1/chatrooms/default", owner, Some(json!({"organizationID": 2}))).await.expect_problem(403);
    srv.patch(&format!("/v1/chatrooms/{theirs}"), owner, Some(json!({"name": "Mine"}))).await.expect_problem(403);
    let users = format!("/v1/chatrooms/{theirs}/users");
    srv.post(&users, owner, Some(json!({"admins": [11]}))).await.expect_problem(403);
    srv.delete(&users, owner, Some(json!({"assignedUsers": [21]}))).await.expect_problem(403);
    srv.post(&format!("/v1/chatrooms/{theirs}/claim"), owner, None).await.expect_problem(403);
    srv.delete(&format!("/v1/chatrooms/{theirs}"), owner, None).await.expect_problem(403);
    srv.delete("/v1/chatrooms/default/2", owner, None).await.expect_problem(403);

    assert_eq!(stable_list(&srv.rooms(w.other_org).await), stable_list(&before), "organization 2 is untouched");
}

/// Change the default room (name, avatar, topic, automation): owner/admin of
/// the organization only. Its room admin may manage its users, not the room.
const MANAGE_DEFAULT: [u16; 10] = [200, 200, 200, 403, 403, 403, 403, 403, 403, 401];
/// Give the default room a scheduled deletion: nobody; those who may change
/// the room are told to remove it instead (409), the others may not change it (403).
const SCHEDULE_DEFAULT: [u16; 10] = [409, 409, 409, 403, 403, 403, 403, 403, 403, 401];

/// The default room of organization 1, with automation off and the world's
/// room admin, moderator and assigned user named in it explicitly.
async fn default_room(srv: &TestServer, w: &World) -> i64 {
    let created = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": w.org}))).await;
    let room = room_id(created.expect(201));
    let body = json!({"admins": [w.room_admin.id], "moderators": [w.room_mod.id], "assignedUsers": [w.assigned.id]});
    srv.post(&format!("/v1/chatrooms/{room}/users"), &w.api, Some(body)).await.expect(200);
    room
}

#[tokio::test]
async fn updating_the_default_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = default_room(&srv, &w).await;
    let path = format!("/v1/chatrooms/{room}");
    let changes = [
        json!({"name": "Renamed"}),
        json!({"avatar": crate::common::png()}),
        json!({"topic": "Everything Acme"}),
        json!({"automationEnabled": true}),
    ];
    for body in changes {
        for ((who, token), status) in CALLERS.iter().zip(tokens(&w)).zip(MANAGE_DEFAULT) {
            let before = srv.room(room).await;
            let resp = srv.patch(&path, &token, Some(body.clone())).await;
            check(who, &resp, status);
            if ok(status) {
                // Back as it was, for the next caller.
                let undo = json!({"name": "Acme", "avatar": null, "topic": null, "automationEnabled": false});
                srv.patch(&path, &w.api, Some(undo)).await.expect(200);
            } else {
                let detail = &resp.body["detail"];
                assert_eq!(
                    stable(&srv.room(room).await),
                    stable(&before),
                    "{who}: {body} refused, and nothing changed"
                );
                if *who == "room admin" {
                    let detail = detail.as_str().unwrap_or_default();
                    assert!(detail.contains("default room") && detail.contains("owners and admins"), "{detail}");
                }
            }
        }
    }
    // Its users are still the room admin's to manage.
    let added = srv.post(&format!("{path}/users"), &w.room_admin.token, Some(json!({"assignedUsers": [13]}))).await;
    assert!(ids(&added.expect(200)["assignedUsers"]).contains(&13), "{}", added.text);
}

#[tokio::test]
async fn nobody_gives_the_default_room_a_scheduled_deletion() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = default_room(&srv, &w).await;
    let path = format!("/v1/chatrooms/{room}");
    let before = stable(&srv.room(room).await);
    for at in [json!(4_102_444_800_i64), json!("2100-01-01T00:00:00Z")] {
        for ((who, token), status) in CALLERS.iter().zip(tokens(&w)).zip(SCHEDULE_DEFAULT) {
            let resp = srv.patch(&path, &token, Some(json!({"scheduledDeletion": at}))).await;
            check(who, &resp, status);
            if status == 409 {
                let detail = resp.expect_problem(409);
                assert!(detail.contains("DELETE /v1/chatrooms/default/1"), "{who}: the detail says how: {detail}");
            }
        }
    }
    // Not even alongside a change that would be allowed: the whole request is refused.
    let both = json!({"name": "Doomed", "scheduledDeletion": 4_102_444_800_i64});
    srv.patch(&path, &w.owner.token, Some(both)).await.expect_problem(409);
    assert_eq!(stable(&srv.room(room).await), before, "no deletion, no rename");
    // `null` gives none: allowed, and nothing to cancel.
    let none = srv.patch(&path, &w.owner.token, Some(json!({"scheduledDeletion": null, "name": "Acme all"}))).await;
    assert_eq!((&none.expect(200)["scheduledDeletion"], &none.body["name"]), (&Value::Null, &json!("Acme all")));
    // Creating it takes no deletion either.
    srv.delete("/v1/chatrooms/default/1", &w.api, None).await.expect(204);
    let create = json!({"organizationID": 1, "scheduledDeletion": 4_102_444_800_i64});
    let detail = srv.post("/v1/chatrooms/default", &w.api, Some(create)).await.expect_problem(400);
    assert!(detail.contains("scheduledDeletion"), "{detail}");
    assert_eq!(srv.rooms(1).await["total"], 0);
}
