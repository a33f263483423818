//! A small world to act in: organization 1 "Acme" with a user for every
//! role, organization 2 "Globex" with an owner of its own, and a user in no
//! organization. Everything is made through the administration API, as the
//! app's backend would.

use serde_json::{Value, json};

use super::TestServer;

/// A user and one of their personal access tokens.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: i64,
    pub token: String,
}

pub struct World {
    pub api: String,
    /// Organization 1, "Acme".
    pub org: i64,
    pub owner: Member,
    pub admin: Member,
    /// A member of the organization, listed in no room.
    pub member: Member,
    /// A member of the organization, admin of the rooms made by [`World::room`].
    pub room_admin: Member,
    /// A member of the organization, moderator of the rooms made by [`World::room`].
    pub room_mod: Member,
    /// A member of the organization, in `assignedUsers` of the rooms made by [`World::room`].
    pub assigned: Member,
    /// A user in no organization.
    pub outsider: Member,
    /// Organization 2, "Globex".
    pub other_org: i64,
    /// Owner of organization 2 only.
    pub other_owner: Member,
    /// A revoked PAT of [`World::member`].
    pub revoked: String,
}

impl World {
    pub async fn new(srv: &TestServer) -> World {
        let api = srv.api_token.clone();
        create_org(srv, 1, "Acme").await;
        create_org(srv, 2, "Globex").await;
        let owner = user(srv, 11, "Olivia Owner", Some((1, "owner"))).await;
        let admin = user(srv, 12, "Adam Admin", Some((1, "admin"))).await;
        let member = user(srv, 13, "Mia Member", Some((1, "member"))).await;
        let outsider = user(srv, 14, "Oscar Outsider", None).await;
        let room_admin = user(srv, 15, "Rita Roomadmin", Some((1, "member"))).await;
        let room_mod = user(srv, 16, "Max Moderator", Some((1, "member"))).await;
        let assigned = user(srv, 17, "Anna Assigned", Some((1, "member"))).await;
        let other_owner = user(srv, 21, "Gus Globex", Some((2, "owner"))).await;
        let issued =
            srv.post("/v1/users/13/tokens", &api, Some(json!({"name": "old phone", "expiresInDays": 30}))).await;
        let revoked = issued.expect(201)["token"].as_str().expect("a token").to_string();
        let token_id = issued.body["id"].as_i64().expect("a token id");
        srv.delete(&format!("/v1/users/13/tokens/{token_id}"), &api, None).await.expect(204);
        World {
            api,
            org: 1,
            owner,
            admin,
            member,
            room_admin,
            room_mod,
            assigned,
            outsider,
            other_org: 2,
            other_owner,
            revoked,
        }
    }

    /// A custom room of organization 1 made by the API token, with
    /// `room_admin` as admin, `room_mod` as moderator and `assigned` assigned.
    pub async fn room(&self, srv: &TestServer, name: &str) -> i64 {
        let body = json!({
            "name": name,
            "organizationID": self.org,
            "admins": [self.room_admin.id],
            "moderators": [self.room_mod.id],
            "assignedUsers": [self.assigned.id],
            "automationEnabled": false,
        });
        let created = srv.post("/v1/chatrooms", &self.api, Some(body)).await;
        super::room_id(created.expect(201))
    }

    /// A room of organization 1 made by the API token from this body (name
    /// and organization filled in when missing).
    pub async fn room_from(&self, srv: &TestServer, mut body: Value) -> Value {
        if body.get("name").is_none() {
            body["name"] = json!("Room");
        }
        if body.get("organizationID").is_none() {
            body["organizationID"] = json!(self.org);
        }
        srv.post("/v1/chatrooms", &self.api, Some(body)).await.expect(201).clone()
    }
}

/// `PUT /v1/organizations/{id}` with the API token.
pub async fn create_org(srv: &TestServer, id: i64, name: &str) {
    let resp = srv.put(&format!("/v1/organizations/{id}"), &srv.api_token, Some(json!({"name": name}))).await;
    assert_eq!(resp.expect(201), &json!({"organizationID": id, "name": name}));
}

/// Creates a user, gives them a role in an organization and a fresh PAT.
pub async fn user(srv: &TestServer, id: i64, name: &str, role: Option<(i64, &str)>) -> Member {
    let api = &srv.api_token;
    srv.put(&format!("/v1/users/{id}"), api, Some(json!({"displayName": name}))).await.expect(201);
    if let Some((org, role)) = role {
        let set = srv.put(&format!("/v1/organizations/{org}/members/{id}"), api, Some(json!({"role": role}))).await;
        assert_eq!(set.expect(200), &json!({"userID": id, "role": role}));
    }
    let issued = srv.post(&format!("/v1/users/{id}/tokens"), api, Some(json!({"name": "phone"}))).await;
    let token = issued.expect(201)["token"].as_str().expect("a token").to_string();
    Member { id, token }
}

/// A 1×1 transparent PNG.
pub fn png() -> Vec<u8> {
    png_of_size(0)
}

/// A valid PNG image of at least `size` bytes: 1×1 pixel plus a text chunk as padding.
pub fn png_of_size(size: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, *b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0]);
    let base = out.len() + 12 + 11 + 12;
    if size > base + 12 {
        let mut text = b"Comment\0".to_vec();
        text.resize(size - base - 12, b'x');
        chunk(&mut out, *b"tEXt", &text);
    }
    chunk(&mut out, *b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x02, 0x00, 0x00, 0x05, 0x00, 0x01]);
    chunk(&mut out, *b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).expect("chunk size").to_be_bytes());
    let start = out.len();
    out.extend_from_slice(&kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
