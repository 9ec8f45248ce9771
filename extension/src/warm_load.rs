//! Runs the warm-up queries: all at once at Init, bounded by `WARMPOOL_WARMUP_TIMEOUT_MS`; a
//! query that fails is logged and retried in the background with a doubling backoff
//! ([`crate::state::warmup::backoff`]), so Init never waits on it past the budget. Data sets with a time
//! to live are refreshed in the background once it has passed, on the first INVOKE after a thaw
//! or the first read; the old rows are served until the new ones are in.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::future::join_all;
use warmpool::protocol::WireError;

use crate::shared::Shared;
use crate::state::query;
use crate::state::warmup::{backoff, WarmQuery, WarmSet};

/// Loads every data set, waiting at most the warm-up budget; returns how many are loaded.
pub async fn warm_up(shared: &Arc<Shared>) -> usize {
    let warmup = shared.state.warmup();
    let tasks: Vec<_> = warmup
        .queries()
        .filter(|q| warmup.start_loading(&q.name))
        .map(|q| crate::tasks::spawn(load_until_done(shared.clone(), q.clone())))
        .collect();
    if tasks.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let budget = shared.config.warmup_timeout;
    let finished = tokio::time::timeout(budget, join_all(tasks)).await.is_ok();
    let loaded = warmup
        .queries()
        .filter(|q| warmup.is_loaded(&q.name))
        .count();
    let total = warmup.queries().count();
    if finished {
        tracing::info!(
            loaded,
            total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "warm-up data loaded"
        );
    } else {
        tracing::warn!(
            loaded,
            total,
            budget_ms = budget.as_millis() as u64,
            "warm-up data not all loaded within WARMPOOL_WARMUP_TIMEOUT_MS; retrying in the background"
        );
    }
    loaded
}

/// Starts a background refresh of every data set whose time to live has passed.
pub fn refresh_expired(shared: &Arc<Shared>) {
    let now = shared.state.now();
    for q in shared.state.warmup().take_expired(now) {
        tracing::debug!(name = %q.name, "refreshing a warm-up data set");
        crate::tasks::spawn(load_until_done(shared.clone(), q));
    }
}

/// Starts a background refresh of one data set that a read found expired.
pub fn refresh(shared: &Arc<Shared>, query: WarmQuery) {
    crate::tasks::spawn(load_until_done(shared.clone(), query));
}

/// Reads a data set now, once, bounded by `deadline` when a session waits for it.
pub async fn fetch(
    shared: &Shared,
    query: &WarmQuery,
    deadline: Option<SystemTime>,
) -> Result<Arc<WarmSet>, WireError> {
    let collected =
        query::collect(&shared.pool, &shared.config, &query.sql, &[], &[], deadline).await?;
    Ok(Arc::new(WarmSet {
        columns: collected.columns,
        rows: collected.rows,
        loaded_ms: shared.state.now(),
    }))
}

/// Reads a data set, retrying with backoff until it succeeds or the pool closes. The caller has
/// marked it loading.
async fn load_until_done(shared: Arc<Shared>, query: WarmQuery) {
    let mut failures = 0u32;
    loop {
        match fetch(&shared, &query, None).await {
            Ok(set) => {
                tracing::debug!(name = %query.name, rows = set.rows.len(), "warm-up data set loaded");
                shared.state.warmup().loaded(&query.name, set);
                return;
            }
            Err(e) => {
                if shared.pool.is_closed() {
                    return;
                }
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                tracing::warn!(
                    name = %query.name,
                    code = e.code(),
                    error = e.message(),
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "warm-up query failed"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}
