//! The database of an earlier release (each fixture in `tests/fixtures`),
//! started with today's binary against a real Synapse: the work its outbox
//! still held gets done there. The homeserver is first made to match what
//! the database says exists on it (the accounts it records as made);
//! rooms the fixture records as made live on that release's homeserver and
//! are not looked for here.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::poll::eventually;
use crate::service::{Service, matrix_id};
use crate::synapse::{Admin, shared};

/// Generous: a fresh service makes several rooms and accounts at once.
const WITHIN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn an_old_databases_pending_work_reaches_synapse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures") {
        let db = entry.expect("an entry").path();
        if db.extension().is_some_and(|e| e == "redb") {
            let manifest: Value = serde_json::from_str(&std::fs::read_to_string(db.with_extension("json")).unwrap())
                .expect("a JSON manifest");
            pending_work_is_done(&db, &manifest).await;
            seen += 1;
        }
    }
    assert!(seen > 0, "no fixtures in {}", dir.display());
}

async fn pending_work_is_done(db: &Path, manifest: &Value) {
    let hs = shared();
    let admin = Admin::new(&hs).await;
    let export: &[Value] = manifest["export"].as_array().expect("the export");
    let of = |kind: &'static str| export.iter().filter(move |r| r["record"] == kind);

    let svc = Service::prepare(&hs, 0);
    for account in of("matrix_account") {
        let user = account["user"].as_i64().unwrap();
        let localpart = format!("{}{user}", svc.prefix);
        let made = admin.matrix.register(&localpart, "made-by-the-old-release", false, None).await;
        assert!(made.is_ok(), "register {localpart}: {made:?}");
    }
    let svc = svc.start_on(db, manifest["api_token"].as_str().unwrap());

    // Every room that was waiting for the homeserver is made there as stored.
    let rooms = manifest["rooms"].as_object().unwrap();
    for (id, old) in rooms.iter().filter(|(_, r)| r["matrixRoomID"] == "") {
        let id: i64 = id.parse().unwrap();
        let room = svc.ready(id, WITHIN).await;
        assert!(room["syncError"].is_null(), "room {id}: the old sync error is gone once synced: {room}");
        assert_eq!(room["name"], old["name"]);
        let mx = matrix_id(&room);
        let state = admin.state(&mx).await.unwrap_or_else(|| panic!("Synapse does not know {mx} of room {id}"));
        assert_eq!(state.marker(), Some(id), "room {id}");
        assert_eq!(state.content("m.room.name", "")["name"], old["name"], "room {id}");
        let topic = state.content("m.room.topic", "")["topic"].as_str().unwrap_or_default().to_string();
        assert_eq!(topic, room["topic"].as_str().unwrap(), "room {id}: m.room.topic");
        for (list, level) in [("admins", 100), ("moderators", 50), ("assignedUsers", 0)] {
            for user in old[list].as_array().unwrap() {
                let mxid = svc.mxid(user.as_i64().unwrap());
                assert_eq!(state.level_of(&mxid), level, "room {id}: {list} {mxid}");
                let membership = state.membership(&mxid);
                assert!(membership == "invite" || membership == "join", "room {id}: {mxid} is {membership:?}");
            }
        }
        let record = of("room").find(|r| r["id"] == id).expect("the room's record");
        for user in record["claimed"].as_array().unwrap() {
            let mxid = svc.mxid(user.as_i64().unwrap());
            assert_eq!(state.membership(&mxid), "join", "room {id}: {mxid} claimed it");
        }
        if let Some(avatar) = of("avatar").find(|a| a["room"] == id) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(avatar["base64"].as_str().unwrap()).unwrap();
            let url = room["avatarURL"].as_str().unwrap().to_string();
            assert_eq!(state.content("m.room.avatar", "")["url"], url.as_str(), "room {id}");
            let (status, got) = admin.download(&url).await;
            assert_eq!((status, got.as_ref()), (200, bytes.as_slice()), "room {id}: the waiting avatar, uploaded");
        }
    }

    // The user steps: display names kept in step, deactivations done.
    for op in of("outbox").map(|o| &o["op"]) {
        if let Some(user) = op["SyncUser"]["user_id"].as_i64() {
            let name = of("user").find(|u| u["id"] == user).unwrap()["display_name"].as_str().unwrap().to_string();
            let mxid = svc.mxid(user);
            eventually(&format!("{mxid} named {name:?}"), WITHIN, || async {
                let account = admin.user(&mxid).await.ok_or("no account yet")?;
                if account["displayname"] == name.as_str() { Ok(()) } else { Err(account.to_string()) }
            })
            .await;
        }
        if let Some(user) = op["DeactivateUser"]["user_id"].as_i64() {
            let mxid = svc.mxid(user);
            eventually(&format!("{mxid} deactivated"), WITHIN, || async {
                let account = admin.user(&mxid).await.ok_or("no account")?;
                if account["deactivated"] == true { Ok(()) } else { Err(account.to_string()) }
            })
            .await;
        }
    }

    // Nothing left: the room delete being followed ended too.
    eventually("the outbox empty", WITHIN, || async {
        let metrics = svc.call("GET", "/metrics", &svc.api, None).await;
        let depth = metrics.text.lines().find(|l| l.starts_with("messenger_chat_outbox_depth ")).unwrap_or_default();
        if depth.ends_with(" 0") { Ok(()) } else { Err(depth.to_string()) }
    })
    .await;
}
