//! Request bodies: how large each route's may be, and reading one within
//! the memory budget ([`super::budget`]). A body's headers are checked
//! before anything of it is read ([`pending`]); the handler may then refuse
//! the caller, and only then is the body read ([`Pending::read`]).

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::Filter;

use super::budget::{BodyBudget, Refusal, Reservation};
use super::problem::{ApiError, ApiReject};
use super::{AppState, caller};
use crate::config::Config;
use crate::domain::Principal;
use crate::error::Error;
use crate::server::BodyError;

/// What a route's body may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// An avatar: `server.max_body_bytes`.
    Avatar,
    /// User lists of `rooms.max_users_per_request` users at most.
    Users,
    /// Anything else: `server.max_small_body_bytes`.
    Small,
}

/// Bytes a user id may take in a list: `-9223372036854775808, ` and a little room.
const BYTES_PER_USER: u64 = 32;

/// A route's largest body and the configuration key that sets it.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub max: u64,
    pub key: &'static str,
}

impl Limit {
    #[must_use]
    pub fn of(config: &Config, size: Size) -> Limit {
        let s = &config.server;
        let small = |max| Limit { max, key: "server.max_small_body_bytes" };
        let limit = match size {
            Size::Avatar => Limit { max: s.max_body_bytes, key: "server.max_body_bytes" },
            Size::Small => small(s.max_small_body_bytes),
            Size::Users => small(
                s.max_small_body_bytes
                    .max(u64::from(config.rooms.max_users_per_request).saturating_mul(BYTES_PER_USER)),
            ),
        };
        if limit.max > s.max_body_bytes { Limit { max: s.max_body_bytes, key: "server.max_body_bytes" } } else { limit }
    }

    fn too_large(self) -> ApiError {
        ApiError::TooLarge(format!(
            "the request body is larger than {} bytes, the limit of this route ({}): send a smaller body, \
             or the operator raises {}",
            self.max, self.key, self.key
        ))
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// A body whose headers passed, not read yet.
pub struct Pending {
    chunks: Chunks,
    declared: Option<u64>,
    is_json: bool,
    limit: Limit,
    budget: Arc<BodyBudget>,
}

/// A body read whole, holding its bytes of the budget until dropped.
pub struct Body {
    bytes: Bytes,
    _held: Reservation,
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A JSON body of the route's `size`, not read yet. `required`: the body
/// must be there and be `application/json`; otherwise an empty body is
/// accepted. A body that is not JSON when one is required is refused here;
/// one too large by its `Content-Length` when it is read, so that a caller
/// the handler refuses first hears why.
pub fn pending(
    state: &AppState,
    size: Size,
    required: bool,
) -> impl Filter<Extract = (Pending,), Error = warp::Rejection> + Clone + use<> {
    let limit = Limit::of(&state.domain.config, size);
    let budget = state.body_budget.clone();
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream().map(chunks_of))
        .and_then(move |ct: Option<String>, len: Option<u64>, chunks: Chunks| {
            let budget = budget.clone();
            async move {
                let is_json = ct.as_deref().is_some_and(|ct| {
                    let essence = ct.split(';').next().unwrap_or("").trim();
                    essence.eq_ignore_ascii_case("application/json")
                });
                // An optional body may come without a type only when it is
                // empty; a declared length says so without reading it.
                if !is_json && (required || len.is_some_and(|l| l > 0)) {
                    return Err(warp::reject::custom(ApiReject(not_json(ct.as_deref()))));
                }
                Ok(Pending { chunks, declared: len, is_json, limit, budget })
            }
        })
}

/// The body's pieces as `Bytes` (the same buffers, not copies).
fn chunks_of<B: Buf + Send + 'static>(stream: impl Stream<Item = Result<B, warp::Error>> + Send + 'static) -> Chunks {
    Box::pin(stream.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining()))))
}

fn not_json(ct: Option<&str>) -> ApiError {
    ApiError::UnsupportedMediaType(format!(
        "send the body as JSON with `Content-Type: application/json` (got {})",
        ct.map_or("no content type".to_string(), |c| format!("`{c}`"))
    ))
}

/// The caller and the whole body, for routes that decide nothing about the
/// caller before the body: the token is checked before anything is read.
pub fn with_body(
    state: &AppState,
    size: Size,
    required: bool,
) -> impl Filter<Extract = (Principal, Body), Error = warp::Rejection> + Clone + use<> {
    caller(state.clone())
        .and(pending(state, size, required))
        .and_then(|p: Principal, body: Pending| async move {
            body.read(p).await.map(|b| (p, b)).map_err(|e| warp::reject::custom(ApiReject(e)))
        })
        .untuple_one()
}

/// Bytes reserved at a time for a body without a `Content-Length`.
const RESERVE_STEP: u64 = 64 * 1024;

