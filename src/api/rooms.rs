//! /v1/chatrooms…: the original operations on chatrooms.

use http::StatusCode;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::body::{Body, Pending, Size, pending, with_body};
use super::extract::{self, int, param, query_pairs, raw_query, room_ref};
use super::problem::Handled;
use super::views::{CreateDefaultBody, CreateRoomBody, UpdateRoomBody, UsersBody};
use super::{AppState, blocking, caller, no_content, reader, with_state};
use crate::domain::Principal;
use crate::domain::rooms::{NewRoom, RoomPatch, UserLists};
use crate::error::{Error, Result};
use crate::model::Room;
use crate::store::Reader;

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
    let s = || with_state(state.clone());
    // The caller is known (or the request refused) before any body is read;
    // where the path or the caller alone can decide, the caller is refused
    // before the body is read too.
    let reader = || reader(state.clone());
    let caller = || caller(state.clone());
    let list = warp::path!("v1" / "chatrooms").and(warp::get()).and(s()).and(reader()).and(raw_query()).then(get_rooms);
    let create = warp::path!("v1" / "chatrooms")
        .and(warp::post())
        .and(s())
        .and(caller())
        .and(pending(&state, Size::Avatar, true))
        .then(|st, p, b| create_room(st, p, b, false));
    let get_event = warp::path!("v1" / "chatrooms" / "event")
        .and(warp::get())
        .and(s())
        .and(reader())
        .and(raw_query())
        .then(get_event_room);
    let create_event = warp::path!("v1" / "chatrooms" / "event")
        .and(warp::post())
        .and(s())
        .and(caller())
        .and(pending(&state, Size::Avatar, true))
        .then(|st, p, b| create_room(st, p, b, true));
    let create_default = warp::path!("v1" / "chatrooms" / "default")
        .and(warp::post())
        .and(s())
        .and(with_body(&state, Size::Small, true))
        .then(create_default_room);
    let delete_default = warp::path!("v1" / "chatrooms" / "default" / String)
        .and(warp::delete())
        .and(s())
        .and(caller())
        .then(delete_default_room);
    let get_one = warp::path!("v1" / "chatrooms" / String).and(warp::get()).and(s()).and(reader()).then(get_room);
    let patch = warp::path!("v1" / "chatrooms" / String)
        .and(warp::patch())
        .and(s())
        .and(caller())
        .and(pending(&state, Size::Avatar, true))
        .then(update_room);
    let delete = warp::path!("v1" / "chatrooms" / String).and(warp::delete()).and(s()).and(caller()).then(delete_room);
    let claim = warp::path!("v1" / "chatrooms" / String / "claim")
        .and(warp::post())
        .and(s())
        .and(reader())
        .and(raw_query())
        .then(claim_room);
    let add = warp::path!("v1" / "chatrooms" / String / "users")
        .and(warp::post())
        .and(s())
        .and(caller())
        .and(pending(&state, Size::Users, true))
        .then(|id, st, p, b| change_users(id, st, p, b, true));
    let remove = warp::path!("v1" / "chatrooms" / String / "users")
        .and(warp::delete())
        .and(s())
        .and(caller())
        .and(pending(&state, Size::Users, true))
        .then(|id, st, p, b| change_users(id, st, p, b, false));
    list.or(create)
        .unify()
        .or(get_event)
        .unify()
        .or(create_event)
        .unify()
        .or(create_default)
        .unify()
        .or(delete_default)
        .unify()
        .or(get_one)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(claim)
        .unify()
        .or(add)
        .unify()
        .or(remove)
        .unify()
        .boxed()
}

/// The two hot reads, GetRooms and GET one room, matched ahead of every
/// other route: warp tries an `or` chain route by route, and with the
/// 405 check in front (which matches the path against every template) that
/// took a fifth of the instructions of a GET of one room. The same routes
/// stay in [`routes`] for everything this passes on: the literal paths
/// `event` (its own GET) and `default` (405), and requests whose token is
/// refused, whose rejection then meets the other routes' exactly as before.
pub fn hot(state: AppState) -> BoxedFilter<(Handled,)> {
    let s = || with_state(state.clone());
    let reader = || reader(state.clone());
    let list = warp::path!("v1" / "chatrooms").and(warp::get()).and(s()).and(reader()).and(raw_query()).then(get_rooms);
    let get_one = warp::path!("v1" / "chatrooms" / String)
        .and(warp::get())
        .and_then(|id: String| async move {
            if id == "event" || id == "default" { Err(warp::reject::not_found()) } else { Ok(id) }
        })
        .and(s())
        .and(reader())
        .then(get_room);
    list.or(get_one).unify().boxed()
}

