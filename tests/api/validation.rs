//! Bad input: every rejection is a problem+json with a detail saying what to
//! change, and nothing stored changes.

use serde_json::{Value, json};

use crate::common::{TestServer, World, png, png_of_size, stable};

/// The classic 1×1 transparent GIF.
const GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// A create body for organization 1 with `patch` merged in (`null` removes a key).
fn create(patch: &Value) -> Value {
    let mut body = json!({"name": "Board", "organizationID": 1});
    for (k, v) in patch.as_object().expect("an object") {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

#[tokio::test]
async fn a_room_body_that_is_not_json_is_refused() {
    let srv = TestServer::start();
    World::new(&srv).await;
    let good = br#"{"name": "Board", "organizationID": 1}"#;
    for broken in [&b"{\"name\": "[..], b"", b"null", b"[]", b"\"Board\"", b"{\"name\": \"Board\",}", b"\xff\xfe"] {
        srv.raw_api("POST", "/v1/chatrooms", Some("application/json"), broken).await.expect_problem(400);
    }
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data")] {
        srv.raw_api("POST", "/v1/chatrooms", ct, good).await.expect_problem(415);
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
    let utf8 = srv.raw_api("POST", "/v1/chatrooms", Some("application/json; charset=utf-8"), good).await;
    utf8.expect(201);
}

/// A topic over 1,000 characters or with control characters is 422 with a
/// detail naming the limit, on create and on PATCH, and changes nothing.
#[tokio::test]
async fn a_bad_topic_is_422_and_changes_nothing() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for (topic, says) in [("x".repeat(1001), "at most 1000 characters, got 1001"), ("bell\u{7}".into(), "control")] {
        let detail =
            srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"topic": topic})))).await.expect_problem(422);
        assert!(detail.contains("topic") && detail.contains(says), "{detail}");
        let body = json!({"organizationID": 1, "topic": topic});
        let detail = srv.post("/v1/chatrooms/default", &w.api, Some(body)).await.expect_problem(422);
        assert!(detail.contains("topic"), "{detail}");
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
    let room = w.room_from(&srv, json!({"name": "Board", "topic": "Kept"})).await;
    let path = format!("/v1/chatrooms/{}", room["roomID"]);
    let detail = srv.patch(&path, &w.api, Some(json!({"topic": "y".repeat(1001), "name": "Changed"}))).await;
    assert!(detail.expect_problem(422).contains("at most 1000 characters"));
    assert_eq!(stable(&srv.room(room["roomID"].as_i64().unwrap()).await), stable(&room), "nothing changed");
    srv.patch(&path, &w.api, Some(json!({"topic": 5}))).await.expect_problem(400);
}

#[tokio::test]
async fn wrong_types_and_unknown_fields_are_400() {
    let srv = TestServer::start();
    World::new(&srv).await;
    for patch in [
        json!({"organizationID": "1"}),
        json!({"organizationID": 1.5}),
        json!({"organizationID": true}),
        json!({"name": 5}),
        json!({"admins": ["12"]}),
        json!({"admins": 12}),
        json!({"moderators": [1.5]}),
        json!({"assignedUsers": {"id": 3}}),
        json!({"automationEnabled": "yes"}),
        json!({"avatar": [1, 256]}),
        json!({"avatar": [-1, 2]}),
        json!({"avatar": 7}),
        json!({"scheduledDeletion": "tomorrow"}),
        json!({"scheduledDeletion": true}),
        json!({"scheduledDeletion": "2099-13-45T00:00:00Z"}),
    ] {
        let body = create(&patch);
        srv.post("/v1/chatrooms", &srv.api_token, Some(body)).await.expect_problem(400);
    }
    let typo = srv.post("/v1/chatrooms", &srv.api_token, Some(create(&json!({"nmae": "Board"})))).await;
    let detail = typo.expect_problem(400);
    assert!(detail.contains("nmae"), "the detail names the unknown field: {detail}");
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
}

