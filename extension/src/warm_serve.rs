//! The session's side of the warm-state requests. Store requests are answered from memory; a
//! warm-up read or a cached statement touches the database only when nothing usable is held.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use warmpool::protocol::{
    sqlstate, CachedExecute, RawRow, Request, Response, StateRequest, StateResponse, WarmOk,
    WireError,
};
use warmpool::transport::Framed;

use crate::metrics::Event;
use crate::shared::{Shared, ROWS_CHUNK};
use crate::state::cache::{CachedResult, Lookup};
use crate::state::lru::TooLarge;
use crate::state::warmup::Found;
use crate::state::{query, Fill};
use crate::warm_load as load;

/// Answers one warm-state request; an error only when the client's socket failed. A read that
/// has to go to the database is bounded by the session's `deadline`, as its statements are.
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    shared: &Arc<Shared>,
    request: StateRequest,
    deadline: Option<SystemTime>,
) -> io::Result<()> {
    let state = &shared.state;
    let answer = match request {
        StateRequest::Get { key } => {
            let now = state.now();
            match state.store().get(&key, now) {
                Some(v) => {
                    shared.pool.meter().add(Event::StateHit);
                    Ok(Response::State(StateResponse::Value(v)))
                }
                None => Ok(Response::State(StateResponse::NotFound)),
            }
        }
        StateRequest::Put(p) => {
            let now = state.now();
            state
                .store()
                .put(p.key, &p.value, ttl(p.ttl_ms), now)
                .map(|()| Response::Ok)
                .map_err(too_large)
        }
        StateRequest::Delete { key } => {
            let now = state.now();
            let existed = state.store().delete(&key, now);
            Ok(Response::State(StateResponse::Applied(existed)))
        }
        StateRequest::CompareAndSet(c) => {
            let now = state.now();
            state
                .store()
                .compare_and_set(
                    &c.key,
                    c.expected.as_deref(),
                    c.new.as_deref(),
                    ttl(c.ttl_ms),
                    now,
                )
                .map(|applied| Response::State(StateResponse::Applied(applied)))
                .map_err(too_large)
        }
        StateRequest::Warm { name } => return warm(framed, shared, &name, deadline).await,
        StateRequest::CachedExecute(c) => return cached(framed, shared, c, deadline).await,
    };
    send(framed, &answer.unwrap_or_else(Response::Error)).await
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

fn too_large(e: TooLarge) -> WireError {
    WireError::extension(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "the entry takes {} bytes (key, value and per-entry overhead), more than the whole \
             state store budget of {} bytes (WARMPOOL_STATE_MAX_BYTES)",
            e.size, e.budget
        ),
    )
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    response: &Response,
) -> io::Result<()> {
    framed.queue_response(response);
    framed.flush().await
}

/// Sends `head`, then `rows` in frames that fit the frame limit, then Complete.
async fn send_rows<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    max_frame: usize,
    head: Response,
    rows: &[RawRow],
    affected: u64,
) -> io::Result<()> {
    if let Some(len) = rows
        .iter()
        .map(RawRow::encoded_len)
        .find(|len| len + 4 > max_frame)
    {
        let e = WireError::extension(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a result row of {len} bytes exceeds the frame limit of {max_frame} bytes \
                 (WARMPOOL_MAX_FRAME_BYTES)"
            ),
        );
        return send(framed, &Response::Error(e)).await;
    }
    framed.queue_response(&head);
    let chunk = max_frame.min(ROWS_CHUNK);
    let mut start = 0;
    let mut bytes = 0;
    for (i, row) in rows.iter().enumerate() {
        let len = row.encoded_len();
        if bytes + len + 4 > chunk && i > start {
            framed.queue_response(&Response::Rows(rows[start..i].to_vec()));
            framed.flush().await?;
            start = i;
            bytes = 0;
        }
        bytes += len;
    }
    if start < rows.len() {
        framed.queue_response(&Response::Rows(rows[start..].to_vec()));
    }
    framed.queue_response(&Response::Complete(affected));
    framed.flush().await
}

async fn warm<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    shared: &Arc<Shared>,
    name: &str,
    deadline: Option<SystemTime>,
) -> io::Result<()> {
    let state = &shared.state;
    let set = match state.warmup().get(name, state.now()) {
        Found::Rows(set, refresh) => {
            shared.pool.meter().add(Event::StateHit);
            if refresh {
                if let Some(q) = state.warmup().queries().find(|q| q.name == name) {
                    load::refresh(shared, q.clone());
                }
            }
            set
        }
        // Its query has failed so far (the background retry may be waiting): one try now, so
        // the caller gets rows or the database's reason.
        Found::NotLoaded(q) => match load::fetch(shared, &q, deadline).await {
            Ok(set) => {
                state.warmup().offer(name, set.clone());
                set
            }
            Err(e) => return send(framed, &Response::Error(e)).await,
        },
        Found::Unknown => {
            let mut names: Vec<&str> = state.warmup().queries().map(|q| q.name.as_str()).collect();
            names.sort_unstable();
            let e = WireError::extension(
                sqlstate::UNDEFINED_OBJECT,
                format!(
                    "no warm-up data set is named {name:?}; configured: [{}] (WARMPOOL_WARMUP)",
                    names.join(", ")
                ),
            );
            return send(framed, &Response::Error(e)).await;
        }
    };
    let head = Response::State(StateResponse::WarmOk(WarmOk {
        columns: set.columns.clone(),
        age_ms: state.now().saturating_sub(set.loaded_ms),
    }));
    send_rows(
        framed,
        shared.config.max_frame,
        head,
        &set.rows,
        set.rows.len() as u64,
    )
    .await
}

