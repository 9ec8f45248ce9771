//! Every task the extension starts in the background (a session reset, a cache refresh, a
//! warm-up read, the check after a thaw, a connection's goodbye), tracked in one place, so that
//! shutdown waits for them within its budget instead of leaving them to be cut off mid-write.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Starts `task` in the background, tracked.
pub(crate) fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TASKS.spawn(task)
}

/// At shutdown: waits up to `budget` for the background tasks to end; returns how many were
/// still running at the end of it (they end with the runtime).
pub(crate) async fn drain(budget: Duration) -> usize {
    TASKS.close();
    let _ = tokio::time::timeout(budget, TASKS.wait()).await;
    TASKS.len()
}
