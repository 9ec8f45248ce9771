//! AWS Secrets Manager's `GetSecretValue`, as one SigV4-signed HTTP request.
//!
//! The API is AWS JSON 1.1: `POST /` with `X-Amz-Target: secretsmanager.GetSecretValue` and the
//! body `{"SecretId": ...}`
//! (<https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>).
//! The secret is expected in the shape RDS and its rotation functions write: a JSON object with
//! `username`, `password`, and optionally `host`, `port`, `dbname` and `engine`
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_secret_json_structure.html>).
//!
//! The endpoint is `https://secretsmanager.{region}.amazonaws.com`, or what
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER` / `AWS_ENDPOINT_URL` say, as with every AWS SDK
//! (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html>): that is how
//! tests point it at a stand-in on loopback, and how a VPC endpoint could be named.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::Value;

use super::aws::AwsSettings;
use super::http::{Endpoint, HttpClient};
use super::{ErrorKind, Secret};

/// How to reach the secret, and how long to keep it.
#[derive(Debug, Clone)]
pub struct SecretsManagerSettings {
    /// `WARMPOOL_SECRET_ID`: the secret's name or ARN.
    pub secret_id: String,
    /// `WARMPOOL_SECRET_TTL_MS`: how long a fetched value is used before it is fetched again.
    pub ttl: Duration,
    /// The endpoint: the region's, or an override.
    pub endpoint: Endpoint,
    /// Who signs.
    pub aws: AwsSettings,
}

/// The endpoint for `region` when nothing overrides it
/// (<https://docs.aws.amazon.com/general/latest/gr/asm.html>).
pub fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://secretsmanager.{region}.{suffix}")
}

/// A database secret. `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbSecret {
    /// `username`. With RDS's alternating-users rotation it changes too, so it always comes
    /// from the secret.
    pub username: String,
    /// `password`.
    pub password: Secret,
    /// `host`, if the secret has one.
    pub host: Option<String>,
    /// `port`, as a number or a numeric string.
    pub port: Option<u16>,
    /// `dbname`.
    pub dbname: Option<String>,
    /// The secret's version, for logs: which version a connection used, never its value.
    pub version_id: Option<String>,
}

impl fmt::Debug for DbSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbSecret")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .field("version_id", &self.version_id)
            .finish()
    }
}

/// Calls GetSecretValue.
#[derive(Debug)]
pub(crate) struct SecretsManagerClient {
    pub(crate) settings: SecretsManagerSettings,
    http: HttpClient,
}

impl SecretsManagerClient {
    pub(crate) fn new(settings: SecretsManagerSettings) -> SecretsManagerClient {
        SecretsManagerClient {
            settings,
            http: HttpClient::default(),
        }
    }

    /// Fetches and parses the secret, signing at `now`.
    pub(crate) async fn fetch(&self, now: SystemTime) -> Result<DbSecret, ErrorKind> {
        let s = &self.settings;
        let body = serde_json::json!({ "SecretId": s.secret_id }).to_string();
        let mut request = http::Request::post(s.endpoint.url())
            .header("host", s.endpoint.authority())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "secretsmanager.GetSecretValue")
            .body(Bytes::from(body))
            .map_err(|e| ErrorKind::Signing(format!("cannot build the request: {e}")))?;
        s.aws
            .sign_request("secretsmanager", &mut request, now)
            .map_err(ErrorKind::Signing)?;
        // After signing: the user agent is not signed (proxies may change it).
        request.headers_mut().insert(
            "user-agent",
            http::HeaderValue::from_static(concat!("warmpool/", env!("CARGO_PKG_VERSION"))),
        );
        let response = self
            .http
            .send(&s.endpoint, request)
            .await
            .map_err(|reason| ErrorKind::Unreachable {
                endpoint: s.endpoint.to_string(),
                reason,
            })?;
        if !response.status().is_success() {
            return Err(refused(&response));
        }
        parse_response(response.body())
    }
}

