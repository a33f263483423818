//! Every route the service answers, as (method, OpenAPI path template).
//! `assets/openapi.json` must describe exactly these; a test checks both
//! directions against the running server.

pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/metrics"),
    ("GET", "/v1/chatrooms"),
    ("POST", "/v1/chatrooms"),
    ("GET", "/v1/chatrooms/event"),
    ("POST", "/v1/chatrooms/event"),
    ("POST", "/v1/chatrooms/default"),
    ("DELETE", "/v1/chatrooms/default/{organizationID}"),
    ("GET", "/v1/chatrooms/{roomID}"),
    ("PATCH", "/v1/chatrooms/{roomID}"),
    ("DELETE", "/v1/chatrooms/{roomID}"),
    ("POST", "/v1/chatrooms/{roomID}/claim"),
    ("POST", "/v1/chatrooms/{roomID}/users"),
    ("DELETE", "/v1/chatrooms/{roomID}/users"),
    ("GET", "/v1/user/credentials"),
    ("POST", "/v1/user/login"),
    ("PUT", "/v1/organizations/{organizationID}"),
    ("DELETE", "/v1/organizations/{organizationID}"),
    ("GET", "/v1/organizations/{organizationID}/members"),
    ("PUT", "/v1/organizations/{organizationID}/members/{userID}"),
    ("DELETE", "/v1/organizations/{organizationID}/members/{userID}"),
    ("PUT", "/v1/users/{userID}"),
    ("DELETE", "/v1/users/{userID}"),
    ("POST", "/v1/users/{userID}/tokens"),
    ("GET", "/v1/users/{userID}/tokens"),
    ("DELETE", "/v1/users/{userID}/tokens/{tokenID}"),
    ("GET", "/v1/export"),
    ("GET", "/v1/events"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{webhookID}"),
    ("PUT", "/v1/webhooks/{webhookID}"),
    ("DELETE", "/v1/webhooks/{webhookID}"),
    ("POST", "/v1/webhooks/{webhookID}/secret"),
];

/// The index in [`ROUTES`] of the route that answers `method` `path`, for
/// metrics; `None` for paths no route answers. A literal segment beats a
/// parameter, whatever the method: `/v1/chatrooms/event` is that path, not
/// `/v1/chatrooms/{roomID}` with a room named `event`, so `PATCH` there has
/// no route (405) rather than reaching the room route.
#[must_use]
pub fn route_of(method: &str, path: &str) -> Option<usize> {
    hot_route(method, path).or_else(|| matched_route(method, path))
}

/// [`route_of`] by the templates.
fn matched_route(method: &str, path: &str) -> Option<usize> {
    // Runs for every request (the metrics; the 405 filter for all but the
    // hot reads): the path is split once, onto the stack, and compared with
    // templates split once per process; splitting every template on every
    // call took a tenth of the time of a GET of one room.
    let path = Segments::of(path.trim_end_matches('/'))?;
    let mut most_literal = 0;
    let mut best: Option<(usize, usize)> = None;
    for &i in with_len(path.len) {
        let Some(literal) = fit(&templates()[i], &path) else { continue };
        most_literal = most_literal.max(literal);
        if ROUTES[i].0 == method && best.is_none_or(|(_, l)| literal > l) {
            best = Some((i, literal));
        }
    }
    best.filter(|(_, l)| *l == most_literal).map(|(i, _)| i)
}

/// The index of `GET /v1/chatrooms` in [`ROUTES`].
const GET_ROOMS: usize = 5;
/// The index of `GET /v1/chatrooms/{roomID}` in [`ROUTES`].
const GET_ROOM: usize = 11;

/// GetRooms and GET one room, the reads sent most, told from their paths
/// without the templates (which cost a GET of one room some 2,000
/// instructions): `None` for any other request, which [`route_of`] then
/// matches in full. A room id is any non-empty segment but the literal
/// `event` and `default`, which are paths of their own.
fn hot_route(method: &str, path: &str) -> Option<usize> {
    if method != "GET" {
        return None;
    }
    let rest = path.strip_prefix("/v1/chatrooms")?;
    if rest.is_empty() {
        return Some(GET_ROOMS);
    }
    let id = rest.strip_prefix('/')?;
    (!id.is_empty() && !id.contains('/') && id != "event" && id != "default").then_some(GET_ROOM)
}

