//! `local-lambda`: run a function and an extension layer locally, the way Lambda would, and
//! print what happened.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use local_lambda::{EventKind, Invocation, LocalLambda, Outcome};
use serde_json::Value;

const USAGE: &str = "\
usage: local-lambda --bootstrap FILE [--extensions DIR] [--lmi N] [--invoke JSON|@FILE]...
                    [--env K=V]... [--timeout-ms N] [--init-timeout-ms N]
                    [--function-name NAME] [--memory-mb N] [--quiet] [--events]

Starts every executable in DIR as an external extension and FILE as the function's runtime,
then runs the invocations (in order; all at once with --lmi) and shuts the environment down.
Between invocations the environment is frozen (SIGSTOP), as in Lambda.

  --lmi N          Lambda Managed Instances: AWS_LAMBDA_MAX_CONCURRENCY=N, no freeze,
                   extensions may register for SHUTDOWN only
  --invoke JSON    a payload (default: one invocation with {}); @FILE reads it from a file
  --quiet          do not echo the processes' output
  --events         print the lifecycle event log at the end";

struct Args {
    lambda: local_lambda::LocalLambdaBuilder,
    invokes: Vec<Value>,
    lmi: bool,
    events: bool,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut b = LocalLambda::builder();
    let (mut invokes, mut lmi, mut events, mut quiet, mut has_bootstrap) =
        (Vec::new(), false, false, false, false);
    while let Some(flag) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or(format!("{name} needs a value"));
        let number = |s: String, name: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {s}"))
        };
        match flag.as_str() {
            "--bootstrap" => {
                b = b.bootstrap(value("--bootstrap")?);
                has_bootstrap = true;
            }
            "--extensions" => b = b.extensions_dir(value("--extensions")?),
            "--lmi" => {
                let n = number(value("--lmi")?, "--lmi")?;
                b = b.concurrency(n as u32);
                lmi = n > 1;
            }
            "--invoke" => {
                let raw = value("--invoke")?;
                let text = match raw.strip_prefix('@') {
                    Some(path) => {
                        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
                    }
                    None => raw,
                };
                invokes.push(
                    serde_json::from_str(&text).map_err(|e| format!("--invoke: not JSON: {e}"))?,
                );
            }
            "--env" => {
                let kv = value("--env")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("--env {kv}: expected K=V"))?;
                b = b.env(k, v);
            }
            "--timeout-ms" => b = b.timeout(Duration::from_millis(number(value(&flag)?, &flag)?)),
            "--init-timeout-ms" => {
                b = b.init_timeout(Duration::from_millis(number(value(&flag)?, &flag)?))
            }
            "--function-name" => b = b.function_name(value(&flag)?),
            "--memory-mb" => b = b.memory_mb(number(value(&flag)?, &flag)? as u32),
            "--quiet" => quiet = true,
            "--events" => events = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !has_bootstrap {
        return Err("--bootstrap is required".into());
    }
    if invokes.is_empty() {
        invokes.push(Value::Object(Default::default()));
    }
    Ok(Args {
        lambda: b.echo_output(!quiet),
        invokes,
        lmi,
        events,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("local-lambda: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let lambda = match args.lambda.build() {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("local-lambda: {e}");
            return ExitCode::from(2);
        }
    };
    println!("Runtime API on {}", lambda.runtime_api());

    let mut all_ok = true;
    let payloads: Vec<(usize, Value)> = args.invokes.into_iter().enumerate().collect();
    if args.lmi {
        // LMI: everything in flight at once, as concurrent callers would be.
        let mut set = tokio::task::JoinSet::new();
        for (i, p) in payloads {
            let l = lambda.clone();
            set.spawn(async move { (i, p.clone(), l.invoke(p).await) });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            results.extend(r.ok());
        }
        results.sort_by_key(|(i, _, _)| *i);
        for (i, p, inv) in results {
            all_ok &= print_invocation(i + 1, &p, &inv, &lambda);
        }
    } else {
        for (i, p) in payloads {
            let inv = lambda.invoke(p.clone()).await;
            all_ok &= print_invocation(i + 1, &p, &inv, &lambda);
        }
    }

    let report = lambda.shutdown().await;
    println!("\n{report}");
    if args.events {
        println!("\nevents:");
        for e in lambda.events() {
            println!(
                "  {:>9.3} ms  #{}  {}",
                e.at.as_secs_f64() * 1e3,
                e.generation,
                describe(&e.kind)
            );
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_invocation(n: usize, payload: &Value, inv: &Invocation, lambda: &LocalLambda) -> bool {
    println!("\ninvocation {n}: {payload}");
    println!("  request id   {}", inv.request_id);
    if let Some(d) = inv.init_duration {
        println!(
            "  cold start   Init took {d:.1?} (environment #{})",
            lambda.init_count()
        );
    }
    println!("  outcome      {}", inv.outcome);
    println!(
        "  duration     {:.1?} to the answer, {:.1?} until the Invoke phase ended",
        inv.duration, inv.phase_duration
    );
    if let Some(r) = &inv.reset {
        println!(
            "  reset        {}",
            r.to_string().replace('\n', "\n               ")
        );
    } else if lambda.is_frozen() {
        println!("  environment  frozen");
    }
    matches!(inv.outcome, Outcome::Ok(_))
}

fn describe(k: &EventKind) -> String {
    match k {
        EventKind::InitStarted => "Init started".into(),
        EventKind::ProcessStarted { process, pid } => format!("{process} started (pid {pid})"),
        EventKind::ExtensionRegistered {
            name,
            events,
            internal,
        } => format!(
            "{} extension {name} registered for {events:?}",
            if *internal { "internal" } else { "external" }
        ),
        EventKind::RegistrationRefused { name, reason } => {
            format!("registration of {name:?} refused: {reason}")
        }
        EventKind::InitEnded { error: None } => "Init ended".into(),
        EventKind::InitEnded { error: Some(e) } => format!("Init failed: {e}"),
        EventKind::InvokeDelivered { request_id, to } => format!("INVOKE {request_id} -> {to}"),
        EventKind::ResponseReceived { request_id, error } => {
            format!(
                "{} for {request_id}",
                if *error { "error" } else { "response" }
            )
        }
        EventKind::Frozen => "frozen".into(),
        EventKind::Thawed => "thawed".into(),
        EventKind::ShutdownStarted { reason } => format!("shutdown ({reason}) started"),
        EventKind::SigtermSent { process } => format!("SIGTERM -> {process}"),
        EventKind::ShutdownDelivered { extension, reason } => {
            format!("SHUTDOWN ({reason}) -> {extension}")
        }
        EventKind::SigkillSent { process } => format!("SIGKILL -> {process}"),
        EventKind::ShutdownEnded { reason } => format!("shutdown ({reason}) ended"),
        EventKind::ProcessExited {
            process,
            pid,
            status,
        } => format!("{process} (pid {pid}) exited: {status}"),
    }
}