/// An error answer: AWS JSON errors carry `__type` (sometimes prefixed with a namespace and
/// `#`) and `message` or `Message`, and the type is also in `X-Amzn-ErrorType`
/// (<https://smithy.io/2.0/aws/protocols/aws-json-1_1-protocol.html#operation-error-serialization>).
fn refused(response: &http::Response<Bytes>) -> ErrorKind {
    let json: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    let error_type = json
        .get("__type")
        .and_then(Value::as_str)
        .or_else(|| {
            response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("unknown error");
    let error_type = error_type.rsplit('#').next().unwrap_or(error_type);
    let error_type = error_type
        .split(':')
        .next()
        .unwrap_or(error_type)
        .to_owned();
    let message = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(500)
        .collect();
    ErrorKind::Refused {
        status: response.status().as_u16(),
        error_type,
        message,
    }
}

/// Parses GetSecretValue's answer, then the secret inside it. Error messages name fields and
/// positions only: never a value, since any of them could be the password.
fn parse_response(body: &[u8]) -> Result<DbSecret, ErrorKind> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        ErrorKind::Malformed(format!(
            "the GetSecretValue response is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Some(secret_string) = json.get("SecretString").and_then(Value::as_str) else {
        return Err(ErrorKind::Malformed(
            "the secret has no SecretString (binary secrets are not supported)".into(),
        ));
    };
    let mut secret = parse_secret(secret_string)?;
    secret.version_id = json
        .get("VersionId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(secret)
}

/// Parses a secret value in the RDS shape.
pub fn parse_secret(text: &str) -> Result<DbSecret, ErrorKind> {
    let malformed = |m: String| ErrorKind::Malformed(m);
    let json: Value = serde_json::from_str(text).map_err(|e| {
        malformed(format!(
            "the secret value is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(fields) = json else {
        return Err(malformed("the secret value is not a JSON object".into()));
    };
    let string = |name: &str| -> Result<Option<String>, ErrorKind> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            // Sent as NUL-terminated strings at start-up; the value itself is never shown.
            Some(Value::String(s)) if s.contains('\0') => Err(malformed(format!(
                "field {name:?} holds a NUL byte, which PostgreSQL's protocol cannot carry"
            ))),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(format!("field {name:?} is not a string"))),
        }
    };
    let username =
        string("username")?.ok_or_else(|| malformed("field \"username\" is missing".into()))?;
    let password =
        string("password")?.ok_or_else(|| malformed("field \"password\" is missing".into()))?;
    let port = match fields.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| malformed("field \"port\" is not a port number".into()))?,
        ),
        Some(Value::String(s)) => Some(
            s.trim()
                .parse()
                .map_err(|_| malformed("field \"port\" is not a port number".into()))?,
        ),
        Some(_) => return Err(malformed("field \"port\" is not a port number".into())),
    };
    if let Some(engine) = string("engine")? {
        // "postgres" for RDS, "aurora-postgresql" for Aurora.
        if !engine.contains("postgres") {
            return Err(malformed(format!(
                "field \"engine\" is {engine:?}, not PostgreSQL"
            )));
        }
    }
    Ok(DbSecret {
        username,
        password: Secret::new(password),
        host: string("host")?,
        port,
        dbname: string("dbname")?,
        version_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_in_a_field_is_malformed_and_not_shown() {
        let e = parse_secret(r#"{"username": "app", "password": "s3cr\u0000t"}"#).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("field \"password\" holds a NUL byte"),
            "{text}"
        );
        assert!(!text.contains("s3cr"), "{text}");
    }

    #[test]
    fn rds_rotation_shape() {
        let s = parse_secret(
            r#"{"engine":"postgres","host":"db.x.eu-west-1.rds.amazonaws.com","username":"app",
                "password":"pa55\"word","dbname":"orders","port":5432,"dbInstanceIdentifier":"db"}"#,
        )
        .unwrap();
        assert_eq!(s.username, "app");
        assert_eq!(s.password.expose(), "pa55\"word");
        assert_eq!(s.host.as_deref(), Some("db.x.eu-west-1.rds.amazonaws.com"));
        assert_eq!(s.port, Some(5432));
        assert_eq!(s.dbname.as_deref(), Some("orders"));
        // RDS-managed master user secrets hold only the user and the password.
        let s = parse_secret(r#"{"username":"postgres","password":"x","port":"6543"}"#).unwrap();
        assert_eq!((&s.host, s.port, &s.dbname), (&None, Some(6543), &None));
        assert!(!format!("{s:?}").contains("\"x\""));
    }

    #[test]
    fn malformed_secrets_never_echo_a_value() {
        for bad in [
            r#"{"username":"app"}"#,
            r#"{"password":"hunter2"}"#,
            r#"{"username":"app","password":["hunter2"]}"#,
            r#"{"username":"app","password":"hunter2","port":"hunter2"}"#,
            r#"{"username":"app","password":"hunter2","port":99999}"#,
            r#"{"username":"app","password":"hunter2","engine":"mysql"}"#,
            r#"{"username":"app","password":"hunter2"#,
            r#"hunter2"#,
            r#"["hunter2"]"#,
        ] {
            let e = parse_secret(bad).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(matches!(e, ErrorKind::Malformed(_)), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let e = parse_response(br#"{"Name":"x","SecretBinary":"aHVudGVyMg=="}"#).unwrap_err();
        assert!(e.to_string().contains("SecretString"), "{e}");
    }

    #[test]
    fn response_and_errors() {
        let body = serde_json::json!({
            "ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app/db-AbCdEf",
            "Name": "prod/app/db",
            "VersionId": "v2",
            "SecretString": r#"{"username":"app","password":"p"}"#,
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1.704164645e9
        });
        let s = parse_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(s.version_id.as_deref(), Some("v2"));

        let response = http::Response::builder()
            .status(400)
            .body(Bytes::from_static(
                br#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
            ))
            .unwrap();
        match refused(&response) {
            ErrorKind::Refused {
                status,
                error_type,
                message,
            } => {
                assert_eq!(status, 400);
                assert_eq!(error_type, "ResourceNotFoundException");
                assert!(message.contains("can't find"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://secretsmanager.cn-north-1.amazonaws.com.cn"
        );
    }
}