/// Whether a route of `method` with a parameter would take `path` but a
/// more literal route of another method names it (`PATCH
/// /v1/chatrooms/event`): such a request is answered 405, as [`route_of`]
/// counts it.
#[must_use]
pub fn shadowed(method: &str, path: &str) -> bool {
    let Some(trimmed) = Segments::of(path.trim_end_matches('/')) else { return false };
    route_of(method, path).is_none()
        && with_len(trimmed.len).iter().any(|&i| ROUTES[i].0 == method && fit(&templates()[i], &trimmed).is_some())
}

/// More segments than any route has.
const MAX_SEGMENTS: usize = 8;

/// The `/`-separated segments of a path (the empty one before its leading
/// `/` included), kept on the stack.
struct Segments<'a> {
    all: [&'a str; MAX_SEGMENTS],
    len: usize,
}

impl<'a> Segments<'a> {
    /// `None` when the path has more segments than any route.
    fn of(path: &'a str) -> Option<Self> {
        // As `path.split('/')`, byte by byte: the generic splitter cost as
        // much as the matching itself.
        let mut all = [""; MAX_SEGMENTS];
        let mut len = 0;
        let mut start = 0;
        for (i, &b) in path.as_bytes().iter().enumerate() {
            if b == b'/' {
                *all.get_mut(len)? = &path[start..i];
                len += 1;
                start = i + 1;
            }
        }
        *all.get_mut(len)? = &path[start..];
        len += 1;
        Some(Segments { all, len })
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.all[..self.len]
    }
}

/// Every template of [`ROUTES`], split.
fn templates() -> &'static [Segments<'static>] {
    static SPLIT: std::sync::LazyLock<Vec<Segments<'static>>> =
        std::sync::LazyLock::new(|| ROUTES.iter().filter_map(|(_, t)| Segments::of(t)).collect());
    &SPLIT
}

/// The indexes in [`ROUTES`] of the templates of `len` segments: only those
/// can fit a path of `len` segments, so the others are not looked at.
fn with_len(len: usize) -> &'static [usize] {
    static BY_LEN: std::sync::LazyLock<Vec<Vec<usize>>> = std::sync::LazyLock::new(|| {
        let mut by_len = vec![Vec::new(); MAX_SEGMENTS + 1];
        for (i, t) in templates().iter().enumerate() {
            by_len[t.len].push(i);
        }
        by_len
    });
    BY_LEN.get(len).map_or(&[], Vec::as_slice)
}

/// The number of literal segments of `template` when it fits `path`.
fn fit(template: &Segments<'_>, path: &Segments<'_>) -> Option<usize> {
    if template.len != path.len {
        return None;
    }
    let mut literal = 0;
    let fits = template.as_slice().iter().zip(path.as_slice()).all(|(t, s)| {
        if t.starts_with('{') {
            !s.is_empty()
        } else {
            literal += 1;
            t == s
        }
    });
    fits.then_some(literal)
}

