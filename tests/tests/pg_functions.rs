//! The Python (psycopg 3), Node.js (`pg`) and Java (pgJDBC) functions of `examples/python`,
//! `examples/node` and `examples/java`, as they ship, in the local Lambda with the real extension
//! against a real TLS PostgreSQL, frozen with SIGSTOP between invocations:
//! - 20 invocations all succeed on the one connection the function opened at Init, and the
//!   server sees one server connection for it throughout, the same one;
//! - after the server ended that connection while the environment was frozen, the next
//!   invocation succeeds: its prepared statement runs by name and the settings made at Init are
//!   still in force, on a new server connection;
//! - when the session could not go on (the database refused a new connection) and the
//!   extension ended it, that invocation fails and the next one connects again, in the same
//!   environment;
//! - each README shows its handler as these tests run it.
//!
//! Each function runs from its own `bootstrap` (a Runtime API loop in its own language) with
//! the drivers installed on first use under this build's `target/tmp/drivers` (see
//! `warmpool_tests::prereq`): the venv's interpreter first on `PATH`, `pg` on `NODE_PATH`, and
//! for Java Debian's pgJDBC jar on `CLASSPATH`, beside the example's classes, compiled by each
//! test into a directory of its own under `target/tmp`. pgJDBC has no Unix sockets: the Java
//! function reaches the endpoint on its TCP listener, which `WARMPOOL_PG_TCP_PORT` and
//! `WARMPOOL_PG_PASSWORD` turn on, in the environment the function shares with the extension.

use std::path::{Path, PathBuf};
use std::process::Command;

use local_lambda::Outcome;
use serde_json::{json, Value};
use tempfile::TempDir;
use warmpool_tests::lambda_env::Function;
use warmpool_tests::{prereq, LambdaEnv, PgServer};

/// The endpoint's password for the Java function (not the database's).
const JAVA_ENDPOINT_PASSWORD: &str = "endpoint-password-for-orders-java";

#[derive(Clone, Copy, Debug)]
enum Language {
    Python,
    Node,
    Java,
}

impl Language {
    /// The `application_name` the function sets at Init.
    fn application_name(self) -> &'static str {
        match self {
            Language::Python => "orders-python",
            Language::Node => "orders-node",
            Language::Java => "orders-java",
        }
    }

    /// The function as a deployment would hold it, with its driver where its runtime looks, and
    /// the directory of the classes compiled for it, to be kept until its environment is gone.
    fn function(self) -> (Function, Option<TempDir>) {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        match self {
            Language::Python => {
                let python = prereq::python_drivers(&drivers_dir());
                let bin = python.parent().expect("the venv's bin directory");
                let function = Function::bootstrap(examples.join("python/bootstrap"))
                    .handler("handler.handler")
                    .env("PATH", search_path(bin))
                    // The task root is the source tree: no __pycache__ left in it.
                    .env("PYTHONDONTWRITEBYTECODE", "1")
                    .env("PYTHONUNBUFFERED", "1");
                (function, None)
            }
            Language::Node => {
                let modules = prereq::node_drivers(&drivers_dir());
                let function = Function::bootstrap(examples.join("node/bootstrap"))
                    .handler("index.handler")
                    .env("NODE_PATH", modules.display().to_string());
                (function, None)
            }
            Language::Java => {
                let jar = prereq::pgjdbc();
                let classes = compile_java(&examples.join("java"), &jar);
                let class_path = std::env::join_paths([classes.path(), jar.as_path()])
                    .expect("a class path entry with a colon");
                let function = Function::bootstrap(examples.join("java/bootstrap"))
                    .handler("orders.Handler::handleRequest")
                    .env("CLASSPATH", class_path.to_string_lossy())
                    // Read by the extension, which listens there, and by the handler.
                    .env("WARMPOOL_PG_TCP_PORT", free_port().to_string())
                    .env("WARMPOOL_PG_PASSWORD", JAVA_ENDPOINT_PASSWORD);
                (function, Some(classes))
            }
        }
    }
}

/// The Java example's sources (the handler and the runtime loop its `bootstrap` starts),
/// compiled against `jar` into a new directory under this build's `target/tmp`, removed when
/// the returned guard drops: nothing is written into the source tree.
fn compile_java(example: &Path, jar: &Path) -> TempDir {
    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "java") {
                found.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(&example.join("src"), &mut files);
    sources(&example.join("runtime"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("orders/Handler.java")),
        "no Handler.java among {files:?}"
    );
    let out = tempfile::Builder::new()
        .prefix("java-example-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a directory for the classes");
    // Java 17, the oldest JDK these machines have; the managed runtime (java21) runs it too.
    let compiled = Command::new("javac")
        .args(["--release", "17", "-Xlint:all", "-Werror", "-d"])
        .arg(out.path())
        .arg("-cp")
        .arg(jar)
        .args(&files)
        .output()
        .expect("run javac");
    assert!(
        compiled.status.success(),
        "javac failed:\n{}{}",
        String::from_utf8_lossy(&compiled.stdout),
        String::from_utf8_lossy(&compiled.stderr)
    );
    out
}