fn room(status: StatusCode, room: &Room) -> Response {
    super::json_bytes(status, room.to_json())
}

/// What a page of GetRooms is first given room for: 50 rooms of a few
/// hundred bytes each fit without growing it more than once or twice.
const PAGE_CAPACITY: usize = 16 * 1024;

/// GET /v1/chatrooms?organization_id=&all=&limit=&offset= — any member of the organization.
async fn get_rooms(state: AppState, r: Reader, p: Principal, query: String) -> Handled {
    let q = query_pairs(&query)?;
    let org = int(
        "organization_id",
        param(&q, "organization_id")
            .ok_or_else(|| Error::Malformed("organization_id is required: add ?organization_id=<id>".into()))?,
    )?;
    let all = match param(&q, "all") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Error::Malformed(format!("all must be true or false, got {other:?}")).into()),
    };
    let limit = match param(&q, "limit") {
        None => 10,
        Some(v) => match int("limit", v)? {
            n @ 1..=50 => usize::try_from(n).unwrap_or(10),
            n => return Err(Error::Malformed(format!("limit must be between 1 and 50, got {n}")).into()),
        },
    };
    let offset = match param(&q, "offset") {
        None => 0,
        Some(v) => match int("offset", v)? {
            n if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
            n => return Err(Error::Malformed(format!("offset must be 0 or more, got {n}")).into()),
        },
    };
    let page = if all { None } else { Some((offset, limit)) };
    // The entries are stored as JSON already: copy them into the page, once.
    let mut body = Vec::with_capacity(PAGE_CAPACITY);
    body.extend_from_slice(b"{\"entries\":[");
    let start = body.len();
    let total = state.domain.list_rooms(&r, p, org, page, |room| {
        if body.len() > start {
            body.push(b',');
        }
        body.extend_from_slice(room);
    })?;
    body.extend_from_slice(format!("],\"total\":{total}}}").as_bytes());
    Ok(super::json_bytes(StatusCode::OK, body))
}

/// GET /v1/chatrooms/event?organization_id=&event_id= — any member of the organization.
async fn get_event_room(state: AppState, r: Reader, p: Principal, query: String) -> Handled {
    let q = query_pairs(&query)?;
    let required = |name: &str| -> Result<i64> {
        int(name, param(&q, name).ok_or_else(|| Error::Malformed(format!("{name} is required")))?)
    };
    let found = state.domain.event_room(&r, p, required("organization_id")?, required("event_id")?)?;
    Ok(room(StatusCode::OK, &found))
}

/// POST /v1/chatrooms (custom room) and POST /v1/chatrooms/event (an event's room)
/// — owners/admins of the organization; a PAT caller becomes a room admin.
/// A user who manages no organization is refused before the body is read.
async fn create_room(state: AppState, p: Principal, body: Pending, event: bool) -> Handled {
    state.domain.may_create_rooms(&state.domain.store.read()?, p)?;
    let b: CreateRoomBody = extract::json_large(body.read(p).await?).await?;
    let event_id = match (event, b.event_id) {
        (true, None) => return Err(Error::Malformed("eventID is required for an event's room".into()).into()),
        (false, Some(_)) => {
            return Err(
                Error::Malformed("eventID belongs in POST /v1/chatrooms/event, not in a custom room".into()).into()
            );
        }
        (_, e) => e,
    };
    let spec = NewRoom {
        org_id: b.organization_id,
        event_id,
        name: b.name,
        topic: b.topic,
        users: UserLists { admins: b.admins, moderators: b.moderators, assigned: b.assigned_users },
        automation: b.automation_enabled,
        avatar: b.avatar,
        scheduled_deletion: b.scheduled_deletion,
        read_only: b.read_only,
        read_only_at: b.read_only_at,
    };
    let d = state.domain.clone();
    let created = blocking(move || d.create_room(p, spec)).await?;
    state.settled(created, StatusCode::CREATED).await
}

