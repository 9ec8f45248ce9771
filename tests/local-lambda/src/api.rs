//! The public handle: build an environment, invoke it, look inside, shut it down.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, CLASSIC_INIT_TIMEOUT, LMI_INIT_TIMEOUT, SHUTDOWN_BUDGET};
use crate::environment::Shared;
use crate::events::{Event, EventLog};
use crate::lifecycle::Lifecycle;
use crate::output::{OutputLine, OutputLog, WaitTimeout};
use crate::process::ProcessInfo;
use crate::report::{Invocation, ShutdownReport};

/// A local Lambda execution environment. See the crate docs.
///
/// The emulator runs on its own small tokio runtime, so it keeps serving the processes and
/// enforcing deadlines whatever the caller's executor does, and `Drop` can shut it down.
pub struct LocalLambda {
    lifecycle: Arc<Lifecycle>,
    rt: Option<tokio::runtime::Runtime>,
    server_stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Why [`LocalLambdaBuilder::build`] failed.
#[derive(Debug)]
pub struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

#[must_use]
pub struct LocalLambdaBuilder {
    extensions_dir: Option<PathBuf>,
    bootstrap: Option<PathBuf>,
    task_root: Option<PathBuf>,
    function_name: String,
    function_version: String,
    memory_mb: u32,
    region: String,
    account_id: String,
    handler: String,
    timeout: Duration,
    init_timeout: Option<Duration>,
    concurrency: u32,
    env: Vec<(String, String)>,
    inherit_env: bool,
    echo_output: bool,
    zero_deadlines: bool,
}

impl LocalLambdaBuilder {
    /// Sends `deadlineMs` 0 in INVOKE and SHUTDOWN events to extensions, as cargo-lambda's
    /// emulator does, instead of Lambda's real deadlines.
    pub fn zero_deadlines(mut self, yes: bool) -> Self {
        self.zero_deadlines = yes;
        self
    }

    /// The layer's extensions directory (what Lambda mounts as `/opt/extensions`): every
    /// executable in it starts as an external extension.
    pub fn extensions_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extensions_dir = Some(dir.into());
        self
    }

    /// The function's runtime executable (a custom runtime's `bootstrap`).
    pub fn bootstrap(mut self, path: impl Into<PathBuf>) -> Self {
        self.bootstrap = Some(path.into());
        self
    }

