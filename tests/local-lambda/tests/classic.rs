//! Classic Lambda: Init, the Invoke round trip, the freeze between invocations.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ok_value, Fixture, WAIT};
use local_lambda::{proc_state, EventKind, Outcome};
use serde_json::json;

#[tokio::test]
async fn round_trip_extension_sees_the_same_request_id() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().function_name("echo").build().unwrap();

    let inv = lambda.invoke(json!({"hello": "world"})).await;

    assert_eq!(ok_value(&inv), &json!({"hello": "world"}));
    assert!(
        inv.init_duration.is_some(),
        "the first invocation is a cold start"
    );
    let got = fx.received("recorder");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["eventType"], "INVOKE");
    assert_eq!(got[0]["requestId"], inv.request_id.as_str());
    assert_eq!(got[0]["tracing"]["type"], "X-Amzn-Trace-Id");
    assert!(got[0]["tracing"]["value"]
        .as_str()
        .unwrap()
        .starts_with("Root=1-"));
    assert_eq!(
        got[0]["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:123456789012:function:echo"
    );
    let line = lambda
        .wait_for_output("recorder", &format!("INVOKE {}", inv.request_id), WAIT)
        .await
        .unwrap();
    assert_eq!(line.process, "extension:recorder");
    lambda
        .wait_for_output("runtime", &format!("handling {}", inv.request_id), WAIT)
        .await
        .unwrap();
}

#[tokio::test]
async fn processes_get_lambdas_environment() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx
        .builder()
        .function_name("envcheck")
        .memory_mb(256)
        .region("eu-west-1")
        .env("MY_SETTING", "42")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    let inv = lambda.invoke(json!({"env": true})).await;
    let v = ok_value(&inv);
    let env = &v["env"];
    assert_eq!(
        env["AWS_LAMBDA_RUNTIME_API"],
        lambda.runtime_api().to_string().as_str()
    );
    assert!(lambda.runtime_api().ip().is_loopback());
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "envcheck");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/envcheck");
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"]
        .as_str()
        .unwrap()
        .contains("[$LATEST]"));
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert_eq!(env["_HANDLER"], "bootstrap");
    assert!(env["LAMBDA_TASK_ROOT"].is_string());
    assert_eq!(env["AWS_LAMBDA_INITIALIZATION_TYPE"], "on-demand");
    assert!(env.get("AWS_LAMBDA_MAX_CONCURRENCY").is_none());
    assert_eq!(env["MY_SETTING"], "42");
    // The invocation's headers reached lambda_runtime's Context.
    assert_eq!(v["requestId"], inv.request_id.as_str());
    assert!(v["traceId"].as_str().unwrap().starts_with("Root=1-"));
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = v["deadlineMs"].as_u64().unwrap();
    assert!(
        deadline > now_ms && deadline <= now_ms + 5_000,
        "deadline {deadline}, now {now_ms}"
    );

    // Extensions see the function's environment minus a few variables.
    let started = &fx.records("recorder")[0];
    assert_eq!(started["eventType"], "STARTED");
    let ext_env = &started["env"];
    assert_eq!(ext_env["AWS_LAMBDA_FUNCTION_NAME"], "envcheck");
    assert_eq!(ext_env["MY_SETTING"], "42");
    for hidden in ["_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_LOG_GROUP_NAME"] {
        assert!(ext_env.get(hidden).is_none(), "extension saw {hidden}");
    }
}

