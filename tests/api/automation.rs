//! Room roles that automation gave follow the organization role; roles
//! given explicitly (by a create or add-users request, or by creating the
//! room) stay until changed explicitly (api.md, Roles). The story of the
//! issue: an organization admin, room admin of the default room through
//! automation, is demoted and must then be an ordinary member everywhere
//! automation put them.

use serde_json::{Value, json};

use crate::common::{TestServer, World, ids, room_id, stable};

/// The user's role in a room as the API shows it.
fn role_in(room: &Value, user: i64) -> &'static str {
    for (list, role) in [("admins", "admin"), ("moderators", "moderator"), ("assignedUsers", "assigned")] {
        if ids(&room[list]).contains(&user) {
            return role;
        }
    }
    "none"
}

async fn set_role(srv: &TestServer, user: i64, role: &str) {
    let path = format!("/v1/organizations/1/members/{user}");
    srv.put(&path, &srv.api_token, Some(json!({"role": role}))).await.expect(200);
}

/// `user`'s role in each of `rooms`, in order.
async fn roles_of(srv: &TestServer, rooms: &[i64], user: i64) -> Vec<&'static str> {
    let mut out = Vec::new();
    for room in rooms {
        out.push(role_in(&srv.room(*room).await, user));
    }
    out
}

#[tokio::test]
async fn a_demoted_admin_drops_to_assigned_users_and_cannot_touch_the_default_room() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let (olivia, adam) = (w.owner.id, w.admin.id);
    let automated = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "organizationID": 1, "automationEnabled": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let default =
        srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1, "automationEnabled": true}))).await;
    let default = room_id(default.expect(201));
    let all_hands = room_id(&w.room_from(&srv, automated("All hands", json!({}))).await);
    // Made by Olivia's PAT: she is its admin by her own request.
    let hers = srv.post("/v1/chatrooms", &w.owner.token, Some(automated("Olivia's", json!({})))).await;
    let hers = room_id(hers.expect(201));
    // Adam named admin in the create request, or afterwards with add-users.
    let named = room_id(&w.room_from(&srv, automated("Named", json!({"admins": [adam]}))).await);
    let added = room_id(&w.room_from(&srv, automated("Added", json!({}))).await);
    srv.post(&format!("/v1/chatrooms/{added}/users"), &w.owner.token, Some(json!({"admins": [adam]})))
        .await
        .expect(200);
    let manual = room_id(&w.room_from(&srv, json!({"name": "Manual", "admins": [adam]})).await);
    let rooms = [default, all_hands, hers, named, added, manual];
    assert_eq!(roles_of(&srv, &rooms, adam).await, ["admin"; 6], "an organization admin is admin everywhere");

    set_role(&srv, adam, "member").await;
    assert_eq!(
        roles_of(&srv, &rooms, adam).await,
        ["assigned", "assigned", "assigned", "admin", "admin", "admin"],
        "automation's admin role drops; the explicit ones stay"
    );
    assert_eq!(role_in(&srv.room(hers).await, olivia), "admin");

    // The takeover of the issue, tried: rename, new avatar, a deletion a few seconds ahead, removal.
    let before = stable(&srv.room(default).await);
    let path = format!("/v1/chatrooms/{default}");
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
    for body in
        [json!({"name": "Mine now"}), json!({"avatar": crate::common::png()}), json!({"scheduledDeletion": soon})]
    {
        srv.patch(&path, &w.admin.token, Some(body)).await.expect_problem(403);
    }
    srv.delete(&path, &w.admin.token, None).await.expect_problem(403);
    srv.delete("/v1/chatrooms/default/1", &w.admin.token, None).await.expect_problem(403);
    srv.patch(&format!("/v1/chatrooms/{all_hands}"), &w.admin.token, Some(json!({"name": "Mine"})))
        .await
        .expect_problem(403);
    assert_eq!(stable(&srv.room(default).await), before, "the default room is as it was");
    assert_eq!(srv.rooms(1).await["total"], 6);

    // Promoted again, Adam is admin again where automation made him one.
    set_role(&srv, adam, "admin").await;
    assert_eq!(roles_of(&srv, &rooms, adam).await, ["admin"; 6]);

    // The creator keeps the room she made; automation's role elsewhere drops.
    set_role(&srv, olivia, "member").await;
    assert_eq!(
        roles_of(&srv, &rooms, olivia).await,
        ["assigned", "assigned", "admin", "assigned", "assigned", "none"],
        "Olivia, demoted"
    );
}