    /// `LAMBDA_TASK_ROOT` and the processes' working directory. Default: the bootstrap's
    /// directory.
    pub fn task_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.task_root = Some(dir.into());
        self
    }

    /// A function environment variable (seen by the runtime and the extensions). Lambda's
    /// reserved names are refused at `build()`; credentials are allowed, standing in for the
    /// execution role.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The function timeout (default 3 s, as in Lambda).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The Init limit (default 10 s; 130 s or the timeout, whichever is longer, in LMI mode).
    pub fn init_timeout(mut self, d: Duration) -> Self {
        self.init_timeout = Some(d);
        self
    }

    /// `N > 1` selects Lambda Managed Instances mode with `AWS_LAMBDA_MAX_CONCURRENCY=N`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn function_name(mut self, name: impl Into<String>) -> Self {
        self.function_name = name.into();
        self
    }

    pub fn function_version(mut self, version: impl Into<String>) -> Self {
        self.function_version = version.into();
        self
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    pub fn account_id(mut self, id: impl Into<String>) -> Self {
        self.account_id = id.into();
        self
    }

    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = handler.into();
        self
    }

    /// Pass the host's whole environment through (default: only PATH, RUST_LOG and
    /// RUST_BACKTRACE).
    pub fn inherit_env(mut self, yes: bool) -> Self {
        self.inherit_env = yes;
        self
    }

    /// Print every captured line to stderr as it arrives (also on with `LOCAL_LAMBDA_ECHO=1`).
    pub fn echo_output(mut self, yes: bool) -> Self {
        self.echo_output = yes;
        self
    }

    pub fn build(self) -> Result<LocalLambda, BuildError> {
        let err = |m: String| BuildError(m);
        // Absolute, because the processes run in the task root; not canonicalized, because
        // symlinks must keep their names (an extension's name is its file name).
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let bootstrap = self.bootstrap.map(absolute).ok_or_else(|| {
            err("a bootstrap (the function's runtime executable) is required".into())
        })?;
        let extensions_dir = self.extensions_dir.map(absolute);
        let meta = std::fs::metadata(&bootstrap)
            .map_err(|e| err(format!("bootstrap {}: {e}", bootstrap.display())))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(err(format!(
                "bootstrap {} is not an executable file",
                bootstrap.display()
            )));
        }
        if let Some(dir) = &extensions_dir {
            if !dir.is_dir() {
                return Err(err(format!(
                    "extensions dir {} is not a directory",
                    dir.display()
                )));
            }
        }
        let task_root = match self.task_root {
            Some(t) => absolute(t),
            None => bootstrap
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let lmi = self.concurrency > 1;
        let init_timeout = self.init_timeout.unwrap_or(if lmi {
            LMI_INIT_TIMEOUT.max(self.timeout)
        } else {
            CLASSIC_INIT_TIMEOUT
        });
        let echo = self.echo_output || std::env::var("LOCAL_LAMBDA_ECHO").is_ok_and(|v| v == "1");
        let config = Config {
            extensions_dir,
            bootstrap,
            task_root,
            function_name: self.function_name,
            function_version: self.function_version,
            memory_mb: self.memory_mb,
            region: self.region,
            account_id: self.account_id,
            handler: self.handler,
            timeout: self.timeout,
            init_timeout,
            concurrency: self.concurrency,
            env: self.env,
            inherit_env: self.inherit_env,
            echo_output: echo,
            zero_deadlines: self.zero_deadlines,
        };
        config.validate_env().map_err(err)?;

        // Port 0: the kernel picks a free ephemeral port, so parallel tests never collide.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .map_err(|e| err(format!("binding the Runtime API listener: {e}")))?;
        let api_addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("local-lambda")
            .enable_all()
            .build()
            .map_err(|e| err(format!("starting the emulator's runtime: {e}")))?;
        let start = Instant::now();
        let shared = Arc::new(Shared {
            api_addr,
            events: Arc::new(EventLog::new(start)),
            output: Arc::new(OutputLog::new(start, config.echo_output)),
            config,
            current: Mutex::new(None),
            init_count: AtomicU64::new(0),
            resets: Mutex::new(Vec::new()),
            all_processes: Mutex::new(Vec::new()),
            api_broken: CancellationToken::new(),
        });
        let listener = {
            let _ctx = rt.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| err(e.to_string()))?
        };
        let server_stop = CancellationToken::new();
        let server = rt.spawn(crate::http::serve(
            listener,
            shared.clone(),
            server_stop.clone(),
        ));
        Ok(LocalLambda {
            lifecycle: Arc::new(Lifecycle::new(shared)),
            rt: Some(rt),
            server_stop,
            server: Some(server),
        })
    }
}

impl LocalLambda {
    pub fn builder() -> LocalLambdaBuilder {
        LocalLambdaBuilder {
            extensions_dir: None,
            bootstrap: None,
            task_root: None,
            function_name: "local-function".into(),
            function_version: "$LATEST".into(),
            memory_mb: 128,
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            handler: "bootstrap".into(),
            timeout: Duration::from_secs(3),
            init_timeout: None,
            concurrency: 1,
            env: Vec::new(),
            inherit_env: false,
            echo_output: false,
            zero_deadlines: false,
        }
    }

