//! Reading requests: tokens, bodies, query strings and path ids, each with
//! an error that says what to change.

use serde::de::DeserializeOwned;
use warp::Filter;
use warp::http::HeaderValue;

use super::body::Body;
use crate::domain::rooms::RoomRef;
use crate::error::{Error, Result};

/// The token of a request: `Authorization: Bearer <t>` or `API-TOKEN: <t>`.
/// Only headers are looked at, so the caller is known before the body is read.
///
/// # Errors (in the extracted value)
/// 401 when neither header carries a token, or both do with different tokens
/// (ambiguous credentials are not valid credentials).
pub fn token() -> impl Filter<Extract = (Result<String>,), Error = std::convert::Infallible> + Clone {
    // Shaped so that the common request (a bearer token, no API-TOKEN)
    // allocates nothing here: a present header is shared, an absent one is
    // no rejection. A value that is not visible ASCII counts as absent.
    let authorization = warp::header::value("authorization").map(Some).or(warp::any().map(|| None)).unify();
    let api_token = warp::header::optional::<String>("api-token").or(warp::any().map(|| None)).unify();
    authorization.and(api_token).map(pick_token)
}

fn pick_token(authorization: Option<HeaderValue>, api_token: Option<String>) -> Result<String> {
    let bearer = authorization.as_ref().and_then(|v| v.to_str().ok()).and_then(|v| {
        let v = v.trim();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
    });
    let header = api_token.as_deref().map(str::trim);
    let token = match (bearer, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(Error::Unauthorized(
                "the Authorization and API-TOKEN headers carry different tokens: send one token, in one of them".into(),
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => "",
    };
    require_token(Some(token)).map(str::to_string)
}

/// The token, or 401.
///
/// # Errors
/// 401 when the request carries none.
pub fn require_token(token: Option<&str>) -> Result<&str> {
    match token {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(Error::Unauthorized(
            "this call needs a token: send `Authorization: Bearer <token>` or `API-TOKEN: <token>`".into(),
        )),
    }
}

/// Parses a JSON body; the error names the field and what was wrong.
///
/// # Errors
/// 400 for broken JSON, a wrong type, a missing or unknown field.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    // Every body is an object; serde would also fill a struct from an array
    // of its fields in order (`[null, null]`), which no client means.
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| matches!(b, b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')) {
        return Err(Error::Malformed("the body must be a JSON object, such as {\"name\": \"Board\"}".into()));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = strip_position(&inner.to_string());
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => Error::Malformed(format!(
                "the body is not valid JSON ({what} at line {} column {})",
                inner.line(),
                inner.column()
            )),
            _ if path == "." || path.is_empty() => Error::Malformed(format!("the body does not fit: {what}")),
            _ => Error::Malformed(format!("field {path}: {what}")),
        }
    })
}

/// Bodies up to this size are parsed where they are answered; larger ones
/// on a blocking thread ([`json_large`]).
const PARSE_INLINE_MAX: usize = 64 << 10;

/// [`json`] for routes whose bodies may be large (user lists, an avatar as
/// an array of numbers): above [`PARSE_INLINE_MAX`] on a blocking thread.
/// The body is parsed where it lies and dropped (its memory given back to
/// the budget) as soon as it is parsed.
/// A 22 MB list of three million ids takes a core for about 0.15 s to
/// parse; on an async worker that stalled every connection the worker serves.
///
/// # Errors
/// As [`json`].
pub async fn json_large<T: DeserializeOwned + Send + 'static>(body: Body) -> Result<T> {
    if body.len() <= PARSE_INLINE_MAX {
        return json(&body);
    }
    super::blocking(move || json(&body)).await
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(at) => msg[..at].to_string(),
        None => msg.to_string(),
    }
}

