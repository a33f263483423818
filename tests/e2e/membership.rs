//! Who is in a room and with what power, as the homeserver sees it, while
//! users are added, promoted, demoted and removed, organization members
//! leave, and automation follows the organization.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::poll::eventually;
use crate::service::{CONVERGE, Service, matrix_id, on_shared_synapse, room_id};
use crate::synapse::{Admin, RoomState};

/// Waits until the Matrix room's state satisfies `check` (which explains
/// what is missing), then until the room reads `ready` again.
async fn converge(
    svc: &Service,
    admin: &Admin,
    room: i64,
    what: &str,
    check: impl Fn(&RoomState) -> Result<(), String>,
) {
    let mx = matrix_id(&svc.room(room).await);
    eventually(what, CONVERGE, || async {
        let state = admin.state(&mx).await.ok_or_else(|| format!("Synapse does not know {mx}"))?;
        check(&state).map_err(|e| format!("{e}; power levels {:?}; members {:?}", state.power_users(), state.members()))
    })
    .await;
    svc.ready(room, CONVERGE).await;
}

fn expect_power(state: &RoomState, expected: &[(String, i64)]) -> Result<(), String> {
    let expected: BTreeMap<String, i64> = expected.iter().cloned().collect();
    if state.power_users() == expected { Ok(()) } else { Err(format!("power levels should be {expected:?}")) }
}

fn expect_membership(state: &RoomState, user: &str, allowed: &[&str]) -> Result<(), String> {
    let now = state.membership(user);
    if allowed.contains(&now.as_str()) {
        Ok(())
    } else {
        Err(format!("{user} is {now:?}, expected one of {allowed:?}"))
    }
}

fn listed(room: &Value, list: &str) -> Vec<i64> {
    room[list].as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}

#[tokio::test]
async fn adding_promoting_demoting_and_removing_users() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    for (id, name) in [(1, "Ann"), (2, "Bob"), (3, "Cid"), (4, "Dee")] {
        svc.user(id, name, Some((1, "member"))).await;
    }
    let id = room_id(
        &svc.create_room(
            json!({"name": "Team", "organizationID": 1, "admins": [1], "moderators": [2], "assignedUsers": [3]}),
        )
        .await,
    );
    svc.ready(id, CONVERGE).await;
    let (u1, u2, u3, u4) = (svc.mxid(1), svc.mxid(2), svc.mxid(3), svc.mxid(4));
    // Cid joins, so that removing him later kicks a joined member.
    svc.call("POST", &format!("/v1/chatrooms/{id}/claim?user_id=3"), &svc.api, None).await.expect(200);
    converge(&svc, &admin, id, "Cid joined by the claim", |s| expect_membership(s, &u3, &["join"])).await;

    // Promote Bob to admin and Cid to moderator, add Dee.
    let users = format!("/v1/chatrooms/{id}/users");
    let body = json!({"admins": [2], "moderators": [3], "assignedUsers": [4]});
    let room = svc.call("POST", &users, &svc.api, Some(body)).await.expect(200).clone();
    assert_eq!(
        (listed(&room, "admins"), listed(&room, "moderators"), listed(&room, "assignedUsers")),
        (vec![1, 2], vec![3], vec![4])
    );
    converge(&svc, &admin, id, "promotions and the added user on Synapse", |s| {
        expect_power(s, &[(u1.clone(), 100), (u2.clone(), 100), (u3.clone(), 50)])?;
        expect_membership(s, &u4, &["invite"])?;
        expect_membership(s, &u3, &["join"])
    })
    .await;

    // Demote Ann to assigned and Bob to moderator.
    let body = json!({"moderators": [2], "assignedUsers": [1]});
    let room = svc.call("POST", &users, &svc.api, Some(body)).await.expect(200).clone();
    assert_eq!(
        (listed(&room, "admins"), listed(&room, "moderators"), listed(&room, "assignedUsers")),
        (vec![], vec![2, 3], vec![1, 4])
    );
    converge(&svc, &admin, id, "demotions on Synapse", |s| {
        expect_power(s, &[(u2.clone(), 50), (u3.clone(), 50)])?;
        if s.level_of(&u1) == 0 { Ok(()) } else { Err(format!("{u1} should have power 0")) }
    })
    .await;

    // Remove Cid (joined) and Dee (invited).
    let body = json!({"moderators": [3], "assignedUsers": [4]});
    let room = svc.call("DELETE", &users, &svc.api, Some(body)).await.expect(200).clone();
    assert_eq!(
        (listed(&room, "admins"), listed(&room, "moderators"), listed(&room, "assignedUsers")),
        (vec![], vec![2], vec![1])
    );
    let bot = svc.bot();
    converge(&svc, &admin, id, "removed users kicked on Synapse", |s| {
        expect_power(s, &[(u2.clone(), 50)])?;
        for user in [&u3, &u4] {
            expect_membership(s, user, &["leave"])?;
            let sender = s.event("m.room.member", user).and_then(|e| e["sender"].as_str()).unwrap_or_default();
            if sender != bot {
                return Err(format!("{user} left by {sender:?}, not kicked by the bot"));
            }
        }
        expect_membership(s, &u1, &["invite"])?;
        expect_membership(s, &u2, &["invite"])
    })
    .await;
}