#[tokio::test]
async fn ids_must_be_positive() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = &w.api;
    for patch in [
        json!({"organizationID": 0}),
        json!({"organizationID": -3}),
        json!({"admins": [0]}),
        json!({"moderators": [-1]}),
        json!({"assignedUsers": [17, -5]}),
    ] {
        srv.post("/v1/chatrooms", api, Some(create(&patch))).await.expect_problem(422);
    }
    let event = json!({"name": "Gala", "organizationID": 1, "eventID": 0});
    srv.post("/v1/chatrooms/event", api, Some(event)).await.expect_problem(422);
    let event = json!({"name": "Gala", "organizationID": 1, "eventID": -4});
    srv.post("/v1/chatrooms/event", api, Some(event)).await.expect_problem(422);
    srv.post("/v1/chatrooms/default", api, Some(json!({"organizationID": 0}))).await.expect_problem(422);
    for id in ["0", "-1"] {
        srv.get(&format!("/v1/chatrooms/{id}"), api).await.expect_problem(422);
        srv.patch(&format!("/v1/chatrooms/{id}"), api, Some(json!({"name": "X"}))).await.expect_problem(422);
        srv.delete(&format!("/v1/chatrooms/{id}"), api, None).await.expect_problem(422);
        srv.post(&format!("/v1/chatrooms/{id}/claim?user_id=13"), api, None).await.expect_problem(422);
        srv.delete(&format!("/v1/chatrooms/default/{id}"), api, None).await.expect_problem(422);
        srv.get(&format!("/v1/chatrooms?organization_id={id}"), api).await.expect_problem(422);
        srv.get(&format!("/v1/chatrooms/event?organization_id=1&event_id={id}"), api).await.expect_problem(422);
        srv.get(&format!("/v1/chatrooms/event?organization_id={id}&event_id=1"), api).await.expect_problem(422);
    }
    for id in ["abc", "1.5", "1e3"] {
        srv.get(&format!("/v1/chatrooms?organization_id={id}"), api).await.expect_problem(400);
        srv.get(&format!("/v1/chatrooms/event?organization_id=1&event_id={id}"), api).await.expect_problem(400);
        srv.delete(&format!("/v1/chatrooms/default/{id}"), api, None).await.expect_problem(400);
    }
    srv.get("/v1/chatrooms/abc", api).await.expect_problem(400);
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let users = format!("/v1/chatrooms/{room}/users");
    srv.post(&users, api, Some(json!({"admins": [0]}))).await.expect_problem(422);
    srv.post(&users, api, Some(json!({"assignedUsers": [-2]}))).await.expect_problem(422);
    srv.delete(&users, api, Some(json!({"moderators": [0]}))).await.expect_problem(422);
    srv.post(&users, api, Some(json!({"assignedUsers": ["13"]}))).await.expect_problem(400);
    srv.post(&users, api, Some(json!({"assignedUsers": 13}))).await.expect_problem(400);
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn list_parameters_are_checked() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    w.room(&srv, "Board").await;
    for query in [
        "",
        "?limit=5",
        "?organization_id=1&limit=0",
        "?organization_id=1&limit=51",
        "?organization_id=1&limit=-1",
        "?organization_id=1&limit=ten",
        "?organization_id=1&offset=-1",
        "?organization_id=1&offset=x",
        "?organization_id=1&all=maybe",
        "?organization_id=",
    ] {
        let resp = srv.get(&format!("/v1/chatrooms{query}"), &w.api).await;
        resp.expect_problem(400);
    }
    let detail = srv.get("/v1/chatrooms?organization_id=1&limit=51", &w.api).await.expect_problem(400);
    assert!(detail.contains("limit"), "the detail names the parameter: {detail}");
    for query in ["?organization_id=1&limit=1", "?organization_id=1&limit=50", "?organization_id=1&offset=0"] {
        srv.get(&format!("/v1/chatrooms{query}"), &w.api).await.expect(200);
    }
    for query in ["", "?organization_id=1", "?event_id=1", "?organization_id=1&event_id="] {
        srv.get(&format!("/v1/chatrooms/event{query}"), &w.api).await.expect_problem(400);
    }
}

#[tokio::test]
async fn a_room_name_has_1_to_255_characters() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for name in [json!(""), json!("   "), json!("n".repeat(256)), json!("n".repeat(300)), Value::Null] {
        let body = create(&json!({"name": name}));
        srv.post("/v1/chatrooms", &w.api, Some(body)).await.expect_problem(422);
        let event = json!({"name": name, "organizationID": 1, "eventID": 3});
        srv.post("/v1/chatrooms/event", &w.api, Some(event)).await.expect_problem(422);
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
    let longest = srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"name": "n".repeat(255)})))).await;
    longest.expect(201);

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    for name in ["", "  ", &"n".repeat(256), &"m".repeat(300)] {
        srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(json!({"name": name}))).await.expect_problem(422);
    }
    assert_eq!(stable(&srv.room(room).await), stable(&before), "rejected renames change nothing");
}