/// A query string as (name, value) pairs.
///
/// # Errors
/// 400 when it is not `application/x-www-form-urlencoded`.
pub fn query_pairs(raw: &str) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw).map_err(|e| Error::Malformed(format!("malformed query string: {e}")))
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// One query parameter.
#[must_use]
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// An integer parameter (query or path).
///
/// # Errors
/// 400 when it is not an integer.
pub fn int(name: &str, value: &str) -> Result<i64> {
    value.trim().parse::<i64>().map_err(|_| Error::Malformed(format!("{name} must be an integer, got {value:?}")))
}

/// A path segment, percent-decoded.
#[must_use]
pub fn decode_segment(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

/// A room as named in a path: its number, or its Matrix id (`!…:server`).
///
/// # Errors
/// 400 for anything else, 422 for a number ≤ 0.
pub fn room_ref(raw: &str) -> Result<RoomRef> {
    let s = decode_segment(raw);
    // Room version 12 ids carry no server part (`!opaque`), older ones do (`!opaque:server`).
    if s.len() > 1 && s.starts_with('!') {
        return Ok(RoomRef::Matrix(s));
    }
    match s.parse::<i64>() {
        Ok(n) if n > 0 => Ok(RoomRef::Id(n.cast_unsigned())),
        Ok(n) => Err(Error::invalid("roomID", format!("must be a positive integer, got {n}"))),
        Err(_) => Err(Error::Malformed(format!(
            "roomID must be a room number or a Matrix room id such as !abc or !abc:example.org, got {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::problem::ApiError;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        #[serde(rename = "organizationID")]
        organization_id: i64,
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = json::<Body>(br#"{"organizationID": "x"}"#).unwrap_err().to_string();
        assert!(e.contains("organizationID") && e.contains("invalid type"), "{e}");
        let e = json::<Body>(br#"{"organizationID": 1, "nmae": 2}"#).unwrap_err().to_string();
        assert!(e.contains("nmae"), "{e}");
        let e = json::<Body>(b"{").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        for other in [&b"[1]"[..], b" [null]", b"\"x\"", b"7", b"null", b"true"] {
            let e = json::<Body>(other).unwrap_err().to_string();
            assert!(e.contains("must be a JSON object"), "{e}");
        }
    }

    #[test]
    fn one_token_from_either_header() {
        let v = |s: &str| Some(HeaderValue::from_str(s).unwrap());
        let h = |s: &str| Some(s.to_string());
        assert_eq!(pick_token(v("Bearer abc"), None).unwrap(), "abc");
        assert_eq!(pick_token(v("bearer  abc "), None).unwrap(), "abc");
        assert_eq!(pick_token(None, h("abc")).unwrap(), "abc");
        assert_eq!(pick_token(v("Bearer abc"), h("abc")).unwrap(), "abc");
        // A scheme other than Bearer is no token; the other header still counts.
        assert_eq!(pick_token(v("Basic abc"), h("def")).unwrap(), "def");
        assert_eq!(pick_token(v("Bearer abc"), h("def")).map_err(ApiError::from).unwrap_err().status().as_u16(), 401);
        assert_eq!(pick_token(v("Basic abc"), None).map_err(ApiError::from).unwrap_err().status().as_u16(), 401);
        assert_eq!(pick_token(None, h("")).map_err(ApiError::from).unwrap_err().status().as_u16(), 401);
        assert_eq!(pick_token(None, None).map_err(ApiError::from).unwrap_err().status().as_u16(), 401);
    }

    #[test]
    fn room_refs() {
        assert_eq!(room_ref("12").unwrap(), RoomRef::Id(12));
        assert_eq!(room_ref("%21abc%3Ahs").unwrap(), RoomRef::Matrix("!abc:hs".into()));
        assert_eq!(room_ref("!NtkqRlvcxpw").unwrap(), RoomRef::Matrix("!NtkqRlvcxpw".into()));
        assert_eq!(room_ref("0").map_err(ApiError::from).unwrap_err().status().as_u16(), 422);
        assert_eq!(room_ref("-3").map_err(ApiError::from).unwrap_err().status().as_u16(), 422);
        assert_eq!(room_ref("abc").map_err(ApiError::from).unwrap_err().status().as_u16(), 400);
    }
}