#[tokio::test]
async fn removed_organization_member_leaves_every_room() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    svc.user(2, "Bob", Some((1, "member"))).await;
    let a =
        room_id(&svc.create_room(json!({"name": "A", "organizationID": 1, "admins": [1], "assignedUsers": [2]})).await);
    let b = room_id(&svc.create_room(json!({"name": "B", "organizationID": 1, "assignedUsers": [1, 2]})).await);
    svc.ready(a, CONVERGE).await;
    svc.ready(b, CONVERGE).await;
    svc.call("POST", &format!("/v1/chatrooms/{a}/claim"), &ann, None).await.expect(200);
    let u1 = svc.mxid(1);
    converge(&svc, &admin, a, "Ann joined room A", |s| expect_membership(s, &u1, &["join"])).await;

    svc.call("DELETE", "/v1/organizations/1/members/1", &svc.api, None).await.expect(204);
    for room in [a, b] {
        let seen = svc.room(room).await;
        for list in ["admins", "moderators", "assignedUsers"] {
            assert!(!listed(&seen, list).contains(&1), "room {room} still lists Ann in {list}: {seen}");
        }
        converge(&svc, &admin, room, &format!("Ann out of room {room} on Synapse"), |s| {
            expect_membership(s, &u1, &["leave"])?;
            if s.power_users().contains_key(&u1) { Err(format!("{u1} keeps a power level")) } else { Ok(()) }
        })
        .await;
    }
    let u2 = svc.mxid(2);
    converge(&svc, &admin, b, "Bob stays in room B", |s| expect_membership(s, &u2, &["invite"])).await;
}

