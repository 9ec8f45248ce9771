//! Warm state, through the extension: a key/value store that outlives invocations, named data
//! sets read at Init, and a read-through query result cache. All three live in the extension, so
//! they are shared by every invocation in the execution environment and survive a restart of the
//! function's process; they are lost when the environment ends.

use std::time::Duration;

use bytes::Bytes;
use postgres_types::ToSql;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;
use crate::conn::Conn;
use crate::error::{Error, Kind};
use crate::ops;
use crate::protocol::{
    CacheOutcome, CachedExecute, CompareAndSet, Execute, Put, Request, Response, StateRequest,
    StateResponse,
};
use crate::row::Row;
use crate::statement::{Column, Statement, ToStatement};

/// How long [`Client::query_cached`] may serve a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    ttl: Duration,
    swr: Duration,
}

impl CachePolicy {
    /// Fresh for `ttl` (at least one millisecond); then gone.
    pub fn ttl(ttl: Duration) -> CachePolicy {
        CachePolicy {
            ttl,
            swr: Duration::ZERO,
        }
    }

    /// After the time to live, keeps serving the stale result for up to `swr` more while one
    /// refresh runs in the background (stale-while-revalidate).
    pub fn stale_while_revalidate(mut self, swr: Duration) -> CachePolicy {
        self.swr = swr;
        self
    }
}

impl From<Duration> for CachePolicy {
    fn from(ttl: Duration) -> CachePolicy {
        CachePolicy::ttl(ttl)
    }
}

/// Milliseconds for the wire, rounded up so a short positive duration never means "none".
fn millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if Duration::from_millis(ms as u64) < d {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| millis(t).max(1))
}

fn value_error(e: serde_json::Error) -> Error {
    Error::new(Kind::Value, Some(Box::new(e)))
}

/// The extension's state store, from [`Client::state`].
///
/// Keys are strings and values bytes; the `_json` methods store anything serde can serialize,
/// as JSON. The store is bounded by `WARMPOOL_STATE_MAX_BYTES`: least recently used entries are
/// evicted to make room, so a value can vanish before its time to live; a single entry larger
/// than the whole budget is refused with SQLSTATE 54000. The extension never logs keys or values.
#[derive(Debug, Clone, Copy)]
pub struct StateStore<'a> {
    client: &'a Client,
}

impl StateStore<'_> {
    async fn request(&self, request: StateRequest) -> Result<Response, Error> {
        self.client
            .with_conn_once(async |conn| {
                conn.queue(&Request::State(request))?;
                conn.flush().await?;
                match conn.recv().await? {
                    Response::Error(e) => Err(conn.error(e)),
                    other => Ok(other),
                }
            })
            .await
    }

    async fn applied(&self, request: StateRequest) -> Result<bool, Error> {
        match self.request(request).await? {
            Response::State(StateResponse::Applied(a)) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// The value of `key`, or `None` if it is absent, expired or evicted.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        match self.request(StateRequest::Get { key: key.into() }).await? {
            Response::State(StateResponse::Value(v)) => Ok(Some(v)),
            Response::State(StateResponse::NotFound) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes `key`, replacing any value; with a `ttl`, the value expires after it. The value
    /// is any bytes: `b"v1"`, a `&[u8]`, a `Vec<u8>`, a `&str`, a [`Bytes`].
    ///
    /// # Errors
    /// SQLSTATE 54000 if the entry alone is larger than the store's whole budget
    /// (`WARMPOOL_STATE_MAX_BYTES`) or than a frame; a closed-session error if the extension
    /// cannot be reached.
    pub async fn put(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let request = StateRequest::Put(Put {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_ref()),
            ttl_ms: ttl_ms(ttl),
        });
        match self.request(request).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes `key`; whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.applied(StateRequest::Delete { key: key.into() }).await
    }

    /// Atomically writes `new` (or, for `None`, deletes the key) if the key's value is
    /// `expected` (or, for `None`, the key is absent). Whether it did.
    pub async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        self.applied(StateRequest::CompareAndSet(CompareAndSet {
            key: key.into(),
            expected: expected.map(Bytes::copy_from_slice),
            new: new.map(Bytes::copy_from_slice),
            ttl_ms: ttl_ms(ttl),
        }))
        .await
    }

    /// The value of `key` deserialized from JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key).await? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(value_error),
            None => Ok(None),
        }
    }

    /// Writes `value` serialized as JSON.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(value_error)?;
        self.put(key, bytes, ttl).await
    }

    /// [`StateStore::compare_and_set`] on JSON values. The comparison is of the serialized bytes,
    /// so `expected` must serialize exactly as the stored value did (a `HashMap` may not).
    pub async fn compare_and_set_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected: Option<&T>,
        new: Option<&T>,
        ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let expected = expected
            .map(serde_json::to_vec)
            .transpose()
            .map_err(value_error)?;
        let new = new
            .map(serde_json::to_vec)
            .transpose()
            .map_err(value_error)?;
        self.compare_and_set(key, expected.as_deref(), new.as_deref(), ttl)
            .await
    }
}

