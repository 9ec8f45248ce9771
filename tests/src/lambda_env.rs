//! An execution environment for end-to-end tests: the local Lambda running the real `warmpool`
//! extension (as a layer's `extensions/warmpool`) and a function, against a test database. The
//! function is the example `orders` one (`examples/src/bin/orders.rs`) unless a [`Function`]
//! names another, such as a Python or Node.js bootstrap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use local_lambda::{Invocation, LocalLambda, LocalLambdaBuilder, Outcome};
use serde_json::Value;
use tempfile::TempDir;

use crate::ext;
use crate::pg::PgServer;

/// The function an environment runs: its `bootstrap`, the handler Lambda passes it in
/// `_HANDLER`, and variables of its own (an interpreter first on `PATH`, drivers on
/// `NODE_PATH`, ...), which the extension sees too, as on Lambda.
#[derive(Clone, Debug)]
pub struct Function {
    bootstrap: PathBuf,
    handler: Option<String>,
    env: Vec<(String, String)>,
}

impl Function {
    /// The example `orders` function, built with the profile of the running test.
    pub fn orders() -> Function {
        Function::bootstrap(ext::orders_function())
    }

    /// The executable at `path`; its directory is the task root (`LAMBDA_TASK_ROOT` and the
    /// working directory), as `/var/task` is for a deployed function.
    pub fn bootstrap(path: impl Into<PathBuf>) -> Function {
        Function {
            bootstrap: path.into(),
            handler: None,
            env: Vec::new(),
        }
    }

    /// `_HANDLER`, such as `handler.handler` or `index.handler`.
    pub fn handler(mut self, handler: impl Into<String>) -> Function {
        self.handler = Some(handler.into());
        self
    }

    /// A variable of the function's configuration; it replaces the environment's own of that
    /// name (`PATH` included).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Function {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A local Lambda environment with warmpool attached.
pub struct LambdaEnv {
    /// The environment; dropping it shuts everything down.
    pub lambda: LocalLambda,
    socket: PathBuf,
    _dir: TempDir,
}

impl LambdaEnv {
    /// Classic Lambda (freeze between invocations), the extension configured from `pg` plus
    /// `env` overrides.
    pub fn classic(pg: &PgServer, env: &[(&str, &str)]) -> LambdaEnv {
        LambdaEnv::build(pg, env, 1)
    }

    /// [`LambdaEnv::classic`] running `function` instead of the `orders` example.
    pub fn classic_with(pg: &PgServer, env: &[(&str, &str)], function: Function) -> LambdaEnv {
        LambdaEnv::build_with(pg, env, 1, function, |b| b)
    }

    /// Lambda Managed Instances with `concurrency` invocations per environment.
    pub fn managed_instances(pg: &PgServer, env: &[(&str, &str)], concurrency: u32) -> LambdaEnv {
        LambdaEnv::build(pg, env, concurrency)
    }

    /// Classic Lambda as cargo-lambda emulates it: `deadlineMs` 0 in INVOKE and SHUTDOWN.
    pub fn classic_with_zero_deadlines(pg: &PgServer, env: &[(&str, &str)]) -> LambdaEnv {
        LambdaEnv::build_with(pg, env, 1, Function::orders(), |b| b.zero_deadlines(true))
    }

    fn build(pg: &PgServer, env: &[(&str, &str)], concurrency: u32) -> LambdaEnv {
        LambdaEnv::build_with(pg, env, concurrency, Function::orders(), |b| b)
    }

    fn build_with(
        pg: &PgServer,
        env: &[(&str, &str)],
        concurrency: u32,
        function: Function,
        adjust: impl FnOnce(LocalLambdaBuilder) -> LocalLambdaBuilder,
    ) -> LambdaEnv {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-lambda-")
            .tempdir()
            .expect("tempdir");
        let extensions = dir.path().join("extensions");
        std::fs::create_dir(&extensions).expect("extensions dir");
        // Lambda names an extension after its file: /opt/extensions/warmpool.
        std::os::unix::fs::symlink(ext::binary(), extensions.join("warmpool")).expect("symlink");
        let socket = dir.path().join("warmpool.sock");

        let mut vars = pg.env();
        vars.push(("WARMPOOL_SOCKET".into(), socket.display().to_string()));
        vars.push((
            "WARMPOOL_PG_SOCKET_DIR".into(),
            dir.path().display().to_string(),
        ));
        vars.push(("WARMPOOL_LOG".into(), "debug".into()));
        let overrides = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(function.env);
        for (k, v) in overrides {
            vars.retain(|(name, _)| *name != k);
            vars.push((k, v));
        }
        let mut builder = LocalLambda::builder()
            .extensions_dir(&extensions)
            .bootstrap(function.bootstrap)
            .timeout(Duration::from_secs(10))
            .concurrency(concurrency);
        if let Some(handler) = function.handler {
            builder = builder.handler(handler);
        }
        for (k, v) in vars {
            builder = builder.env(k, v);
        }
        LambdaEnv {
            lambda: adjust(builder).build().expect("local lambda"),
            socket,
            _dir: dir,
        }
    }

    /// The extension's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Invokes and expects success; panics with the outcome and the extension's log otherwise.
    pub async fn call(&self, payload: Value) -> Value {
        let inv = self.lambda.invoke(payload.clone()).await;
        match inv.outcome {
            Outcome::Ok(v) => v,
            other => panic!(
                "invocation {payload} failed: {other:?}\noutput:\n{}",
                self.output()
            ),
        }
    }

    /// Invokes and returns whatever happened.
    pub async fn invoke(&self, payload: Value) -> Invocation {
        self.lambda.invoke(payload).await
    }

    /// Everything every process has written.
    pub fn output(&self) -> String {
        self.lambda
            .output()
            .iter()
            .map(|l| format!("{l:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
