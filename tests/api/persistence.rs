//! What the service acknowledged is still there after a restart on the same data directory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::common::{TestServer, World, png, room_id, stable, stable_list};

#[tokio::test]
async fn everything_survives_a_restart() {
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = w.api.clone();

    let custom = srv
        .post(
            "/v1/chatrooms",
            &w.owner.token,
            Some(json!({
                "name": "Board",
                "organizationID": 1,
                "moderators": [16],
                "assignedUsers": [17, 13],
                "automationEnabled": true,
                "avatar": STANDARD.encode(png()),
                "scheduledDeletion": "2099-01-01T00:00:00Z",
            })),
        )
        .await;
    let custom = room_id(custom.expect(201));
    srv.post("/v1/chatrooms/default", &api, Some(json!({"organizationID": 1}))).await.expect(201);
    let event = json!({"name": "Gala", "organizationID": 2, "eventID": 8});
    srv.post("/v1/chatrooms/event", &api, Some(event)).await.expect(201);
    let gone = w.room(&srv, "Gone").await;
    srv.delete(&format!("/v1/chatrooms/{gone}"), &api, None).await.expect(204);
    srv.post(&format!("/v1/chatrooms/{custom}/claim"), &w.assigned.token, None).await.expect(200);

    let rooms1 = stable_list(&srv.rooms(1).await);
    let rooms2 = stable_list(&srv.rooms(2).await);
    let members1 = srv.members(1).await;
    let members2 = srv.members(2).await;
    let tokens13 = srv.get("/v1/users/13/tokens", &api).await.expect(200).clone();
    let credentials = srv.get("/v1/user/credentials", &w.member.token).await.expect(200).clone();
    let event_room = srv.get("/v1/chatrooms/event?organization_id=2&event_id=8", &api).await.expect(200).clone();

    srv.restart();
    assert!(
        srv.stdout_lines.iter().all(|l| !l.contains("API token")),
        "a restart prints no new API token: {:?}",
        srv.stdout_lines
    );

    assert_eq!(stable_list(&srv.rooms(1).await), rooms1);
    assert_eq!(stable_list(&srv.rooms(2).await), rooms2);
    assert_eq!(srv.members(1).await, members1);
    assert_eq!(srv.members(2).await, members2);
    assert_eq!(srv.get("/v1/users/13/tokens", &api).await.expect(200), &tokens13);
    let found = srv.get("/v1/chatrooms/event?organization_id=2&event_id=8", &api).await;
    assert_eq!(stable(found.expect(200)), stable(&event_room));
    srv.get(&format!("/v1/chatrooms/{gone}"), &api).await.expect_problem(404);

    // Tokens still open (or keep closed) the same doors.
    for token in [&w.owner.token, &w.admin.token, &w.member.token, &w.room_admin.token, &w.outsider.token] {
        srv.get("/v1/user/credentials", token).await.expect(200);
    }
    srv.get("/v1/chatrooms?organization_id=1", &w.member.token).await.expect(200);
    srv.get("/v1/chatrooms?organization_id=1", &w.outsider.token).await.expect_problem(403);
    srv.get("/v1/user/credentials", &w.revoked).await.expect_problem(401);
    assert_eq!(srv.get("/v1/user/credentials", &w.member.token).await.expect(200), &credentials);

    // The room counter goes on where it was.
    let next = w.room(&srv, "After").await;
    assert!(next > gone, "room ids are not reused after a restart ({next} after {gone})");
    srv.post("/v1/chatrooms/default", &api, Some(json!({"organizationID": 1}))).await.expect_problem(409);
}

#[tokio::test]
async fn two_restarts_in_a_row() {
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    srv.restart();
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.room_admin.token, Some(json!({"name": "Renamed"})))
        .await
        .expect(200);
    srv.restart();
    assert_eq!(srv.room(room).await["name"], "Renamed", "a change made after a restart survives the next");
    srv.get("/v1/chatrooms?organization_id=1", &w.api).await.expect(200);
}
