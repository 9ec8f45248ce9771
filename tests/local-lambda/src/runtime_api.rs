//! The Runtime API, as the function's runtime sees it.
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use crate::environment::{Generation, Phase, RuntimeReply, Shared};
use crate::events::EventKind;
use crate::http::{self, Resp};

/// `GET /runtime/invocation/next`: a long poll that answers with the next invocation. Several
/// may be open at once (LMI runtimes run one poll per worker); they share one queue.
pub(crate) async fn next(shared: Arc<Shared>) -> Resp {
    let Some(gen) = shared.current() else {
        return no_environment();
    };
    gen.update(|s| {
        s.runtime_next_calls += 1;
        s.runtime_waiting += 1;
    });
    // Undoes the `waiting` count however the poll ends, including hyper dropping it when the
    // runtime's connection closes.
    let waiting = WaitingGuard(&gen);
    let pulled = tokio::select! {
        inv = async { gen.invokes_rx.lock().await.recv().await } => inv,
        _ = gen.closed.cancelled() => None,
    };
    drop(waiting);
    let Some(inv) = pulled else {
        return http::error(
            StatusCode::GONE,
            "Runtime.EnvironmentClosed",
            "the execution environment is shutting down",
        );
    };
    shared.events.push(
        gen.id,
        EventKind::InvokeDelivered {
            request_id: inv.request_id.clone(),
            to: "runtime".into(),
        },
    );
    let mut r = Response::new(Full::new(inv.payload));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set("Lambda-Runtime-Aws-Request-Id", &inv.request_id);
    set("Lambda-Runtime-Deadline-Ms", &inv.deadline_ms.to_string());
    set(
        "Lambda-Runtime-Invoked-Function-Arn",
        &shared.config.function_arn(),
    );
    set("Lambda-Runtime-Trace-Id", &inv.trace_id);
    r
}

struct WaitingGuard<'a>(&'a Generation);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.runtime_waiting -= 1);
    }
}

/// `POST /runtime/invocation/{id}/response`
pub(crate) async fn response(shared: Arc<Shared>, id: &str, req: Request<Incoming>) -> Resp {
    let body = http::body(req).await;
    reply(&shared, id, RuntimeReply::Response(body))
}

/// `POST /runtime/invocation/{id}/error`, with the `Lambda-Runtime-Function-Error-Type` header.
pub(crate) async fn error(shared: Arc<Shared>, id: &str, req: Request<Incoming>) -> Resp {
    let error_type = http::header(&req, "Lambda-Runtime-Function-Error-Type");
    let body = http::body(req).await;
    reply(&shared, id, RuntimeReply::Error { error_type, body })
}

fn reply(shared: &Shared, id: &str, reply: RuntimeReply) -> Resp {
    let Some(gen) = shared.current() else {
        return no_environment();
    };
    let is_error = matches!(reply, RuntimeReply::Error { .. });
    let accepted = gen.update(|s| match s.inflight.get_mut(id) {
        // The caller stopped waiting (LMI timeout): the late answer frees the slot.
        Some(i) if i.permit.is_some() => {
            s.inflight.remove(id);
            true
        }
        Some(i) if i.reply.is_none() => {
            i.reply = Some(reply);
            true
        }
        _ => false,
    });
    if !accepted {
        return http::error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            format!("no open invocation {id}"),
        );
    }
    shared.events.push(
        gen.id,
        EventKind::ResponseReceived {
            request_id: id.to_string(),
            error: is_error,
        },
    );
    http::accepted()
}

/// `POST /runtime/init/error`: the runtime could not initialise. Init fails at once.
pub(crate) async fn init_error(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let error_type = http::header(&req, "Lambda-Runtime-Function-Error-Type");
    let body = http::body(req).await;
    let Some(gen) = shared.current() else {
        return no_environment();
    };
    if gen.read(|s| s.phase) != Phase::Init {
        return http::error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "init/error outside the Init phase",
        );
    }
    gen.fail(format!(
        "runtime reported an init error ({}): {}",
        error_type.as_deref().unwrap_or("no error type"),
        text(&body)
    ));
    http::accepted()
}

pub(crate) fn text(body: &Bytes) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn no_environment() -> Resp {
    http::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Runtime.NoEnvironment",
        "no execution environment is running",
    )
}
