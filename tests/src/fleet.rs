//! Watching a fleet of environments share one connection budget: many [`LambdaEnv`]s built at
//! once, a gauge of how many of them are running, and a sampler of the fleet's connections as
//! the server lists them.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::ext::Extension;
use crate::lambda_env::LambdaEnv;
use crate::pg::PgServer;

/// The `application_name` the extension gives every connection of fleet `name`.
pub fn application_name(fleet: &str) -> String {
    format!("warmpool:{fleet}")
}

/// How many connections the server lists with `application_name`.
pub async fn connections_named(direct: &tokio_postgres::Client, application_name: &str) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .expect("count connections in pg_stat_activity")
        .get(0)
}

/// The `application_name` of backend `pid`, `None` once the server no longer lists it.
pub async fn application_name_of(direct: &tokio_postgres::Client, pid: i32) -> Option<String> {
    direct
        .query_opt(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("query pg_stat_activity")
        .map(|r| r.get(0))
}

/// Polls `check` until it holds, panicking with `what` after 30 s. The condition is what the
/// caller waits for; the bound only turns a hang into a readable failure.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until backend `pid` has been in `state` (`idle`, `idle in transaction`, `active`)
/// for longer than `ms`, as the server's own clock counts it.
pub async fn wait_in_state_longer_than(
    direct: &tokio_postgres::Client,
    pid: i32,
    state: &str,
    ms: u32,
) {
    let interval = format!("{ms} milliseconds");
    wait_until(
        &format!("backend {pid} is {state} for more than {ms} ms"),
        || async {
            direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = $2 \
                     AND state_change < clock_timestamp() - $3::text::interval",
                    &[&pid, &state, &interval],
                )
                .await
                .expect("query pg_stat_activity")
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
}

impl LambdaEnv {
    /// `n` classic environments against `pg`, the `i`th configured with `env(i)`. Nothing starts
    /// until each is initialized or invoked, so building many is cheap.
    pub fn many_classic(
        pg: &PgServer,
        n: usize,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Vec<LambdaEnv> {
        (0..n)
            .map(|i| {
                let vars = env(i);
                let vars: Vec<(&str, &str)> =
                    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                LambdaEnv::classic(pg, &vars)
            })
            .collect()
    }

    /// The extension's log lines (what it wrote on stdout or stderr) that contain `needle`.
    pub fn extension_lines(&self, needle: &str) -> Vec<String> {
        self.lambda
            .output()
            .into_iter()
            .filter(|l| l.process.starts_with("extension:") && l.line.contains(needle))
            .map(|l| l.line)
            .collect()
    }
}

impl Extension {
    /// Stops the extension with SIGSTOP, as Lambda freezes an environment between invocations:
    /// it answers nothing and runs no timer (in local mode its maintenance checks idle
    /// connections, which keeps them from ever idling long). It resumes when the guard is
    /// dropped, so a failing test leaves nothing stopped.
    pub fn freeze(&self) -> FrozenExtension {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        FrozenExtension(pid)
    }
}

/// See [`Extension::freeze`].
pub struct FrozenExtension(nix::unistd::Pid);

impl Drop for FrozenExtension {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Counts the environments that are not frozen (at Init or running an invocation): only they
/// can open a connection. Besides the count now, it keeps the highest count since the sampler
/// last opened a window, so that a sample can be compared with every environment that may
/// have been connecting while it was taken.
#[derive(Default)]
pub struct Running {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Running {
    /// Marks one environment as running until the guard is dropped. Take it before the Init or
    /// invocation starts and drop it once the call returns (the environment is frozen again).
    pub fn enter(self: &Arc<Self>) -> RunningGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        RunningGuard(self.clone())
    }

    /// Starts a window: the peak restarts from the count now.
    fn open_window(&self) {
        self.peak
            .store(self.now.load(Ordering::SeqCst), Ordering::SeqCst);
        // An `enter` between the load and the store above raised the peak before the store
        // lowered it again; its count is in `now`, so take it back.
        self.peak
            .fetch_max(self.now.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// The most environments running at once since [`Self::open_window`].
    fn window_peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// See [`Running::enter`].
pub struct RunningGuard(Arc<Running>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One reading of the sampler.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Connections the server listed under the fleet's `application_name`.
    pub connections: i64,
    /// The most environments running at once while the reading was taken.
    pub running: usize,
    /// When the reading was answered.
    pub at: std::time::Instant,
}

/// Reads the fleet's connection count through a connection of its own, every few
/// milliseconds, until stopped.
pub struct FleetSampler {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl FleetSampler {
    /// Starts sampling connections named `application_name` on `pg`; each sample carries the
    /// peak of `running` over the time it took.
    pub async fn start(
        pg: &PgServer,
        application_name: &str,
        running: Arc<Running>,
    ) -> FleetSampler {
        let direct = pg.tokio_client().await;
        let name = application_name.to_string();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(3));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return samples,
                    _ = pace.tick() => {}
                }
                // The server takes its snapshot somewhere between sending the query and reading
                // the answer: the window covers both.
                running.open_window();
                let connections = connections_named(&direct, &name).await;
                samples.push(Sample {
                    connections,
                    running: running.window_peak(),
                    at: std::time::Instant::now(),
                });
            }
        });
        FleetSampler {
            stop: Some(stop),
            task,
        }
    }

    /// Stops sampling and returns every sample, oldest first.
    pub async fn stop(mut self) -> Vec<Sample> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the sampler panicked")
    }
}

impl Drop for FleetSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
