//! Helpers shared by the integration tests: the fixture binaries of this package, installed in a
//! temporary extensions directory under the names a test needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use local_lambda::{proc_state, LocalLambda, LocalLambdaBuilder};
use serde_json::Value;
use tempfile::TempDir;

pub const FUNCTION: &str = env!("CARGO_BIN_EXE_local-lambda-fixture-function");
pub const EXTENSION: &str = env!("CARGO_BIN_EXE_local-lambda-fixture-extension");

/// Generous bound for waits on output and events; they normally resolve in milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Fixture {
    pub dir: TempDir,
    pub extensions: PathBuf,
    pub events: PathBuf,
}

impl Fixture {
    /// Installs the fixture extension once per name. Lambda registers an extension under its
    /// executable's file name, so each copy is a symlink with that name.
    pub fn new(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extensions = dir.path().join("extensions");
        let events = dir.path().join("events");
        std::fs::create_dir(&extensions).unwrap();
        std::fs::create_dir(&events).unwrap();
        for name in names {
            std::os::unix::fs::symlink(EXTENSION, extensions.join(name)).unwrap();
        }
        Self {
            dir,
            extensions,
            events,
        }
    }

    pub fn builder(&self) -> LocalLambdaBuilder {
        LocalLambda::builder()
            .extensions_dir(&self.extensions)
            .bootstrap(FUNCTION)
            .env("FIXTURE_EVENTS_DIR", self.events.display().to_string())
    }

    /// Every record the extension `name` wrote (STARTED, INVOKE, SHUTDOWN), in order.
    pub fn records(&self, name: &str) -> Vec<Value> {
        let path = self.events.join(format!("{name}.jsonl"));
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The lifecycle events the extension received (without its STARTED records).
    pub fn received(&self, name: &str) -> Vec<Value> {
        self.records(name)
            .into_iter()
            .filter(|r| r["eventType"] != "STARTED")
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Asserts that none of `pids` exists any more (exited and reaped).
pub fn assert_gone(pids: &[u32]) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there (state {:?})",
            proc_state(*pid)
        );
    }
}

pub fn ok_value(inv: &local_lambda::Invocation) -> &Value {
    match &inv.outcome {
        local_lambda::Outcome::Ok(v) => v,
        other => panic!("expected a response, got {other}"),
    }
}
