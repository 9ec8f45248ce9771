//! The function's configuration and the environment variables derived from it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Classic Init limit. <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-ib>
pub const CLASSIC_INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// LMI Init limit: max(130 s, function timeout).
/// <https://docs.aws.amazon.com/lambda/latest/dg/lambda-managed-instances-execution-environment.html>
pub const LMI_INIT_TIMEOUT: Duration = Duration::from_secs(130);
/// Shutdown limit with at least one external extension registered.
/// <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-shutdown>
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(2000);
/// The runtime's share of the shutdown budget (300 ms; 500 ms with an internal extension, which
/// this emulator does not distinguish).
pub const RUNTIME_SHUTDOWN_BUDGET: Duration = Duration::from_millis(300);

/// Reserved keys Lambda refuses in a function's configuration.
/// <https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime>
/// The role credentials (`AWS_ACCESS_KEY_ID`, ...) are reserved too, but Lambda fills them from
/// the execution role; here `env()` is how a test supplies them, so they are allowed.
const RESERVED: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// Variables extensions do not see although the function does (LAMBDA-FACTS.md, "Environment").
const HIDDEN_FROM_EXTENSIONS: &[&str] = &[
    "AWS_EXECUTION_ENV",
    "LAMBDA_TASK_ROOT",
    "_HANDLER",
    "AWS_LAMBDA_LOG_GROUP_NAME",
];

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub extensions_dir: Option<PathBuf>,
    pub bootstrap: PathBuf,
    pub task_root: PathBuf,
    pub function_name: String,
    pub function_version: String,
    pub memory_mb: u32,
    pub region: String,
    pub account_id: String,
    pub handler: String,
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub concurrency: u32,
    pub env: Vec<(String, String)>,
    pub inherit_env: bool,
    pub echo_output: bool,
    /// `deadlineMs` 0 in the events extensions get, as cargo-lambda sends.
    pub zero_deadlines: bool,
}

impl Config {
    /// Lambda Managed Instances: several invocations share one environment.
    pub fn is_lmi(&self) -> bool {
        self.concurrency > 1
    }

    pub fn function_arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, self.function_name
        )
    }

    pub fn log_group(&self) -> String {
        format!("/aws/lambda/{}", self.function_name)
    }

    pub fn validate_env(&self) -> Result<(), String> {
        for (k, _) in &self.env {
            if RESERVED.contains(&k.as_str()) {
                return Err(format!(
                    "{k} is reserved by Lambda and set by the emulator; use the builder's own setter"
                ));
            }
        }
        Ok(())
    }

    /// The runtime's environment. Extensions get the same minus [`HIDDEN_FROM_EXTENSIONS`].
    /// <https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime>
    pub fn runtime_env(&self, runtime_api: &str, log_stream: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = if self.inherit_env {
            std::env::vars().collect()
        } else {
            // Without PATH nothing that shells out works; RUST_LOG/RUST_BACKTRACE make a failing
            // test readable. Everything else of the host stays out, as in Lambda.
            ["PATH", "RUST_LOG", "RUST_BACKTRACE"]
                .iter()
                .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
                .collect()
        };
        let init_type = if self.is_lmi() {
            "lambda-managed-instances"
        } else {
            "on-demand"
        };
        let root = self.task_root.display().to_string();
        let fixed = [
            ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", self.function_name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", self.function_version.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.memory_mb.to_string(),
            ),
            ("AWS_LAMBDA_LOG_GROUP_NAME", self.log_group()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream.to_string()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", init_type.to_string()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_DEFAULT_REGION", self.region.clone()),
            ("_HANDLER", self.handler.clone()),
            ("LAMBDA_TASK_ROOT", root),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_string()),
            ("LANG", "en_US.UTF-8".to_string()),
            ("TZ", ":UTC".to_string()),
        ];
        for (k, v) in fixed {
            set(&mut env, k, v);
        }
        if self.is_lmi() {
            set(
                &mut env,
                "AWS_LAMBDA_MAX_CONCURRENCY",
                self.concurrency.to_string(),
            );
        }
        for (k, v) in &self.env {
            set(&mut env, k, v.clone());
        }
        env
    }

    pub fn extension_env(&self, runtime_api: &str, log_stream: &str) -> Vec<(String, String)> {
        self.runtime_env(runtime_api, log_stream)
            .into_iter()
            .filter(|(k, _)| {
                !HIDDEN_FROM_EXTENSIONS.contains(&k.as_str()) && !k.starts_with("AWS_XRAY_")
            })
            .collect()
    }
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value));
}

/// `2026/11/27/[$LATEST]<32 hex>`: the shape of a Lambda log stream name, new for each
/// execution environment.
pub(crate) fn log_stream_name(version: &str) -> String {
    let (y, m, d) = civil_date(SystemTime::now());
    format!(
        "{y:04}/{m:02}/{d:02}/[{version}]{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// Milliseconds since the Unix epoch: the unit of `deadlineMs`.
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// UTC calendar date (Howard Hinnant's days-to-civil), to avoid a date crate for one string.
fn civil_date(t: SystemTime) -> (i64, u32, u32) {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64
        / 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_date_matches_known_days() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(civil_date(at(0)), (1970, 1, 1));
        assert_eq!(civil_date(at(951_782_400)), (2000, 2, 29));
        assert_eq!(civil_date(at(1_795_737_600)), (2026, 11, 27));
    }
}
