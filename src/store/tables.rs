//! Every redb table, named `<key>_<value>`, with the layout of its key.
//! Indexes are written in the same transaction as the table they index.

use redb::TableDefinition;

/// room id → encoded `Room`.
pub const ROOMID_ROOM: TableDefinition<u64, &[u8]> = TableDefinition::new("roomid_room");
/// (organization id, room id) → (): the same keys as `orgidroomid_json` without
/// the values, so skipping a deep `offset` walks small pages.
pub const ORGIDROOMID: TableDefinition<(i64, u64), ()> = TableDefinition::new("orgidroomid");
/// (organization id, room id) → the room's API JSON: an organization's rooms
/// in id order, so a page of GetRooms is one range scan with nothing to decode.
pub const ORGIDROOMID_JSON: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("orgidroomid_json");
/// room id → the organization id (8 bytes, little-endian), then the room's
/// API JSON: what GET one room answers, found by the room id alone, so that
/// request neither reads nor decodes the room record and opens one table
/// for the room instead of two (schema 2, room JSON version 3). Kept with
/// `orgidroomid_json`. Not a tuple value: redb names a tuple's type anew at
/// every open of its table, which cost more than the split.
pub const ROOMID_ORGIDJSON: TableDefinition<u64, &[u8]> = TableDefinition::new("roomid_orgidjson");
/// (organization id, room id) → (): the organization's rooms with automation
/// on, so a membership change reads those rooms only, not all of them.
pub const ORGID_AUTOMATEDROOMID: TableDefinition<(i64, u64), ()> = TableDefinition::new("orgid_automatedroomid");
/// organization id → room id of its default room.
pub const ORGID_DEFAULTROOMID: TableDefinition<i64, u64> = TableDefinition::new("orgid_defaultroomid");
/// (organization id, event id) → room id of the event's room.
pub const ORGIDEVENTID_ROOMID: TableDefinition<(i64, i64), u64> = TableDefinition::new("orgideventid_roomid");
/// Matrix room id (`!…:server`) → room id.
pub const MATRIXROOMID_ROOMID: TableDefinition<&str, u64> = TableDefinition::new("matrixroomid_roomid");
/// (user id, room id) → (): the rooms that list a user, for removals and deactivation.
pub const USERIDROOMID: TableDefinition<(i64, u64), ()> = TableDefinition::new("useridroomid");
/// room id → avatar image bytes, kept until the homeserver has them.
pub const ROOMID_AVATAR: TableDefinition<u64, &[u8]> = TableDefinition::new("roomid_avatar");
/// organization id → encoded `Organization`.
pub const ORGID_ORG: TableDefinition<i64, &[u8]> = TableDefinition::new("orgid_org");
/// organization id → number of its rooms (GetRooms' `total` without a scan).
pub const ORGID_ROOMCOUNT: TableDefinition<i64, u64> = TableDefinition::new("orgid_roomcount");
/// (organization id, level, room id >> (10 × level)) → number of the
/// organization's rooms whose ids lie in that range (absent when none): a
/// level-1 range spans 1,024 room ids, a level-2 range 1,048,576. A deep
/// offset of GetRooms is found by adding up counts, level 2 then level 1,
/// so keys are walked inside one level-1 range only (`Read::org_room_at`).
pub const ORGIDRANGE_ROOMCOUNT: TableDefinition<(i64, u8, u64), u64> = TableDefinition::new("orgidrange_roomcount");
/// (organization id, user id) → role byte (`OrgRole`).
pub const ORGIDUSERID_ROLE: TableDefinition<(i64, i64), u8> = TableDefinition::new("orgiduserid_role");
/// (user id, organization id) → role byte: the reverse of `orgiduserid_role`.
pub const USERIDORGID_ROLE: TableDefinition<(i64, i64), u8> = TableDefinition::new("useridorgid_role");
/// user id → encoded `User`.
pub const USERID_USER: TableDefinition<i64, &[u8]> = TableDefinition::new("userid_user");
/// SHA-256 of a token → encoded `Token`.
pub const TOKENHASH_TOKEN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokenhash_token");
/// (user id, token id) → SHA-256 of the token: a user's tokens, for listing and revocation.
pub const USERIDTOKENID_TOKENHASH: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("useridtokenid_tokenhash");
/// sequence number → encoded `OutboxOp`: what the homeserver still has to do, in order.
pub const SEQ_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("seq_outbox");
/// counter name → value: next ids and sequence numbers.
pub const NAME_COUNTER: TableDefinition<&str, u64> = TableDefinition::new("name_counter");
/// key → encoded value: schema version and other facts about the file.
pub const NAME_META: TableDefinition<&str, &[u8]> = TableDefinition::new("name_meta");
/// (Unix seconds, room id) → (): rooms waiting for their scheduled deletion, soonest first.
pub const DELETIONTIME_ROOMID: TableDefinition<(i64, u64), ()> = TableDefinition::new("deletiontime_roomid");
/// (Unix seconds, room id) → (): rooms waiting to become read-only (`read_only_at`), soonest first (schema 2).
pub const READONLYTIME_ROOMID: TableDefinition<(i64, u64), ()> = TableDefinition::new("readonlytime_roomid");
/// user id → (): app users whose Matrix account exists on the homeserver.
pub const USERID_MATRIXACCOUNT: TableDefinition<i64, ()> = TableDefinition::new("userid_matrixaccount");
/// Matrix room id → delete id of the homeserver's asynchronous room delete being followed.
pub const MATRIXROOMID_DELETEID: TableDefinition<&str, &str> = TableDefinition::new("matrixroomid_deleteid");
/// event id → encoded `Event`: the event log, oldest first (schema 2).
pub const EVENTID_EVENT: TableDefinition<u64, &[u8]> = TableDefinition::new("eventid_event");
/// (organization id, event id) → (): one organization's events in order;
/// organization 0 holds the events of no organization (users, tokens).
pub const ORGIDEVENTID: TableDefinition<(i64, u64), ()> = TableDefinition::new("orgideventid");
/// webhook id → encoded `Webhook`, with its delivery cursor (schema 2).
pub const WEBHOOKID_WEBHOOK: TableDefinition<&str, &[u8]> = TableDefinition::new("webhookid_webhook");
/// (webhook id, attempt number) → encoded `DeliveryAttempt`: each webhook's
/// latest attempts, oldest first, at most `webhooks.delivery_log_size` (schema 2).
pub const WEBHOOKIDSEQ_DELIVERY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhookidseq_delivery");
