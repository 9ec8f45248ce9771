//! A stand-in for AWS Secrets Manager on loopback: it speaks `GetSecretValue` in AWS JSON 1.1
//! (<https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>),
//! which is all the extension calls, so tests run the extension's real client code without AWS.
//! The extension reaches it through the standard endpoint override,
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER`.
//!
//! It checks what a real endpoint would refuse: the target header, the content type, the shape
//! of the SigV4 `Authorization` header (credential scope, signed headers) and the session token.
//! The signature's value itself is checked against botocore in the extension's unit tests.
//!
//! Each connection is served on its own thread, independent of the test's runtime.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use crate::pg::PgServer;

/// The access key id the stand-in expects (AWS's documentation example).
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The secret access key handed to the extension. Never sent: only signatures made with it are.
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The session token the stand-in expects in `X-Amz-Security-Token`.
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLEsessionTOKEN+/=";
/// The region the stand-in expects in the credential scope.
pub const REGION: &str = "eu-west-1";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The body as text.
    pub body: String,
}

/// How the next requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normally.
    Serve,
    /// With HTTP 500 InternalServiceError.
    Fail,
    /// With HTTP 400 AccessDeniedException.
    Deny,
}

struct State {
    secret_id: String,
    secret: Value,
    version: u32,
    mode: Mode,
    requests: Vec<Request>,
}

/// A running stand-in. Stops when dropped.
pub struct SecretsManagerStandIn {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SecretsManagerStandIn {
    /// Serves `secret` (a JSON object, stored as its SecretString) under `secret_id`.
    pub fn start(secret_id: &str, secret: Value) -> SecretsManagerStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(Mutex::new(State {
            secret_id: secret_id.to_owned(),
            secret,
            version: 1,
            mode: Mode::Serve,
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state));
                }
            })
        };
        SecretsManagerStandIn {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the secret, as a rotation's finishSecret step makes a new version current.
    pub fn set_secret(&self, secret: Value) {
        let mut state = self.state.lock().unwrap();
        state.secret = secret;
        state.version += 1;
    }

    /// How the next requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many GetSecretValue calls arrived.
    pub fn fetches(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// The extension's environment for secrets-manager mode against this stand-in, with the
    /// connection settings that the secret supplies cleared (an empty value counts as unset).
    pub fn env(&self, secret_id: &str) -> Vec<(String, String)> {
        [
            ("WARMPOOL_AUTH", "secrets-manager".to_owned()),
            ("WARMPOOL_SECRET_ID", secret_id.to_owned()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN.to_owned()),
            ("PGHOST", String::new()),
            ("PGPORT", String::new()),
            ("PGUSER", String::new()),
            ("PGPASSWORD", String::new()),
            ("PGDATABASE", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A secret in the shape RDS rotation writes, for `pg`'s application role with `password`.
pub fn rds_secret(pg: &PgServer, password: &str) -> Value {
    json!({
        "engine": "postgres",
        "host": pg.host(),
        "port": pg.port(),
        "username": pg.user(),
        "password": password,
        "dbname": pg.dbname(),
        "dbInstanceIdentifier": "warmpool-test",
    })
}

impl Drop for SecretsManagerStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Request {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, answer) = answer(&request_line, &request, state);
    let body = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

fn error(status: &'static str, kind: &str, message: &str) -> (&'static str, Value) {
    (
        status,
        json!({ "__type": format!("com.amazonaws.secretsmanager#{kind}"), "Message": message }),
    )
}

fn answer(request_line: &str, request: &Request, state: &Mutex<State>) -> (&'static str, Value) {
    let mut state = state.lock().unwrap();
    state.requests.push(request.clone());
    let h = |name: &str| request.headers.get(name).map(String::as_str).unwrap_or("");
    if !request_line.starts_with("POST / HTTP/1.1") {
        return error("400 Bad Request", "InvalidRequestException", "POST / only");
    }
    if h("x-amz-target") != "secretsmanager.GetSecretValue"
        || h("content-type") != "application/x-amz-json-1.1"
    {
        return error("400 Bad Request", "UnknownOperationException", "bad target");
    }
    let auth = h("authorization");
    let scope_ok = auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"))
        && auth.contains(&format!(
            "/{REGION}/secretsmanager/aws4_request, SignedHeaders="
        ))
        && auth.contains("host;x-amz-date;x-amz-security-token;x-amz-target")
        && auth.contains("Signature=");
    if !scope_ok || h("x-amz-date").len() != 16 {
        return error(
            "403 Forbidden",
            "InvalidSignatureException",
            "the request signature is malformed",
        );
    }
    if h("x-amz-security-token") != SESSION_TOKEN {
        return error(
            "400 Bad Request",
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    match state.mode {
        Mode::Serve => {}
        Mode::Fail => {
            return error(
                "500 Internal Server Error",
                "InternalServiceError",
                "stand-in told to fail",
            )
        }
        Mode::Deny => {
            return error(
                "400 Bad Request",
                "AccessDeniedException",
                "User is not authorized to perform: secretsmanager:GetSecretValue",
            )
        }
    }
    let asked: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
    let id = asked.get("SecretId").and_then(Value::as_str).unwrap_or("");
    if id != state.secret_id {
        return error(
            "400 Bad Request",
            "ResourceNotFoundException",
            "Secrets Manager can't find the specified secret.",
        );
    }
    (
        "200 OK",
        json!({
            "ARN": format!("arn:aws:secretsmanager:{REGION}:123456789012:secret:{id}-AbCdEf"),
            "Name": id,
            "VersionId": format!("v{}", state.version),
            "SecretString": state.secret.to_string(),
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1.7e9,
        }),
    )
}