fn unexpected(response: &Response) -> Error {
    Error::protocol(format!(
        "unexpected answer to a state store request: {}",
        match response {
            Response::Ok => "Ok",
            Response::State(_) => "another warm-state frame",
            _ => "a statement frame",
        }
    ))
}

impl Client {
    /// The extension's state store: values that outlive invocations and function-process
    /// restarts within the execution environment.
    pub fn state(&self) -> StateStore<'_> {
        StateStore { client: self }
    }

    /// The rows of the warm-up data set `name` (configured in `WARMPOOL_WARMUP`), read from the
    /// extension's memory with no database round trip. If its query has failed so far, the
    /// extension runs it once now and returns its rows or its error.
    pub async fn warm(&self, name: &str) -> Result<Vec<Row>, Error> {
        self.with_conn_once(async |conn| {
            conn.queue(&Request::State(StateRequest::Warm { name: name.into() }))?;
            conn.flush().await?;
            let columns = match conn.recv().await? {
                Response::State(StateResponse::WarmOk(ok)) => ok.columns,
                Response::Error(e) => return Err(conn.error(e)),
                other => return Err(conn.unexpected(&other)),
            };
            let shape = Statement::new(
                String::new(),
                Vec::new(),
                Vec::new(),
                columns
                    .into_iter()
                    .map(|c| Column::new(c.name, c.type_))
                    .collect(),
            );
            ops::read_rows(conn, Some(&shape))
                .await
                .map(|(rows, _)| rows)
        })
        .await
    }

    /// Runs a read statement through the extension's query result cache: the result is keyed on
    /// the statement and its parameter values and shared by every invocation in the
    /// environment. Within `policy`'s time to live a repeat is answered from memory; see
    /// [`CachePolicy`] for stale-while-revalidate. Pass a `Duration` for a plain time to live.
    pub async fn query_cached<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
        policy: impl Into<CachePolicy>,
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.query_cached_outcome(statement, params, policy)
            .await
            .map(|(rows, _)| rows)
    }

    /// [`Client::query_cached`], also saying whether the rows came from the cache.
    pub async fn query_cached_outcome<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
        policy: impl Into<CachePolicy>,
    ) -> Result<(Vec<Row>, CacheOutcome), Error>
    where
        T: ?Sized + ToStatement,
    {
        let policy = policy.into();
        let statement = match statement.__statement() {
            Some(s) => s.clone(),
            None => match self.cached(statement.__sql(), &[]) {
                Some(s) => s,
                None => self.prepare(statement.__sql()).await?,
            },
        };
        let params = ops::encode_params(&statement, params)?;
        let request = Request::State(StateRequest::CachedExecute(CachedExecute {
            ttl_ms: millis(policy.ttl).max(1),
            swr_ms: millis(policy.swr),
            execute: Execute {
                sql: statement.sql().to_owned(),
                types: statement.declared().to_vec(),
                params,
            },
        }));
        self.with_conn_once(async |conn| cached_exchange(conn, &request, &statement).await)
            .await
    }
}

async fn cached_exchange(
    conn: &mut Conn,
    request: &Request,
    statement: &Statement,
) -> Result<(Vec<Row>, CacheOutcome), Error> {
    conn.queue(request)?;
    conn.flush().await?;
    let outcome = match conn.recv().await? {
        Response::State(StateResponse::Cached(o)) => o,
        Response::Error(e) => return Err(conn.error(e)),
        other => return Err(conn.unexpected(&other)),
    };
    let (rows, _) = ops::read_rows(conn, Some(statement)).await?;
    Ok((rows, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::from_micros(5_001)), 6);
        assert_eq!(ttl_ms(Some(Duration::ZERO)), Some(1));
        assert_eq!(ttl_ms(None), None);
        let p: CachePolicy = Duration::from_secs(1).into();
        assert_eq!(
            p.stale_while_revalidate(Duration::from_secs(2)).swr,
            Duration::from_secs(2)
        );
    }
}