/// The cache key: the Execute frame, which holds the SQL, the declared types and every
/// parameter's type and bytes, so equal keys mean the same statement with the same values.
fn cache_key(c: &CachedExecute) -> Bytes {
    let mut buf = BytesMut::new();
    Request::Execute(c.execute.clone()).encode(&mut buf);
    buf.freeze()
}

async fn cached<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    shared: &Arc<Shared>,
    c: CachedExecute,
    deadline: Option<SystemTime>,
) -> io::Result<()> {
    let key = cache_key(&c);
    let lookup = shared.state.cache().lookup(&key, shared.state.now());
    let outcome = lookup.outcome();
    if !matches!(lookup, Lookup::Miss) {
        shared.pool.meter().add(Event::CacheHit);
    }
    let result = match lookup {
        Lookup::Hit(r) => r,
        Lookup::Stale { result, refresh } => {
            if refresh {
                refresh_in_background(shared, key.clone(), c.clone());
            }
            result
        }
        Lookup::Miss => match miss(shared, key, &c, deadline).await {
            Ok(r) => r,
            Err(e) => return send(framed, &Response::Error(e)).await,
        },
    };
    send_rows(
        framed,
        shared.config.max_frame,
        Response::State(StateResponse::Cached(outcome)),
        &result.rows,
        result.affected,
    )
    .await
}

/// Refreshes a stale result in the background, for no one invocation: not bounded by any
/// invocation's deadline.
fn refresh_in_background(shared: &Arc<Shared>, key: Bytes, c: CachedExecute) {
    let shared = shared.clone();
    crate::tasks::spawn(async move {
        if fill(&shared, key.clone(), &c, None).await.is_err() {
            shared
                .state
                .cache()
                .refresh_failed(&key, shared.state.now());
        }
    });
}

/// After a miss: runs the statement, unless another session is already running it for the
/// same key, in which case this one waits for that result (a burst of invocations on a cold
/// or expired key sends one query, not one each). If that fill fails or its result could not
/// be cached, this session runs the statement itself.
async fn miss(
    shared: &Arc<Shared>,
    key: Bytes,
    c: &CachedExecute,
    deadline: Option<SystemTime>,
) -> Result<Arc<CachedResult>, WireError> {
    let mut done = match shared.state.fill_turn(&key) {
        Fill::Lead(_guard) => return fill(shared, key, c, deadline).await,
        Fill::Follow(done) => done,
    };
    tracing::debug!("a cached query's miss is already being filled; waiting for its result");
    tokio::select! {
        // Resolves when the filler drops its sender, whatever became of its query.
        _ = done.changed() => {}
        _ = crate::deadline::sleep_until(deadline.map(crate::deadline::instant)) => {
            return Err(crate::errors::deadline_cancelled());
        }
    }
    let found = shared.state.cache().lookup(&key, shared.state.now());
    match found {
        Lookup::Hit(r) => {
            shared.pool.meter().add(Event::CacheHit);
            Ok(r)
        }
        Lookup::Stale { result, refresh } => {
            shared.pool.meter().add(Event::CacheHit);
            if refresh {
                refresh_in_background(shared, key, c.clone());
            }
            Ok(result)
        }
        Lookup::Miss => fill(shared, key, c, deadline).await,
    }
}

/// Runs the statement and caches its result; a result over the whole budget is returned
/// uncached.
async fn fill(
    shared: &Shared,
    key: Bytes,
    c: &CachedExecute,
    deadline: Option<SystemTime>,
) -> Result<Arc<CachedResult>, WireError> {
    let ex = &c.execute;
    let collected = query::collect(
        &shared.pool,
        &shared.config,
        &ex.sql,
        &ex.types,
        &ex.params,
        deadline,
    )
    .await?;
    let result = Arc::new(CachedResult {
        rows: collected.rows,
        affected: collected.affected,
    });
    let now = shared.state.now();
    if let Err(e) = shared
        .state
        .cache()
        .insert(key, result.clone(), c.ttl_ms, c.swr_ms, now)
    {
        tracing::debug!(
            size = e.size,
            budget = e.budget,
            "a result larger than WARMPOOL_QUERY_CACHE_MAX_BYTES was not cached"
        );
    }
    Ok(result)
}