/// A port on 127.0.0.1 that nothing listens on now, for the endpoint's TCP listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Where the drivers are installed, shared with `pg_drivers.rs`.
fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("drivers")
}

/// `dir` ahead of this process's `PATH`.
fn search_path(dir: &Path) -> String {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let all = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest));
    std::env::join_paths(all)
        .expect("a PATH entry with a colon")
        .to_string_lossy()
        .into_owned()
}

/// The pool's server connections as the server lists them: pid and `application_name` of every
/// session of the pool's user (the test's own queries run as `postgres`).
fn pool_connections(pg: &PgServer) -> Vec<(i32, String)> {
    pg.superuser_psql(&format!(
        "SELECT pid, application_name FROM pg_stat_activity \
         WHERE usename = '{}' ORDER BY pid",
        pg.user()
    ))
    .lines()
    .map(|l| {
        let (pid, name) = l.split_once('|').expect("pid|application_name");
        (pid.parse().expect("a pid"), name.to_owned())
    })
    .collect()
}

fn pid(backend: &Value) -> i64 {
    backend["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {backend}"))
}

async fn twenty_frozen_invocations_on_one_server_connection(language: Language) {
    let pg = PgServer::start();
    let (function, _classes) = language.function();
    let env = LambdaEnv::classic_with(&pg, &[], function);
    env.call(json!({"action": "setup"})).await;
    let first = env.call(json!({"action": "backend"})).await;
    let server = pid(&first);
    assert_eq!(first["application_name"], language.application_name());
    let mut created = Vec::new();
    for i in 0..20 {
        assert!(
            env.lambda.is_frozen(),
            "the environment is frozen between invocations"
        );
        match i % 4 {
            0 => {
                let item = format!("item-{i}");
                let out = env
                    .call(
                        json!({"action": "create", "customer": "ada", "item": item, "qty": i + 1}),
                    )
                    .await;
                created.push((out["id"].as_i64().expect("an id"), i));
                assert_eq!(out["customer_orders"], created.len(), "{out}");
            }
            1 => {
                let (id, n) = *created.last().expect("an order");
                let out = env.call(json!({"action": "get", "id": id})).await;
                assert_eq!(
                    (&out["customer"], &out["item"], &out["qty"]),
                    (&json!("ada"), &json!(format!("item-{n}")), &json!(n + 1)),
                    "{out}"
                );
            }
            2 => {
                let out = env.call(json!({"action": "count"})).await;
                assert_eq!(out["orders"], created.len(), "{out}");
            }
            _ => {
                let out = env.call(json!({"action": "backend"})).await;
                assert_eq!(pid(&out), server, "another server connection: {out}");
            }
        }
        assert_eq!(
            pool_connections(&pg),
            vec![(server as i32, language.application_name().to_owned())],
            "after invocation {i}, the pool should hold exactly the function's session's \
             connection"
        );
    }
    assert_eq!(env.lambda.init_count(), 1, "the environment was reset");
}

async fn a_connection_ended_while_frozen_is_restored_with_its_settings_and_statement(
    language: Language,
) {
    let pg = PgServer::start();
    let (function, _classes) = language.function();
    let env = LambdaEnv::classic_with(&pg, &[], function);
    env.call(json!({"action": "setup"})).await;
    let id = env
        .call(json!({"action": "create", "customer": "grace", "item": "cable", "qty": 3}))
        .await["id"]
        .as_i64()
        .expect("an id");
    // Prepares the statement on the server connection; later runs only bind it, by name.
    env.call(json!({"action": "get", "id": id})).await;
    let before = env.call(json!({"action": "backend"})).await;
    let prepared = before["prepared"].as_array().expect("prepared");
    assert!(!prepared.is_empty(), "nothing was prepared: {before}");

    // As a server's idle_session_timeout or a failover would end it, while nothing runs.
    assert!(env.lambda.is_frozen());
    pg.terminate_backend(pid(&before));

    let out = env.call(json!({"action": "get", "id": id})).await;
    assert_eq!(
        (&out["customer"], &out["item"], &out["qty"]),
        (&json!("grace"), &json!("cable"), &json!(3)),
        "{out}"
    );
    let after = env.call(json!({"action": "backend"})).await;
    assert_ne!(pid(&after), pid(&before), "the ended connection answered");
    assert_eq!(after["application_name"], language.application_name());
    assert_eq!(after["statement_timeout"], "5s", "the Init SET was lost");
    for name in prepared {
        assert!(
            after["prepared"]
                .as_array()
                .expect("prepared")
                .contains(name),
            "statement {name} is not prepared on the new connection: {after}"
        );
    }
    let restored = env.extension_lines("restored the session on a new one");
    assert!(!restored.is_empty(), "{}", env.output());
    // Logged for the invocation it happened in.
    assert!(
        restored.iter().all(|l| l.contains("\"requestId\"")),
        "{restored:?}"
    );
    assert_eq!(
        pool_connections(&pg),
        vec![(pid(&after) as i32, language.application_name().to_owned())]
    );
    assert_eq!(env.lambda.init_count(), 1, "the environment was reset");
}