#[tokio::test]
async fn the_same_user_twice_in_one_list_is_refused() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for patch in [json!({"admins": [12, 12]}), json!({"moderators": [16, 3, 16]}), json!({"assignedUsers": [5, 5]})] {
        let resp = srv.post("/v1/chatrooms", &w.api, Some(create(&patch))).await;
        resp.expect_problem(422);
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let users = format!("/v1/chatrooms/{room}/users");
    srv.post(&users, &w.api, Some(json!({"assignedUsers": [30, 30]}))).await.expect_problem(422);
    srv.delete(&users, &w.api, Some(json!({"assignedUsers": [17, 17]}))).await.expect_problem(422);
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn an_avatar_must_be_a_small_image() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_ROOMS__MAX_AVATAR_BYTES", "1024"),
        ("MESSENGER_CHAT_SERVER__MAX_BODY_BYTES", "16384"),
    ]);
    let w = World::new(&srv).await;
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let not_images = [
        json!([1, 2, 3]),
        json!([]),
        json!(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec()),
        json!(b64(b"%PDF-1.4 not an image")),
        json!(png_of_size(2000)),
        json!(b64(&png_of_size(1025))),
    ];
    for avatar in &not_images {
        let resp = srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"avatar": avatar})))).await;
        resp.expect_problem(422);
    }
    let detail = srv
        .post("/v1/chatrooms", &w.api, Some(create(&json!({"avatar": png_of_size(1025)}))))
        .await
        .expect_problem(422);
    assert!(detail.contains("1024"), "the detail gives the limit: {detail}");
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    for avatar in [json!(png()), json!(png_of_size(1024)), json!(GIF.to_vec()), json!(b64(&GIF))] {
        srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"avatar": avatar})))).await.expect(201);
    }

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    for avatar in &not_images {
        let resp = srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(json!({"avatar": avatar}))).await;
        resp.expect_problem(422);
    }
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_ROOMS__MAX_AVATAR_BYTES", "1024"),
        ("MESSENGER_CHAT_SERVER__MAX_BODY_BYTES", "4096"),
    ]);
    let w = World::new(&srv).await;
    let body = serde_json::to_vec(&create(&json!({"avatar": png_of_size(3000)}))).unwrap();
    assert!(body.len() > 4096);
    srv.raw_api("POST", "/v1/chatrooms", Some("application/json"), &body).await.expect_problem(413);
    let padded = serde_json::to_vec(&create(&json!({"name": format!("Board{}", " ".repeat(5000))}))).unwrap();
    srv.raw_api("POST", "/v1/chatrooms", Some("application/json"), &padded).await.expect_problem(413);
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let patch = serde_json::to_vec(&json!({"avatar": png_of_size(3000)})).unwrap();
    srv.raw_api("PATCH", &format!("/v1/chatrooms/{room}"), Some("application/json"), &patch).await.expect_problem(413);
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn a_deletion_time_must_lie_in_the_future() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for when in [json!("2000-01-01T00:00:00Z"), json!(946_684_800), json!(0), json!("1970-01-01T00:00:00Z")] {
        let resp = srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"scheduledDeletion": when})))).await;
        resp.expect_problem(422);
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let past = json!({"scheduledDeletion": "2001-09-09T01:46:40Z"});
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(past)).await.expect_problem(422);
    let malformed = json!({"scheduledDeletion": "next week"});
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(malformed)).await.expect_problem(400);
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn an_update_is_checked_like_a_create() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let path = format!("/v1/chatrooms/{room}");
    let before = srv.room(room).await;
    srv.patch(&path, &w.api, Some(json!({}))).await.expect_problem(400);
    srv.patch(&path, &w.api, Some(json!({"automationEnabled": "on"}))).await.expect_problem(400);
    let typo = srv.patch(&path, &w.api, Some(json!({"automationEnabeld": true}))).await.expect_problem(400);
    assert!(typo.contains("automationEnabeld"), "the detail names the unknown field: {typo}");
    srv.raw_api("PATCH", &path, Some("application/json"), b"{\"name\":").await.expect_problem(400);
    srv.raw_api("PATCH", &path, Some("text/plain"), b"{\"name\": \"X\"}").await.expect_problem(415);
    srv.raw_api("PATCH", &path, None, b"{\"name\": \"X\"}").await.expect_problem(415);
    let users = format!("{path}/users");
    srv.raw_api("POST", &users, Some("text/plain"), b"{\"assignedUsers\": [3]}").await.expect_problem(415);
    srv.raw_api("DELETE", &users, Some("text/plain"), b"{\"assignedUsers\": [17]}").await.expect_problem(415);
    srv.raw_api("POST", &users, Some("application/json"), b"{\"assignedUsers\": [3").await.expect_problem(400);
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

#[tokio::test]
async fn a_second_default_room_is_409_and_changes_nothing() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let first = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let first = first.expect(201).clone();
    let second = json!({"organizationID": 1, "automationEnabled": true});
    srv.post("/v1/chatrooms/default", &w.owner.token, Some(second)).await.expect_problem(409);
    let list = srv.rooms(1).await;
    assert_eq!(list["total"], 1);
    assert_eq!(stable(&list["entries"][0]), stable(&first), "the first default room is untouched");
}

