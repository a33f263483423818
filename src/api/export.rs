//! /v1/export: a backup of the running service, API token only.
//!
//! The service holds the database file exclusively, so `messenger-chat
//! export` cannot run beside it; this route writes the same JSON Lines
//! ([`crate::store::dump`]) over HTTP instead. The dump comes from one read
//! transaction, so it is one consistent moment even while writes go on, and
//! it is streamed: a blocking task encodes records into chunks and hands
//! them over a short queue to the response body, so memory stays bounded
//! however large the database is. When the client goes away the queue
//! closes, the task stops and its read transaction ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use tokio::sync::mpsc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{AppState, caller, problem, with_state};
use crate::domain::{Domain, Principal};

/// Media type of the dump: one JSON object a line (JSON Lines).
pub const MEDIA_TYPE: &str = "application/jsonl";
/// Bytes gathered before a chunk goes to the client: large enough that a
/// chunk is not a system call per record, small enough to stay cheap.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks that may wait for a slow client; with [`CHUNK_BYTES`] this bounds
/// the memory of one download to about half a megabyte.
const QUEUE_CHUNKS: usize = 8;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "export").and(warp::get()).and(with_state(state.clone())).and(caller(state)).then(export).boxed()
}

/// GET /v1/export — API token only (a PAT gets 403): every record as JSON
/// Lines, from one snapshot, streamed as `application/jsonl`. Restore with
/// `messenger-chat import` into a new data directory.
async fn export(state: AppState, p: Principal) -> Response {
    if let Err(e) = Domain::require_api(p) {
        return problem::problem(e);
    }
    let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
    let store = state.domain.store.clone();
    let request_id = crate::server::current_request_id();
    // Dropped without waiting: the task ends by itself when the dump is
    // written or the client is gone.
    drop(tokio::task::spawn_blocking(move || {
        let mut out = Chunks { tx, buf: Vec::with_capacity(CHUNK_BYTES), sent: 0, gone: false };
        match store.export(&mut out, |_, _| {}) {
            Ok(n) => {
                out.tx.blocking_send(Piece::End).ok();
                tracing::info!(request_id, records = n, "export: sent every record");
            }
            Err(_) if out.gone => {
                tracing::warn!(request_id, bytes_sent = out.sent, "export: stopped, the client went away");
            }
            Err(e) => {
                out.tx.blocking_send(Piece::Failed).ok();
                tracing::error!(request_id, error = %e, "export: failed; the client gets a cut-off download");
            }
        }
    }));
    let stamp = time::OffsetDateTime::from_unix_timestamp(state.domain.clock.now())
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z")).ok())
        .unwrap_or_else(|| "now".into());
    let mut resp = warp::reply::stream(Download { rx, ended: false }).into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"messenger-chat-{stamp}.jsonl\"")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    // Every token hash and member list is in it: no cache may keep a copy.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What the export task hands to the response body.
enum Piece {
    Data(Bytes),
    /// The whole dump was sent.
    End,
    /// The dump could not be finished.
    Failed,
}

/// The writer the export task writes into: chunks onto the queue, waiting
/// while it is full (so a slow client slows the export down, not memory up).
struct Chunks {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
    /// Bytes handed to the response body so far.
    sent: u64,
    /// The response body was dropped: the client went away.
    gone: bool,
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        let len = chunk.len() as u64;
        self.tx.blocking_send(Piece::Data(chunk)).map_err(|_| {
            self.gone = true;
            io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        self.sent += len;
        Ok(())
    }
}

impl io::Write for Chunks {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The response body: the queue's chunks, then its end. A queue that
/// closes without [`Piece::End`] (a failure, a panic) ends the body with an
/// error, so the client sees a broken transfer rather than a short file
/// that looks complete.
struct Download {
    rx: mpsc::Receiver<Piece>,
    ended: bool,
}

impl Stream for Download {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Piece::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Piece::Failed) | None) => {
                self.ended = true;
                Poll::Ready(Some(Err(io::Error::other("the export stopped before its end; see the service's log"))))
            }
        }
    }
}
