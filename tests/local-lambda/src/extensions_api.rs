//! The Extensions API, as an extension sees it.
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html>
//!
//! Refusals follow AWS's emulator (aws-lambda-runtime-interface-emulator, `rapi/handler`):
//! HTTP 403 with `{"errorMessage","errorType"}` and its error type names.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::environment::{ExtensionEvent, ExtensionSlot, Generation, Phase, Registration, Shared};
use crate::events::EventKind;
use crate::http::{self, Resp};
use crate::runtime_api::text;

const ID_HEADER: &str = "Lambda-Extension-Identifier";

struct Refusal {
    error_type: &'static str,
    message: String,
}

fn refuse(error_type: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        error_type,
        message: message.into(),
    }
}

/// `POST /extension/register` with `Lambda-Extension-Name` and `{"events": [...]}`.
///
/// The name decides what registers: the file name of an executable in the extensions
/// directory registers that external extension; any other name registers an *internal*
/// extension (one running inside the runtime process), which Lambda does not allow to
/// subscribe to SHUTDOWN. So an external extension that registers under a wrong name (the
/// usual INVOKE+SHUTDOWN) is refused, as in Lambda, and Init then fails when it exits.
pub(crate) async fn register(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let name = http::header(&req, "Lambda-Extension-Name").unwrap_or_default();
    let wants_account = http::header(&req, "Lambda-Extension-Accept-Feature")
        .is_some_and(|f| f.split(',').any(|f| f.trim() == "accountId"));
    let body = http::body(req).await;
    let Some(gen) = shared.current() else {
        return http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Extension.NoEnvironment",
            "no execution environment is running",
        );
    };
    let events = match parse_events(&body) {
        Ok(e) => e,
        Err(r) => return refused(&shared, &gen, &name, r),
    };
    let outcome = gen.update(|s| -> Result<(String, bool), Refusal> {
        if name.is_empty() {
            return Err(refuse(
                "Extension.InvalidExtensionName",
                "Empty extension name",
            ));
        }
        if s.phase != Phase::Init {
            return Err(refuse(
                "Extension.RegistrationClosed",
                "Extension registration closed already",
            ));
        }
        let has = |e: &str| events.iter().any(|x| x == e);
        let slot = s.extensions.iter().position(|e| e.name == name);
        let internal = slot.is_none_or(|i| !s.extensions[i].external);
        if let Some(i) = slot {
            if s.extensions[i].reg.is_some() {
                return Err(refuse(
                    "Extension.InvalidExtensionState",
                    format!("Extension with the name {name} already registered"),
                ));
            }
        }
        if internal && has("SHUTDOWN") {
            let known: Vec<&str> = s.external().map(|e| e.name.as_str()).collect();
            return Err(refuse(
                "Extension.InvalidEventType",
                format!(
                    "{name} is not an executable of the extensions directory ({known:?}), so it \
                     registers as an internal extension, and internal extensions cannot \
                     subscribe to SHUTDOWN; an external extension must register under its \
                     executable's file name"
                ),
            ));
        }
        // LMI accepts only SHUTDOWN from external extensions and no events from internal ones
        // (AWS emulator, lambda-managed-instances/core: ValidateExternalAgentEvent).
        if gen.lmi && has("INVOKE") {
            return Err(refuse(
                "Extension.InvalidEventType",
                "INVOKE: Lambda Managed Instances deliver no INVOKE events to extensions; \
                 register for SHUTDOWN only",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = uuid::Uuid::new_v4().to_string();
        let reg = Registration {
            id: id.clone(),
            invoke: has("INVOKE"),
            shutdown: has("SHUTDOWN"),
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            waiting: false,
            queued: 0,
            shutdown_delivered_at: None,
        };
        match slot {
            Some(i) => s.extensions[i].reg = Some(reg),
            None => s.extensions.push(ExtensionSlot {
                name: name.clone(),
                external: false,
                process: None,
                reg: Some(reg),
            }),
        }
        Ok((id, internal))
    });
    let (id, internal) = match outcome {
        Ok(v) => v,
        Err(r) => return refused(&shared, &gen, &name, r),
    };
    shared.events.push(
        gen.id,
        EventKind::ExtensionRegistered {
            name,
            events,
            internal,
        },
    );
    let cfg = &shared.config;
    let mut body = json!({
        "functionName": cfg.function_name,
        "functionVersion": cfg.function_version,
        "handler": cfg.handler,
    });
    if wants_account {
        body["accountId"] = json!(cfg.account_id);
    }
    let mut r = http::json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert(ID_HEADER, v);
    }
    r
}

fn parse_events(body: &[u8]) -> Result<Vec<String>, Refusal> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| refuse("InvalidRequestFormat", format!("register body: {e}")))?;
    let list = v.get("events").and_then(Value::as_array).ok_or_else(|| {
        refuse(
            "InvalidRequestFormat",
            "register body has no \"events\" array",
        )
    })?;
    list.iter()
        .map(|e| match e.as_str() {
            Some(s @ ("INVOKE" | "SHUTDOWN")) => Ok(s.to_string()),
            _ => Err(refuse(
                "Extension.InvalidEventType",
                format!("{e}: unknown event type"),
            )),
        })
        .collect()
}