/// What the READMEs promise when a session cannot go on: here the connection ended while the
/// environment was frozen and the database took no new one (as in a failover), so the
/// extension ended the session with 08006. That invocation fails; the next one finds the
/// connection closed and opens another, with the Init settings, in the same environment.
async fn a_session_the_extension_ended_is_opened_again_by_the_next_invocation(language: Language) {
    let pg = PgServer::start();
    let (function, _classes) = language.function();
    // A short retry budget, so that the refused connection fails the request soon, but ten
    // times the longest backoff, so that once the database takes connections again the next
    // request gets its attempt.
    let env = LambdaEnv::classic_with(
        &pg,
        &[
            ("WARMPOOL_RETRY_BUDGET_MS", "500"),
            ("WARMPOOL_RETRY_MAX_MS", "50"),
        ],
        function,
    );
    env.call(json!({"action": "setup"})).await;
    let before = env.call(json!({"action": "backend"})).await;

    assert!(env.lambda.is_frozen());
    let role = pg.user();
    pg.superuser_psql(&format!("ALTER ROLE {role} CONNECTION LIMIT 0"));
    pg.terminate_backend(pid(&before));
    let failed = env.invoke(json!({"action": "count"})).await;
    match &failed.outcome {
        Outcome::FunctionError(e) => assert!(
            e.to_string().contains("no new one could be had"),
            "not the extension's error: {e}"
        ),
        other => panic!(
            "the session went on without a server connection: {other:?}\n{}",
            env.output()
        ),
    }

    pg.superuser_psql(&format!("ALTER ROLE {role} CONNECTION LIMIT -1"));
    let after = env.call(json!({"action": "backend"})).await;
    assert_ne!(pid(&after), pid(&before));
    assert_eq!(after["application_name"], language.application_name());
    assert_eq!(after["statement_timeout"], "5s");
    assert_eq!(env.call(json!({"action": "count"})).await["orders"], 0);
    assert_eq!(
        env.lambda.init_count(),
        1,
        "the function was started again instead of reconnecting"
    );
    // Errors went to the log, from the extension and from the function: none shows the
    // endpoint's password (set for the Java function).
    assert!(
        !env.output().contains(JAVA_ENDPOINT_PASSWORD),
        "the endpoint's password was written out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_twenty_frozen_invocations_on_one_server_connection() {
    twenty_frozen_invocations_on_one_server_connection(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_twenty_frozen_invocations_on_one_server_connection() {
    twenty_frozen_invocations_on_one_server_connection(Language::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_twenty_frozen_invocations_on_one_server_connection() {
    twenty_frozen_invocations_on_one_server_connection(Language::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_connection_ended_while_frozen_is_restored_with_its_settings_and_statement() {
    a_connection_ended_while_frozen_is_restored_with_its_settings_and_statement(Language::Python)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_connection_ended_while_frozen_is_restored_with_its_settings_and_statement() {
    a_connection_ended_while_frozen_is_restored_with_its_settings_and_statement(Language::Node)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_connection_ended_while_frozen_is_restored_with_its_settings_and_statement() {
    a_connection_ended_while_frozen_is_restored_with_its_settings_and_statement(Language::Java)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_session_the_extension_ended_is_opened_again_by_the_next_invocation() {
    a_session_the_extension_ended_is_opened_again_by_the_next_invocation(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_session_the_extension_ended_is_opened_again_by_the_next_invocation() {
    a_session_the_extension_ended_is_opened_again_by_the_next_invocation(Language::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_session_the_extension_ended_is_opened_again_by_the_next_invocation() {
    a_session_the_extension_ended_is_opened_again_by_the_next_invocation(Language::Java).await;
}

/// The READMEs show the handlers these tests run, whole, not a copy that drifted from them.
#[test]
fn the_readmes_show_the_handlers_as_tested() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (readme, fence, handler) in [
        ("python/README.md", "```python\n", "python/handler.py"),
        ("node/README.md", "```js\n", "node/index.js"),
        (
            "java/README.md",
            "```java\n",
            "java/src/orders/Handler.java",
        ),
    ] {
        let read = |name: &str| {
            std::fs::read_to_string(examples.join(name))
                .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
        };
        let code = read(handler);
        assert!(
            read(readme).contains(&format!("{fence}{code}```")),
            "examples/{readme} does not show examples/{handler} as it is"
        );
    }
}