#[tokio::test]
async fn processes_are_stopped_between_invocations() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().build().unwrap();

    let first = lambda.invoke(json!({"n": 1})).await;
    assert!(first.outcome.is_ok());
    assert!(lambda.is_frozen());
    let pids = lambda.pids();
    assert_eq!(pids.len(), 2, "runtime and one extension");
    for pid in &pids {
        assert_eq!(proc_state(*pid), Some('T'), "pid {pid} is not stopped");
    }

    let second = lambda.invoke(json!({"n": 2})).await;
    assert_eq!(ok_value(&second), &json!({"n": 2}));
    assert!(second.init_duration.is_none(), "a warm invocation");
    assert_eq!(lambda.init_count(), 1);
    assert_eq!(lambda.pids(), pids, "the same processes served both");
    for pid in &pids {
        assert_eq!(proc_state(*pid), Some('T'));
    }

    // Between the two: frozen, then thawed before the second INVOKE went out.
    let kinds: Vec<EventKind> = lambda.events().into_iter().map(|e| e.kind).collect();
    let pos = |want: &dyn Fn(&EventKind) -> bool| kinds.iter().position(want).unwrap();
    let frozen = pos(&|k| matches!(k, EventKind::Frozen));
    let thawed = pos(&|k| matches!(k, EventKind::Thawed));
    let second_invoke = pos(
        &|k| matches!(k, EventKind::InvokeDelivered { request_id, .. } if *request_id == second.request_id),
    );
    assert!(frozen < thawed && thawed < second_invoke, "{kinds:?}");
}

#[tokio::test]
async fn invoke_phase_waits_for_the_extensions_post_invoke_work() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx
        .builder()
        .env("FIXTURE_POST_INVOKE_MS", "300")
        .build()
        .unwrap();

    let inv = lambda.invoke(json!({})).await;

    assert!(inv.outcome.is_ok());
    assert!(
        inv.duration < Duration::from_millis(300),
        "the answer does not wait: {inv:?}"
    );
    assert!(inv.phase_duration >= Duration::from_millis(300), "{inv:?}");
    lambda
        .wait_for_output("recorder", "post-invoke work done", WAIT)
        .await
        .unwrap();
    assert!(lambda.is_frozen());
}

#[tokio::test]
async fn function_error_is_reported_and_keeps_the_environment() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().build().unwrap();

    let inv = lambda.invoke(json!({"fail": "boom"})).await;

    let Outcome::FunctionError(err) = &inv.outcome else {
        panic!("expected a function error, got {}", inv.outcome);
    };
    assert_eq!(err["errorMessage"], "boom");
    assert!(inv.reset.is_none());
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    assert_eq!(lambda.init_count(), 1);
}

#[tokio::test]
async fn registering_under_another_name_is_refused() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx
        .builder()
        .env("FIXTURE_EXTENSION_NAME", "not-the-file-name")
        .build()
        .unwrap();

    let inv = lambda.invoke(json!({})).await;

    let Outcome::InitError(why) = &inv.outcome else {
        panic!("expected an init error, got {}", inv.outcome);
    };
    assert!(why.contains("not-the-file-name"), "{why}");
    assert!(why.contains("Extension.InvalidEventType"), "{why}");
    lambda
        .wait_for_output("recorder", "403", WAIT)
        .await
        .unwrap();
    assert!(lambda.events().iter().any(|e| matches!(
        &e.kind,
        EventKind::RegistrationRefused { name, .. } if name == "not-the-file-name"
    )));
}

#[tokio::test]
async fn init_timeout_fails_the_invocation_and_the_next_one_inits_afresh() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx
        .builder()
        .env(
            "FIXTURE_INIT_SLEEP_ONCE",
            fx.path("hung-once").display().to_string(),
        )
        .init_timeout(Duration::from_millis(800))
        .build()
        .unwrap();

    let first = lambda.invoke(json!({})).await;
    let Outcome::InitError(why) = &first.outcome else {
        panic!("expected an init error, got {}", first.outcome);
    };
    assert!(
        why.contains("timed out") && why.contains("the runtime"),
        "{why}"
    );
    let reset = first.reset.expect("a failed Init resets the environment");
    assert_eq!(reset.reason, local_lambda::ShutdownReason::Timeout);
    assert!(lambda.pids().is_empty());

    let second = lambda.invoke(json!({"again": true})).await;
    assert_eq!(ok_value(&second), &json!({"again": true}));
    assert_eq!(lambda.init_count(), 2);
    let got = fx.received("recorder");
    assert_eq!(got[0]["eventType"], "SHUTDOWN");
    assert_eq!(got[0]["shutdownReason"], "timeout");
    assert_eq!(got[1]["requestId"], second.request_id.as_str());
}