#[tokio::test]
async fn explicit_roles_stay_through_organization_changes() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let (mia, rita, anna) = (w.member.id, w.room_admin.id, w.assigned.id);
    let body = json!({"name": "Team", "automationEnabled": true, "admins": [rita], "moderators": [mia]});
    let room = room_id(&w.room_from(&srv, body).await);
    let roles = |room: Value| [mia, rita, anna].map(|u| role_in(&room, u));
    assert_eq!(roles(srv.room(room).await), ["moderator", "admin", "assigned"]);

    // A membership set again, or automation turned on again: nothing moves.
    for user in [mia, rita, anna] {
        set_role(&srv, user, "member").await;
    }
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(json!({"automationEnabled": true}))).await.expect(200);
    assert_eq!(roles(srv.room(room).await), ["moderator", "admin", "assigned"]);

    // Rita, an explicit room admin, through a promotion and a demotion: still admin.
    set_role(&srv, rita, "admin").await;
    set_role(&srv, rita, "member").await;
    assert_eq!(role_in(&srv.room(room).await, rita), "admin");

    // Mia, an explicit moderator, is raised to admin as an organization
    // admin; that role is automation's, and on demotion drops to assignedUsers.
    set_role(&srv, mia, "admin").await;
    assert_eq!(role_in(&srv.room(room).await, mia), "admin");
    set_role(&srv, mia, "member").await;
    assert_eq!(role_in(&srv.room(room).await, mia), "assigned");

    // Anna, listed by automation, named explicitly as admin: now hers to keep.
    let users = format!("/v1/chatrooms/{room}/users");
    srv.post(&users, &w.api, Some(json!({"admins": [anna]}))).await.expect(200);
    set_role(&srv, anna, "owner").await;
    set_role(&srv, anna, "member").await;
    assert_eq!(role_in(&srv.room(room).await, anna), "admin");

    // Named again with the role automation gave: the role is explicit from then on.
    let adam = w.admin.id;
    let same = srv.post(&users, &w.api, Some(json!({"admins": [adam]}))).await;
    assert_eq!(role_in(same.expect(200), adam), "admin");
    set_role(&srv, adam, "member").await;
    assert_eq!(role_in(&srv.room(room).await, adam), "admin");

    // Removed explicitly: out, until the organization membership changes again.
    srv.delete(&users, &w.api, Some(json!({"admins": [adam]}))).await.expect(200);
    assert_eq!(role_in(&srv.room(room).await, adam), "none");
}

#[tokio::test]
async fn automation_off_keeps_roles_and_on_again_brings_them_in_line() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let adam = w.admin.id;
    let body = json!({"name": "Team", "automationEnabled": true, "admins": [w.room_admin.id]});
    let room = room_id(&w.room_from(&srv, body).await);
    let path = format!("/v1/chatrooms/{room}");
    assert_eq!(role_in(&srv.room(room).await, adam), "admin");

    // Off: the room stops following the organization, and every role stays as it is.
    srv.patch(&path, &w.api, Some(json!({"automationEnabled": false}))).await.expect(200);
    set_role(&srv, adam, "member").await;
    set_role(&srv, 40, "member").await;
    let off = srv.room(room).await;
    assert_eq!((role_in(&off, adam), role_in(&off, 40)), ("admin", "none"), "{off}");

    // On again: automation's roles follow the organization roles of now.
    let on = srv.patch(&path, &w.owner.token, Some(json!({"automationEnabled": true}))).await;
    let on = on.expect(200);
    let now = [adam, 40, w.room_admin.id, w.owner.id].map(|u| role_in(on, u));
    assert_eq!(now, ["assigned", "assigned", "admin", "admin"], "{on}");
}