#[tokio::test]
async fn automation_follows_the_organization() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    svc.user(1, "Olivia Owner", Some((1, "owner"))).await;
    svc.user(2, "Mia Member", Some((1, "member"))).await;
    let id = room_id(
        &svc.create_room(
            json!({"name": "All hands", "organizationID": 1, "assignedUsers": [2], "automationEnabled": false}),
        )
        .await,
    );
    svc.ready(id, CONVERGE).await;
    let (owner, mia) = (svc.mxid(1), svc.mxid(2));
    converge(&svc, &admin, id, "the owner not in a room without automation", |s| expect_membership(s, &owner, &[""]))
        .await;

    let path = format!("/v1/chatrooms/{id}");
    let room = svc.call("PATCH", &path, &svc.api, Some(json!({"automationEnabled": true}))).await.expect(200).clone();
    assert_eq!(room["automationEnabled"], true);
    converge(&svc, &admin, id, "automation on: the owner is a room admin", |s| {
        expect_membership(s, &owner, &["invite", "join"])?;
        expect_membership(s, &mia, &["invite", "join"])?;
        expect_power(s, &[(owner.clone(), 100)])
    })
    .await;

    // Members the organization gains afterwards follow, admins with power 100.
    svc.user(3, "Nina New", Some((1, "member"))).await;
    svc.user(4, "Adam Admin", Some((1, "admin"))).await;
    let (nina, adam) = (svc.mxid(3), svc.mxid(4));
    converge(&svc, &admin, id, "new organization members in the automated room", |s| {
        expect_membership(s, &nina, &["invite", "join"])?;
        expect_membership(s, &adam, &["invite", "join"])?;
        expect_power(s, &[(owner.clone(), 100), (adam.clone(), 100)])
    })
    .await;
    let room = svc.room(id).await;
    assert_eq!((listed(&room, "admins"), listed(&room, "assignedUsers")), (vec![1, 4], vec![2, 3]), "{room}");

    // Off again: a new member stays out. A rename afterwards proves the
    // reconciler has been through the room since.
    svc.call("PATCH", &path, &svc.api, Some(json!({"automationEnabled": false}))).await.expect(200);
    svc.user(5, "Late Larry", Some((1, "member"))).await;
    svc.call("PATCH", &path, &svc.api, Some(json!({"name": "All hands (manual)"}))).await.expect(200);
    let larry = svc.mxid(5);
    converge(&svc, &admin, id, "renamed, without the member who came after automation ended", |s| {
        if s.content("m.room.name", "")["name"] != "All hands (manual)" {
            return Err("not renamed yet".into());
        }
        expect_membership(s, &larry, &[""])
    })
    .await;
    assert!(!listed(&svc.room(id).await, "assignedUsers").contains(&5), "Larry listed without automation");
}

#[tokio::test]
async fn a_demoted_admin_loses_the_power_automation_gave() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    svc.user(1, "Olivia Owner", Some((1, "owner"))).await;
    svc.user(2, "Adam Admin", Some((1, "admin"))).await;
    let default = svc.call(
        "POST",
        "/v1/chatrooms/default",
        &svc.api,
        Some(json!({"organizationID": 1, "automationEnabled": true})),
    );
    let default = room_id(default.await.expect(201));
    // Adam named admin explicitly: that room is his whatever his organization role.
    let named = room_id(
        &svc.create_room(json!({"name": "Adam's", "organizationID": 1, "automationEnabled": true, "admins": [2]}))
            .await,
    );
    let (olivia, adam) = (svc.mxid(1), svc.mxid(2));
    for room in [default, named] {
        converge(&svc, &admin, room, "owner and admin with power 100", |s| {
            expect_power(s, &[(olivia.clone(), 100), (adam.clone(), 100)])
        })
        .await;
    }

    svc.member(1, 2, "member").await;
    assert_eq!(listed(&svc.room(default).await, "assignedUsers"), vec![2]);
    converge(&svc, &admin, default, "the demoted admin at power 0, still in the room", |s| {
        expect_power(s, &[(olivia.clone(), 100)])?;
        expect_membership(s, &adam, &["invite", "join"])?;
        if s.level_of(&adam) == 0 { Ok(()) } else { Err(format!("{adam} should have power 0")) }
    })
    .await;
    // A rename afterwards proves the reconciler has been through the other room since.
    let path = format!("/v1/chatrooms/{named}");
    svc.call("PATCH", &path, &svc.api, Some(json!({"name": "Still Adam's"}))).await.expect(200);
    converge(&svc, &admin, named, "the explicit admin keeps power 100", |s| {
        if s.content("m.room.name", "")["name"] != "Still Adam's" {
            return Err("not renamed yet".into());
        }
        expect_power(s, &[(olivia.clone(), 100), (adam.clone(), 100)])
    })
    .await;

    svc.member(1, 2, "admin").await;
    converge(&svc, &admin, default, "promoted again: power 100", |s| {
        expect_power(s, &[(olivia.clone(), 100), (adam.clone(), 100)])
    })
    .await;
}
