//! The Invoke phase. It ends when the runtime has answered and the runtime and every extension
//! registered for INVOKE have called `next` again; the function timeout covers all of it,
//! extensions' post-invoke work included.
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-invoke>

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::config::epoch_ms;
use crate::environment::{
    ExtensionEvent, GenState, Generation, Inflight, PendingInvoke, RuntimeReply, Wait,
};
use crate::events::ShutdownReason;
use crate::lifecycle::{freeze, Lifecycle};
use crate::report::{Invocation, Outcome};

impl Lifecycle {
    pub async fn invoke(&self, payload: Value) -> Invocation {
        let request_id = uuid::Uuid::new_v4().to_string();
        let failed = |outcome, init_duration, reset| Invocation {
            request_id: request_id.clone(),
            outcome,
            duration: Duration::ZERO,
            phase_duration: Duration::ZERO,
            init_duration,
            reset,
        };
        // Never closed, so acquiring cannot fail.
        let permit = self.slots.clone().acquire_owned().await.ok();
        let guard = self.lock.lock().await;
        if self.is_closed() {
            let why = "the environment has been shut down".to_string();
            return failed(Outcome::Crash(why), None, None);
        }
        let (gen, init_duration) = match self.ensure_ready().await {
            Ok(v) => v,
            Err((message, reset, took)) => {
                return failed(Outcome::InitError(message), Some(took), reset)
            }
        };
        freeze::thaw(&self.shared, &gen);
        drop(guard);

        let cfg = &self.shared.config;
        let start = tokio::time::Instant::now();
        let deadline = start + cfg.timeout;
        let deadline_ms = epoch_ms(SystemTime::now() + cfg.timeout);
        let trace_id = trace_id();
        let invoke_event = json!({
            "eventType": "INVOKE",
            "deadlineMs": if cfg.zero_deadlines { 0 } else { deadline_ms },
            "requestId": request_id,
            "invokedFunctionArn": cfg.function_arn(),
            "tracing": { "type": "X-Amzn-Trace-Id", "value": trace_id },
        });
        gen.update(|s| {
            s.inflight.insert(request_id.clone(), Inflight::default());
            for (_, r) in s.registrations_mut().filter(|(_, r)| r.invoke) {
                r.push(ExtensionEvent::Invoke {
                    request_id: request_id.clone(),
                    body: invoke_event.clone(),
                });
            }
        });
        gen.queue_invoke(PendingInvoke {
            request_id: request_id.clone(),
            payload: payload.to_string().into(),
            deadline_ms,
            trace_id,
        });

        // 1. The runtime's answer.
        let waited = gen
            .wait_until(Some(deadline), |s| has_reply(s, &request_id))
            .await;
        let mut permit = permit;
        let reply = gen.update(|s| {
            let mut entry = s.inflight.remove(&request_id)?;
            if let Some(r) = entry.reply.take() {
                return Some(r);
            }
            if gen.lmi && matches!(waited, Wait::Deadline) {
                entry.permit = permit.take();
                s.inflight.insert(request_id.clone(), entry);
            }
            None
        });
        let duration = start.elapsed();
        let done = |outcome, phase_duration, reset| Invocation {
            request_id: request_id.clone(),
            outcome,
            duration,
            phase_duration,
            init_duration,
            reset,
        };

        let Some(reply) = reply else {
            return match waited {
                // LMI does not enforce the timeout: the caller gets a timeout error, the code
                // keeps running and its late answer is dropped.
                // <https://docs.aws.amazon.com/lambda/latest/dg/lambda-managed-instances-execution-environment.html>
                Wait::Deadline if gen.lmi => done(Outcome::Timeout, duration, None),
                Wait::Deadline => {
                    let reset = self.reset(&gen, ShutdownReason::Timeout).await;
                    done(Outcome::Timeout, duration, reset)
                }
                Wait::Failed(why) => {
                    let reset = self.reset(&gen, ShutdownReason::Failure).await;
                    done(Outcome::Crash(why), duration, reset)
                }
                Wait::Met => done(
                    Outcome::Crash("the runtime's answer was lost".into()),
                    duration,
                    None,
                ),
            };
        };
        let outcome = outcome_of(reply);
        if gen.lmi {
            return done(outcome, duration, None);
        }

        // 2. The rest of the Invoke phase. The caller already has its answer; what goes wrong
        // now only resets the environment.
        let phase_over = gen.wait_until(Some(deadline), phase_complete).await;
        let phase_duration = start.elapsed();
        match phase_over {
            Wait::Met => {
                self.freeze_if_current(&gen).await;
                done(outcome, phase_duration, None)
            }
            Wait::Deadline => {
                let reset = self.reset(&gen, ShutdownReason::Timeout).await;
                done(outcome, phase_duration, reset)
            }
            Wait::Failed(_) => {
                let reset = self.reset(&gen, ShutdownReason::Failure).await;
                done(outcome, phase_duration, reset)
            }
        }
    }

    async fn freeze_if_current(&self, gen: &Arc<Generation>) {
        let _guard = self.lock.lock().await;
        let healthy = gen.read(|s| s.failure.is_none());
        if !self.is_closed() && healthy && self.is_current(gen) {
            freeze::freeze(&self.shared, gen).await;
        }
    }
}

fn has_reply(s: &GenState, request_id: &str) -> bool {
    s.inflight
        .get(request_id)
        .is_some_and(|i| i.reply.is_some())
}

fn phase_complete(s: &GenState) -> bool {
    s.runtime_waiting >= 1 && s.registrations().filter(|r| r.invoke).all(|r| r.idle())
}

fn outcome_of(reply: RuntimeReply) -> Outcome {
    let parse = |b: &[u8]| {
        serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
    };
    match reply {
        RuntimeReply::Response(b) => Outcome::Ok(parse(&b)),
        RuntimeReply::Error { error_type, body } => {
            let mut v = parse(&body);
            if let (Some(t), Some(obj)) = (error_type, v.as_object_mut()) {
                obj.entry("errorType").or_insert(Value::String(t));
            }
            Outcome::FunctionError(v)
        }
    }
}

/// An X-Ray trace header of the usual shape:
/// `Root=1-<8 hex epoch seconds>-<24 hex>;Parent=<16 hex>;Sampled=0`.
fn trace_id() -> String {
    let secs = epoch_ms(SystemTime::now()) / 1000;
    let root = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{secs:08x}-{};Parent={};Sampled=0",
        &root[..24],
        &parent[..16]
    )
}
