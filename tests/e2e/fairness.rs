//! The background sync is shared by every organization: a room that lists
//! many users without Matrix accounts gets its accounts a few at a time,
//! and the changes queued behind it go in between.

use std::time::Duration;

use serde_json::json;

use crate::service::{CONVERGE, Service, matrix_id, room_id};

#[tokio::test]
async fn a_room_of_many_new_users_does_not_hold_up_other_organizations() {
    let hs = crate::synapse::shared();
    let admin = crate::synapse::Admin::new(&hs).await;
    // Two new accounts per step; writes answer at once.
    let svc = Service::start_with(&hs, 0, &[("MESSENGER_CHAT_MATRIX__ACCOUNTS_PER_STEP", "2")]);
    svc.org(1, "Big").await;
    svc.org(2, "Small").await;
    svc.user(2, "Sam", Some((2, "member"))).await;

    // Forty users nobody has made a Matrix account for yet, then one room of
    // another organization right behind it in the outbox.
    let crowd: Vec<i64> = (100..140).collect();
    let big = room_id(&svc.create_room(json!({"name": "Everyone", "organizationID": 1, "assignedUsers": crowd})).await);
    let small = room_id(&svc.create_room(json!({"name": "Corner", "organizationID": 2, "assignedUsers": [2]})).await);

    let ready = svc.ready(small, CONVERGE).await;
    let big_now = svc.room(big).await;
    assert_eq!(
        big_now["syncState"], "pending",
        "the small room became ready only after all forty accounts of the big one were made: {big_now}; {ready}"
    );

    // The big room gets there too, with every account and invite.
    let done = svc.ready(big, Duration::from_secs(180)).await;
    let state = admin.state(&matrix_id(&done)).await.expect("Synapse knows the big room");
    for user in &crowd {
        let mx = svc.mxid(*user);
        assert!(admin.user(&mx).await.is_some(), "no Matrix account {mx}");
        assert_eq!(state.membership(&mx), "invite", "{mx} in the big room");
    }
}
