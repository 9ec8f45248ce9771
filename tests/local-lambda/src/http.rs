//! The HTTP/1.1 server behind `AWS_LAMBDA_RUNTIME_API`: one listener on 127.0.0.1 with an
//! ephemeral port serving both the Runtime API and the Extensions API, as Lambda does.
//!
//! Plain hyper rather than a framework: eight routes, and hyper is already in the dependency
//! graph through AWS's own crates.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::environment::Shared;
use crate::{extensions_api, runtime_api};

pub(crate) type Resp = Response<Full<Bytes>>;

/// Accepts until `stop` is cancelled, then drops the listener (freeing the port).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let broken = shared.api_broken.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(shared, req).await) }
            });
            // Half-close stays off (hyper's default): a client that dies closes its side, and
            // hyper then drops the pending long poll instead of holding it forever.
            let serving = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // A broken API drops the connection, answered or not.
            tokio::select! {
                _ = serving => {}
                _ = broken.cancelled() => {}
            }
        });
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    const RUNTIME: &str = "/2018-06-01/runtime/";
    const EXTENSION: &str = "/2020-01-01/extension/";
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix(RUNTIME) {
        match (method, rest) {
            (Method::GET, "invocation/next") => runtime_api::next(shared).await,
            (Method::POST, "init/error") => runtime_api::init_error(shared, req).await,
            (Method::POST, rest) if rest.starts_with("invocation/") => {
                let tail = &rest["invocation/".len()..];
                match tail.rsplit_once('/') {
                    Some((id, "response")) => runtime_api::response(shared, id, req).await,
                    Some((id, "error")) => runtime_api::error(shared, id, req).await,
                    _ => not_found(&path),
                }
            }
            _ => not_found(&path),
        }
    } else if let Some(rest) = path.strip_prefix(EXTENSION) {
        match (method, rest) {
            (Method::POST, "register") => extensions_api::register(shared, req).await,
            (Method::GET, "event/next") => extensions_api::next(shared, req).await,
            (Method::POST, "init/error") => extensions_api::report_error(shared, req, true).await,
            (Method::POST, "exit/error") => extensions_api::report_error(shared, req, false).await,
            _ => not_found(&path),
        }
    } else {
        // Telemetry and Logs APIs are not emulated.
        not_found(&path)
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The error body AWS's emulator renders: `{"errorMessage", "errorType"}`.
pub(crate) fn error(status: StatusCode, error_type: &str, message: impl Into<String>) -> Resp {
    json_response(
        status,
        &json!({ "errorMessage": message.into(), "errorType": error_type }),
    )
}

pub(crate) fn accepted() -> Resp {
    json_response(StatusCode::ACCEPTED, &json!({ "status": "OK" }))
}

fn not_found(path: &str) -> Resp {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{path} is not served by local-lambda"),
    )
}

pub(crate) async fn body(req: Request<Incoming>) -> Bytes {
    match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

pub(crate) fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