    /// Runs a future on the emulator's runtime and waits for it from any executor.
    async fn on_emulator<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let rt = self.rt.as_ref().expect("the runtime lives until Drop");
        match rt.spawn(fut).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("emulator task failed: {e}"),
        }
    }

    /// The Runtime and Extensions APIs go away: every open connection to them is dropped
    /// without an answer (a pending `/event/next` long poll ends with the connection closed), and
    /// every new one is closed at once, as when the Lambda service side of an environment fails.
    pub fn break_api(&self) {
        self.lifecycle.shared.api_broken.cancel();
    }

    /// The `AWS_LAMBDA_RUNTIME_API` address (127.0.0.1 and an ephemeral port).
    pub fn runtime_api(&self) -> SocketAddr {
        self.lifecycle.shared.api_addr
    }

    /// Runs Init now, if no environment is up (like provisioned concurrency), and freezes the
    /// environment after it (classic mode). Invocations run Init on their own otherwise.
    pub async fn init(&self) -> Result<Duration, String> {
        let lc = self.lifecycle.clone();
        self.on_emulator(async move { lc.init().await }).await
    }

    /// Invokes the function with `payload` and returns once the Invoke phase is over: in
    /// classic mode the environment is frozen again by then.
    pub async fn invoke(&self, payload: Value) -> Invocation {
        let lc = self.lifecycle.clone();
        self.on_emulator(async move { lc.invoke(payload).await })
            .await
    }

    /// Spindown: SHUTDOWN to the extensions, the runtime and the extensions stopped within the
    /// 2,000 ms budget. Later invocations fail. `Drop` does this too.
    pub async fn shutdown(&self) -> ShutdownReport {
        let lc = self.lifecycle.clone();
        self.on_emulator(async move { lc.shutdown().await }).await
    }

    /// The live processes of the current environment, runtime first.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        match self.lifecycle.shared.current() {
            Some(g) => g
                .read(|s| s.processes())
                .iter()
                .map(|p| p.info.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// The pids of [`Self::processes`].
    pub fn pids(&self) -> Vec<u32> {
        self.processes().iter().map(|p| p.pid).collect()
    }

    pub fn is_frozen(&self) -> bool {
        self.lifecycle
            .shared
            .current()
            .is_some_and(|g| g.read(|s| s.frozen))
    }

    /// How many Inits have started (each fresh environment is one).
    pub fn init_count(&self) -> u64 {
        self.lifecycle.shared.init_count.load(Ordering::SeqCst)
    }

    /// Every line any process has written so far.
    pub fn output(&self) -> Vec<OutputLine> {
        self.lifecycle.shared.output.snapshot()
    }

    /// Waits for a line containing `needle` from a process whose label
    /// (`extension:<name>` / `runtime:<name>`) contains `process`. Lines captured earlier count.
    pub async fn wait_for_output(
        &self,
        process: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<OutputLine, WaitTimeout> {
        let (out, process, needle) = (
            self.lifecycle.shared.output.clone(),
            process.to_string(),
            needle.to_string(),
        );
        self.on_emulator(async move { out.wait_for(&process, &needle, timeout).await })
            .await
    }

    /// The lifecycle event log so far.
    pub fn events(&self) -> Vec<Event> {
        self.lifecycle.shared.events.snapshot()
    }

    /// Waits for the first event (past or future) matching `pred`.
    pub async fn wait_for_event(
        &self,
        pred: impl Fn(&Event) -> bool + Send + Sync + 'static,
        timeout: Duration,
    ) -> Option<Event> {
        let events = self.lifecycle.shared.events.clone();
        self.on_emulator(async move { events.wait_for(pred, timeout).await })
            .await
    }

    /// Every reset so far (timeouts, failures, failed Inits), oldest first.
    pub fn resets(&self) -> Vec<ShutdownReport> {
        self.lifecycle.shared.resets.lock().unwrap().clone()
    }
}

impl Drop for LocalLambda {
    /// A spindown unless the thread is panicking; then, and after it in any case, SIGCONT and
    /// SIGKILL for every process group ever started, and the listener closed.
    fn drop(&mut self) {
        let Some(rt) = self.rt.take() else {
            return;
        };
        if !std::thread::panicking() && !self.lifecycle.is_closed() {
            // Block this thread (the work runs on the emulator's own runtime, so even a
            // current-thread caller cannot deadlock it), bounded by the shutdown budget.
            let (tx, rx) = std::sync::mpsc::channel();
            let lc = self.lifecycle.clone();
            rt.spawn(async move {
                let _ = tx.send(lc.shutdown().await);
            });
            let _ = rx.recv_timeout(SHUTDOWN_BUDGET + Duration::from_secs(3));
        }
        self.lifecycle.kill_all_now();
        // Close the listener before returning, so the port is free for whoever comes next.
        self.server_stop.cancel();
        if let Some(server) = self.server.take() {
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                let _ = server.await;
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(1));
        }
        // Drops the open connections; allowed from inside another runtime, unlike a plain drop.
        rt.shutdown_background();
    }
}