impl Pending {
    /// Reads the whole body for `who`, within the route's limit and the budget.
    ///
    /// # Errors
    /// 413 above the limit, 503 when the budget is in use, 429 when `who`
    /// holds its share, 408 when the body comes too slowly, 400 when it breaks off.
    pub async fn read(self, who: Principal) -> Result<Body, ApiError> {
        let Pending { mut chunks, declared, is_json, limit, budget } = self;
        if declared.is_some_and(|l| l > limit.max) {
            return Err(limit.too_large());
        }
        let mut held = budget.reserve(who, declared.unwrap_or(0)).map_err(|r| refused(r, &budget))?;
        // A body that comes in one piece is kept as it came, without a copy;
        // else the buffer is allocated once for a declared length, and grows
        // by doubling otherwise. The reservation covers what is allocated.
        let mut out = BytesMut::new();
        let mut first: Option<Bytes> = None;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| read_error(&e))?;
            let have = first.as_ref().map_or(out.len(), Bytes::len);
            let len = (have + chunk.len()) as u64;
            if len > limit.max {
                return Err(limit.too_large());
            }
            if first.is_none() && out.is_empty() {
                if len > held.held() {
                    held.grow(len - held.held()).map_err(|r| refused(r, &budget))?;
                }
                first = Some(chunk);
                continue;
            }
            if len > out.capacity() as u64 {
                let doubled = (out.capacity() as u64).saturating_mul(2).max(len).max(RESERVE_STEP);
                let cap = declared.map_or(doubled, |d| d.max(len)).min(limit.max);
                if cap > held.held() {
                    held.grow(cap - held.held()).map_err(|r| refused(r, &budget))?;
                }
                out.reserve(usize::try_from(cap).unwrap_or(usize::MAX) - out.len());
            }
            if let Some(f) = first.take() {
                out.put_slice(&f);
            }
            out.put_slice(&chunk);
        }
        let bytes = first.unwrap_or_else(|| out.freeze());
        if !is_json && !bytes.is_empty() {
            return Err(not_json(None));
        }
        Ok(Body { bytes, _held: held })
    }
}

fn refused(why: Refusal, budget: &BodyBudget) -> ApiError {
    match why {
        Refusal::Server => Error::Overloaded {
            detail: format!(
                "the service holds as many request bodies as it may ({} bytes, server.body_budget_bytes); retry shortly",
                budget.total()
            ),
            retry_after_secs: 1,
        },
        Refusal::Caller => Error::RateLimited {
            detail: format!(
                "this caller's requests hold their share of request-body memory already ({} bytes of \
                 server.body_budget_bytes); send fewer large bodies at once",
                budget.share()
            ),
            retry_after_secs: 1,
        },
    }
    .into()
}

/// What a failed body read means for the client: 408 when it came too slowly.
fn read_error(e: &warp::Error) -> ApiError {
    let source = std::error::Error::source(e);
    match source.and_then(|s| s.downcast_ref::<BodyError>()) {
        Some(timeout @ BodyError::TimedOut(_)) => ApiError::RequestTimeout(timeout.to_string()),
        _ => {
            Error::Malformed(format!("could not read the body: {}", source.map_or(e.to_string(), ToString::to_string)))
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(pieces: &[&'static [u8]], budget: &Arc<BodyBudget>, max: u64) -> Pending {
        let items: Vec<Result<Bytes, warp::Error>> = pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Pending {
            chunks: Box::pin(futures_util::stream::iter(items)),
            declared: None,
            is_json: true,
            limit: Limit { max, key: "server.max_small_body_bytes" },
            budget: budget.clone(),
        }
    }

    #[tokio::test]
    async fn a_body_without_a_length_is_reserved_as_it_comes_and_given_back_when_dropped() {
        let who = Principal::User(7);
        let budget = BodyBudget::new(1 << 20, 1 << 18);
        let one = chunked(&[b"{\"a\": 1}"], &budget, 1 << 18).read(who).await.unwrap();
        assert_eq!(&*one, b"{\"a\": 1}");
        assert_eq!(budget.in_use(), 8, "one piece: kept as it came, its own size held");
        let three = chunked(&[b"{\"a\"", b": ", b"2}"], &budget, 1 << 18).read(who).await.unwrap();
        assert_eq!(&*three, b"{\"a\": 2}");
        assert_eq!(budget.in_use(), 8 + RESERVE_STEP, "several pieces: the buffer allocated is held");
        drop((one, three));
        assert_eq!(budget.in_use(), 0);

        let e = chunked(&[b"{\"a\"", b": 12345"], &budget, 8).read(who).await.err().unwrap();
        assert_eq!(e.status().as_u16(), 413);
        let held = budget.reserve(who, 1 << 18).unwrap();
        let e = chunked(&[b"{}"], &budget, 1 << 18).read(who).await.err().unwrap();
        assert_eq!(e.status().as_u16(), 429, "{e}");
        let others: Vec<_> = (1..4).map(|u| budget.reserve(Principal::User(u), 1 << 18).unwrap()).collect();
        let e = chunked(&[b"{}"], &budget, 1 << 18).read(Principal::User(9)).await.err().unwrap();
        assert_eq!(e.status().as_u16(), 503, "{e}");
        drop((held, others));
        assert_eq!(budget.in_use(), 0, "refused reads hold nothing");
    }

    #[test]
    fn each_route_kind_has_its_limit_and_names_its_key() {
        let mut c = Config::default();
        let l = Limit::of(&c, Size::Avatar);
        assert_eq!((l.max, l.key), (24 << 20, "server.max_body_bytes"));
        let l = Limit::of(&c, Size::Small);
        assert_eq!((l.max, l.key), (256 << 10, "server.max_small_body_bytes"));
        assert_eq!(Limit::of(&c, Size::Users).max, 256 << 10, "1,000 users fit the small limit");
        c.rooms.max_users_per_request = 100_000;
        assert_eq!(Limit::of(&c, Size::Users).max, 3_200_000, "more users, room for them");
        c.server.max_body_bytes = 4096;
        let l = Limit::of(&c, Size::Small);
        assert_eq!((l.max, l.key), (4096, "server.max_body_bytes"), "never above max_body_bytes");
    }
}