fn refused(shared: &Shared, gen: &Generation, name: &str, r: Refusal) -> Resp {
    gen.update(|s| {
        s.refusals
            .push(format!("{name:?}: {}: {}", r.error_type, r.message))
    });
    shared.events.push(
        gen.id,
        EventKind::RegistrationRefused {
            name: name.to_string(),
            reason: format!("{}: {}", r.error_type, r.message),
        },
    );
    http::error(StatusCode::FORBIDDEN, r.error_type, r.message)
}

/// `GET /extension/event/next`: marks the extension done with its previous event and long-polls
/// for the next one.
pub(crate) async fn next(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let Some((gen, id, name)) = lookup(&shared, &req) else {
        return unknown_id();
    };
    let Some(rx) = gen.update(|s| {
        s.find_by_id(&id).map(|(_, r)| {
            r.waiting = true;
            r.rx.clone()
        })
    }) else {
        return unknown_id();
    };
    let waiting = WaitingGuard { gen: &gen, id: &id };
    let pulled = tokio::select! {
        ev = async { rx.lock().await.recv().await } => ev,
        _ = gen.closed.cancelled() => None,
    };
    let Some(ev) = pulled else {
        return http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Extension.EnvironmentClosed",
            "the execution environment is gone",
        );
    };
    let is_shutdown = matches!(ev, ExtensionEvent::Shutdown { .. });
    gen.update(|s| {
        if let Some((_, r)) = s.find_by_id(&id) {
            r.queued -= 1;
            if is_shutdown {
                r.shutdown_delivered_at = Some(Instant::now());
            }
        }
    });
    drop(waiting);
    let (kind, body) = match ev {
        ExtensionEvent::Invoke { request_id, body } => (
            EventKind::InvokeDelivered {
                request_id,
                to: name,
            },
            body,
        ),
        ExtensionEvent::Shutdown { reason, body } => (
            EventKind::ShutdownDelivered {
                extension: name,
                reason,
            },
            body,
        ),
    };
    shared.events.push(gen.id, kind);
    let mut r = Response::new(Full::new(body.to_string().into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        r.headers_mut()
            .insert("Lambda-Extension-Event-Identifier", v);
    }
    r
}

struct WaitingGuard<'a> {
    gen: &'a Generation,
    id: &'a str,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.gen.update(|s| {
            if let Some((_, r)) = s.find_by_id(self.id) {
                r.waiting = false;
            }
        });
    }
}

/// `POST /extension/init/error` and `/extension/exit/error`, with the
/// `Lambda-Extension-Function-Error-Type` header. Either fails the environment: an init error
/// fails Init, an exit error precedes the extension's exit.
pub(crate) async fn report_error(shared: Arc<Shared>, req: Request<Incoming>, init: bool) -> Resp {
    let Some((gen, _, name)) = lookup(&shared, &req) else {
        return unknown_id();
    };
    let error_type = http::header(&req, "Lambda-Extension-Function-Error-Type");
    let body = http::body(req).await;
    if init && gen.read(|s| s.phase) != Phase::Init {
        return http::error(
            StatusCode::FORBIDDEN,
            "Extension.InvalidExtensionState",
            "init/error outside the Init phase",
        );
    }
    gen.fail(format!(
        "extension {name} reported an {} error ({}): {}",
        if init { "init" } else { "exit" },
        error_type.as_deref().unwrap_or("no error type"),
        text(&body)
    ));
    http::accepted()
}

fn lookup(shared: &Shared, req: &Request<Incoming>) -> Option<(Arc<Generation>, String, String)> {
    let id = http::header(req, ID_HEADER)?;
    let gen = shared.current()?;
    let name = gen.read(|s| s.name_of(&id))?;
    Some((gen, id, name))
}

fn unknown_id() -> Resp {
    http::error(
        StatusCode::FORBIDDEN,
        "Extension.UnknownExtensionIdentifier",
        "missing or unknown Lambda-Extension-Identifier",
    )
}