/// POST /v1/chatrooms/default — owners/admins of the organization.
async fn create_default_room(state: AppState, p: Principal, body: Body) -> Handled {
    let b: CreateDefaultBody = extract::json(&body)?;
    let d = state.domain.clone();
    let created =
        blocking(move || d.create_default_room(p, b.organization_id, b.automation_enabled, b.topic.as_deref())).await?;
    state.settled(created, StatusCode::CREATED).await
}

/// DELETE /v1/chatrooms/default/{organizationID} — owners/admins of the organization.
async fn delete_default_room(org: String, state: AppState, p: Principal) -> Handled {
    let org = int("organizationID", &extract::decode_segment(&org))?;
    let d = state.domain.clone();
    blocking(move || d.delete_default_room(p, org)).await?;
    Ok(no_content())
}

/// GET /v1/chatrooms/{roomID} — any member of the room's organization.
async fn get_room(id: String, state: AppState, r: Reader, p: Principal) -> Handled {
    let found = state.domain.get_room_json(&r, p, &room_ref(&id)?)?;
    Ok(super::json_bytes(StatusCode::OK, found))
}

/// PATCH /v1/chatrooms/{roomID} — owners/admins of the organization, admins
/// of the room; anyone else is refused before the body is read.
async fn update_room(id: String, state: AppState, p: Principal, body: Pending) -> Handled {
    let which = room_ref(&id)?;
    state.domain.may_update_room(&state.domain.store.read()?, p, &which)?;
    let b: UpdateRoomBody = extract::json_large(body.read(p).await?).await?;
    let patch = RoomPatch {
        automation: b.automation_enabled,
        name: b.name,
        topic: b.topic,
        avatar: b.avatar,
        scheduled_deletion: b.scheduled_deletion,
        read_only: b.read_only,
        read_only_at: b.read_only_at,
    };
    if patch.is_empty() {
        return Err(Error::Malformed(
            "nothing to change: send automationEnabled, name, topic, avatar, scheduledDeletion, readOnly or readOnlyAt"
                .into(),
        )
        .into());
    }
    let d = state.domain.clone();
    let updated = blocking(move || d.update_room(p, &which, patch)).await?;
    state.settled(updated, StatusCode::OK).await
}

/// DELETE /v1/chatrooms/{roomID} — owners/admins of the organization, admins of the room.
async fn delete_room(id: String, state: AppState, p: Principal) -> Handled {
    let which = room_ref(&id)?;
    let d = state.domain.clone();
    blocking(move || d.delete_room(p, &which)).await?;
    Ok(no_content())
}

/// POST /v1/chatrooms/{roomID}/claim — a member listed in the room, or any
/// member for the default room and automated rooms; an API token names the user with `?user_id=`.
async fn claim_room(id: String, state: AppState, r: Reader, p: Principal, query: String) -> Handled {
    let which = room_ref(&id)?;
    let q = query_pairs(&query)?;
    let user_id = param(&q, "user_id").map(|v| int("user_id", v)).transpose()?;
    let user = state.domain.acting_user(&r, p, user_id)?;
    drop(r);
    let d = state.domain.clone();
    let claimed = blocking(move || d.claim_as(p, user, &which)).await?;
    state.settled(claimed, StatusCode::OK).await
}

/// POST (add) and DELETE (remove) /v1/chatrooms/{roomID}/users — owners/admins
/// of the organization and room admins; room moderators for assignedUsers only.
/// A caller who may not change the room is refused before the body is read.
async fn change_users(id: String, state: AppState, p: Principal, body: Pending, add: bool) -> Handled {
    let which = room_ref(&id)?;
    state.domain.may_change_users(&state.domain.store.read()?, p, &which)?;
    let b: UsersBody = extract::json_large(body.read(p).await?).await?;
    let lists = UserLists { admins: b.admins, moderators: b.moderators, assigned: b.assigned_users };
    let d = state.domain.clone();
    let changed =
        blocking(move || if add { d.add_users(p, &which, &lists) } else { d.remove_users(p, &which, &lists) }).await?;
    state.settled(changed, StatusCode::OK).await
}