/// The methods that some route answers at `path`, for the `Allow` header of a 405.
#[must_use]
pub fn methods_of(path: &str) -> Vec<&'static str> {
    ["GET", "POST", "PUT", "PATCH", "DELETE"].into_iter().filter(|m| route_of(m, path).is_some()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_route() {
        let at = |m, p| route_of(m, p).map(|i| ROUTES[i].1);
        assert_eq!(at("GET", "/v1/chatrooms/event"), Some("/v1/chatrooms/event"));
        assert_eq!(at("GET", "/v1/chatrooms/17"), Some("/v1/chatrooms/{roomID}"));
        assert_eq!(at("DELETE", "/v1/chatrooms/default/3"), Some("/v1/chatrooms/default/{organizationID}"));
        assert_eq!(at("POST", "/v1/chatrooms/5/users"), Some("/v1/chatrooms/{roomID}/users"));
        assert_eq!(at("GET", "/v1/nothing"), None);
        assert_eq!(at("PUT", "/healthz"), None);
        // The literal path wins over the room route for every method.
        assert_eq!(at("PATCH", "/v1/chatrooms/event"), None);
        assert_eq!(at("GET", "/v1/chatrooms/default"), None);
        assert_eq!(at("DELETE", "/v1/chatrooms/7"), Some("/v1/chatrooms/{roomID}"));
    }

    #[test]
    fn the_hot_reads_are_told_as_the_templates_tell_them() {
        assert_eq!(ROUTES[GET_ROOMS], ("GET", "/v1/chatrooms"));
        assert_eq!(ROUTES[GET_ROOM], ("GET", "/v1/chatrooms/{roomID}"));
        let paths = [
            "/v1/chatrooms",
            "/v1/chatrooms/",
            "/v1/chatrooms//",
            "/v1/chatrooms/12",
            "/v1/chatrooms/12/",
            "/v1/chatrooms/!abc:example.org",
            "/v1/chatrooms/%21abc%3Aexample.org",
            "/v1/chatrooms/event",
            "/v1/chatrooms/default",
            "/v1/chatrooms/eventx",
            "/v1/chatrooms/12/users",
            "/v1/chatrooms/12/claim",
            "/v1/chatrooms/default/3",
            "/v1/chatroomsx",
            "/v1/chatroomsx/12",
            "/v2/chatrooms/12",
        ];
        for path in paths {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] {
                let full = matched_route(method, path);
                if let Some(hot) = hot_route(method, path) {
                    assert_eq!(Some(hot), full, "{method} {path}");
                }
                assert_eq!(route_of(method, path), full, "{method} {path}");
            }
        }
    }

    #[test]
    fn literal_paths_shadow_the_room_route() {
        assert!(shadowed("PATCH", "/v1/chatrooms/event"));
        assert!(shadowed("DELETE", "/v1/chatrooms/event"));
        assert!(shadowed("GET", "/v1/chatrooms/default"));
        assert!(!shadowed("GET", "/v1/chatrooms/event"), "GET has its own route there");
        assert!(!shadowed("PATCH", "/v1/chatrooms/7"));
        assert!(!shadowed("PUT", "/v1/chatrooms/event"), "no PUT route would take it anyway");
        assert!(!shadowed("GET", "/v1/nothing"));
    }

    #[test]
    fn a_path_longer_than_every_route_has_none() {
        let long = "/v1/chatrooms/1/users/2/3/4/5/6/7/8";
        assert_eq!(route_of("GET", long), None);
        assert!(!shadowed("GET", long));
        assert!(methods_of(long).is_empty());
        // Every route fits in the segments kept on the stack.
        assert!(ROUTES.iter().all(|(_, t)| t.split('/').count() < MAX_SEGMENTS));
    }

    #[test]
    fn paths_split_as_str_split_does() {
        for path in ["", "/", "//", "/v1/chatrooms", "/v1/chatrooms/", "a/b", "/é/ü/", "/1/2/3/4/5/6/7"] {
            let split: Vec<&str> = path.split('/').collect();
            assert_eq!(Segments::of(path).map(|s| s.as_slice().to_vec()), Some(split), "{path:?}");
        }
        assert!(Segments::of("/1/2/3/4/5/6/7/8").is_none(), "one segment more than MAX_SEGMENTS");
    }

    #[test]
    fn a_path_has_its_methods() {
        assert_eq!(methods_of("/v1/chatrooms"), ["GET", "POST"]);
        assert_eq!(methods_of("/v1/chatrooms/7"), ["GET", "PATCH", "DELETE"]);
        assert_eq!(methods_of("/v1/chatrooms/7/users"), ["POST", "DELETE"]);
        assert_eq!(methods_of("/v1/users/3"), ["PUT", "DELETE"]);
        assert_eq!(methods_of("/healthz"), ["GET"]);
        assert!(methods_of("/v1/nothing").is_empty());
    }
}
