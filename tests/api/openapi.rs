//! The published `OpenAPI` document and the router agree: the same routes in
//! both directions, every route actually served, and `/openapi.json`
//! serving exactly the file.

use std::collections::BTreeSet;

use messenger_chat::api::routes::ROUTES;
use serde_json::{Value, json};

use crate::common::TestServer;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The documented operations; `optional` keeps those of path items marked
/// `x-only-when` (answered only with a setting on, such as the proxy's
/// `/.well-known/matrix/client`), which the router need not list.
fn documented(doc: &Value, optional: bool) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has `paths`");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().unwrap_or_else(|| panic!("path item {path} is not an object"));
        if !optional && item.contains_key("x-only-when") {
            continue;
        }
        for method in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

fn routed() -> BTreeSet<(String, String)> {
    ROUTES.iter().map(|(m, p)| ((*m).to_string(), (*p).to_string())).collect()
}

#[test]
fn the_document_describes_exactly_the_routes() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "assets/openapi.json is OpenAPI 3.1, got {}",
        doc["openapi"]
    );
    let routed = routed();
    let (all, always) = (documented(&doc, true), documented(&doc, false));
    let undocumented: Vec<_> = routed.difference(&all).collect();
    let unrouted: Vec<_> = always.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from assets/openapi.json: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented operations the router does not have: {unrouted:?}");
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists a route twice");
}

/// Fills every `{parameter}` of a path template with 1.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed {parameter}") + start;
        out.push('1');
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn every_route_is_served() {
    let srv = TestServer::start();
    let api = srv.api_token.clone();
    // Sanity: a miss looks like this, so the check below can tell.
    let miss = srv.get("/v1/no-such-route", &api).await;
    assert!(miss.expect_problem(404).starts_with("no route"));

    for (method, template) in ROUTES {
        let path = concrete(template);
        let body = if matches!(*method, "GET" | "DELETE") { None } else { Some(json!({})) };
        let resp = srv.request(method, &path, &api, body.as_ref()).await;
        let detail = resp.body["detail"].as_str().unwrap_or_default();
        assert!(
            !(resp.status == 404 && detail.starts_with("no route")) && resp.status != 405,
            "{method} {template} is in ROUTES but the router does not serve it: {} {}",
            resp.status,
            resp.text
        );
        assert!(resp.status < 500 || resp.status == 503, "{method} {path}: {} {}", resp.status, resp.text);
    }
}

#[tokio::test]
async fn openapi_json_serves_the_file() {
    let srv = TestServer::start();
    let served = srv.raw("GET", "/openapi.json", &[], b"").await;
    assert_eq!(served.expect(200), &document(), "GET /openapi.json differs from assets/openapi.json");
}

/// The property names of a schema in the document.
fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"))
        .keys()
        .cloned()
        .collect()
}

/// The Room schema names exactly the fields a served room has, all of them
/// required; and the server accepts every property the request schemas
/// document (it refuses unknown fields, so a documented field it does not
/// know would fail here).
#[tokio::test]
async fn the_room_schemas_match_what_the_server_reads_and_writes() {
    let doc = document();
    let srv = TestServer::start();
    let w = crate::common::World::new(&srv).await;
    let every = |schema: &str| -> Value {
        let mut body = serde_json::Map::new();
        for name in properties(&doc, schema) {
            let value = match name.as_str() {
                "organizationID" => json!(w.org),
                "eventID" => json!(77),
                "name" => json!("Documented"),
                "topic" => json!("Every documented field"),
                "admins" | "moderators" | "assignedUsers" => json!([]),
                "automationEnabled" | "readOnly" => json!(false),
                "avatar" | "scheduledDeletion" | "readOnlyAt" => Value::Null,
                other => panic!("{schema}.{other}: give this test a value for the new property"),
            };
            body.insert(name, value);
        }
        Value::Object(body)
    };
    let custom = srv.post("/v1/chatrooms", &w.api, Some(every("CreateRoom"))).await.expect(201).clone();
    srv.post("/v1/chatrooms/event", &w.api, Some(every("CreateEventRoom"))).await.expect(201);
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(every("CreateDefaultRoom"))).await;
    assert_eq!(default.expect(201)["topic"], "Every documented field");
    let path = format!("/v1/chatrooms/{}", custom["roomID"]);
    let updated = srv.patch(&path, &w.api, Some(every("UpdateRoom"))).await.expect(200).clone();

    let served: BTreeSet<String> = updated.as_object().expect("a room").keys().cloned().collect();
    assert_eq!(served, properties(&doc, "Room"), "the Room schema's properties are a served room's fields");
    let required: BTreeSet<String> = doc["components"]["schemas"]["Room"]["required"]
        .as_array()
        .expect("Room lists required fields")
        .iter()
        .map(|v| v.as_str().expect("a field name").to_string())
        .collect();
    assert_eq!(required, served, "every field of a served room is required in the Room schema");
}