#[tokio::test]
async fn whole_numbers_written_as_floats_are_integers() {
    // JSON (Schema) has one number type: 11.0 is the integer 11, as the
    // OpenAPI document's `integer` promises. A fraction stays a wrong type.
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let body = json!({"name": "Floats", "organizationID": 1.0, "admins": [11.0], "assignedUsers": [1.7e1],
                      "avatar": [71.0, 73, 70, 56, 57, 97], "scheduledDeletion": 4.1e9});
    let room = srv.post("/v1/chatrooms", &w.api, Some(body)).await.expect(201).clone();
    assert_eq!(room["organizationID"], 1);
    assert_eq!(room["admins"], json!([11]));
    assert_eq!(room["assignedUsers"], json!([17]));
    assert_eq!(room["scheduledDeletion"], "2099-12-03T16:53:20Z");
    let event = json!({"name": "Party", "organizationID": 1, "eventID": 9.0});
    assert_eq!(srv.post("/v1/chatrooms/event", &w.api, Some(event)).await.expect(201)["eventID"], 9);
    let token = srv.post("/v1/users/13/tokens", &w.api, Some(json!({"expiresInDays": 2.0}))).await;
    token.expect(201);
    for fraction in
        [json!({"name": "X", "organizationID": 1.5}), json!({"name": "X", "organizationID": 1, "admins": [11.5]})]
    {
        let detail = srv.post("/v1/chatrooms", &w.api, Some(fraction)).await.expect_problem(400);
        assert!(detail.contains("integer"), "{detail}");
    }
}

#[tokio::test]
async fn a_deletion_time_after_the_year_9999_is_422() {
    // Rooms are answered with the time in RFC 3339, which has four-digit years.
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    for when in [json!(253_402_300_800_i64), json!(9_223_372_036_854_775_806_i64)] {
        let resp = srv.post("/v1/chatrooms", &w.api, Some(create(&json!({"scheduledDeletion": when})))).await;
        let detail = resp.expect_problem(422);
        assert!(detail.contains("9999-12-31T23:59:59Z"), "{detail}");
    }
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
    let last = create(&json!({"scheduledDeletion": 253_402_300_799_i64}));
    let room = srv.post("/v1/chatrooms", &w.api, Some(last)).await.expect(201).clone();
    assert_eq!(room["scheduledDeletion"], "9999-12-31T23:59:59Z");
    let path = format!("/v1/chatrooms/{}", room["roomID"]);
    let later = json!({"scheduledDeletion": 253_402_300_800_i64});
    srv.patch(&path, &w.api, Some(later)).await.expect_problem(422);
    assert_eq!(srv.room(room["roomID"].as_i64().unwrap()).await["scheduledDeletion"], "9999-12-31T23:59:59Z");
}

#[tokio::test]
async fn a_device_id_counts_characters_not_bytes() {
    // 255 characters of two bytes each are within "1 to 255 characters";
    // without a homeserver the login then stops at 503, not at validation.
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let wide = "é".repeat(255);
    let resp = srv.post("/v1/user/login", &w.member.token, Some(json!({"deviceID": wide}))).await;
    resp.expect_problem(503);
    let long = "é".repeat(256);
    let detail = srv.post("/v1/user/login", &w.member.token, Some(json!({"deviceID": long}))).await.expect_problem(422);
    assert!(detail.contains("255"), "{detail}");
    for bad in ["", "PHONE\n1"] {
        srv.post("/v1/user/login", &w.member.token, Some(json!({"deviceID": bad}))).await.expect_problem(422);
    }
}

#[tokio::test]
async fn a_body_must_be_a_json_object() {
    // serde would fill a body from an array of its fields in order; no client means that.
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let before = srv.get("/v1/users/13/tokens", &w.api).await.expect(200).clone();
    for body in [&b"[null, null]"[..], b"[\"phone\", 30]", b"  [1]", b"\"phone\"", b"30", b"true"] {
        let resp = srv.raw_api("POST", "/v1/users/13/tokens", Some("application/json"), body).await;
        let detail = resp.expect_problem(400);
        assert!(detail.contains("JSON object"), "{detail}");
    }
    let room = br#"["Board", 1]"#;
    srv.raw_api("POST", "/v1/chatrooms", Some("application/json"), room).await.expect_problem(400);
    assert_eq!(srv.get("/v1/users/13/tokens", &w.api).await.expect(200), &before, "no token was issued");
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");
}
