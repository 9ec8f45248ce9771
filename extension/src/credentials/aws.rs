//! The function's AWS identity, and SigV4 signing through the `aws-sigv4` crate.
//!
//! Lambda gives every process of an execution environment, extensions included, the execution
//! role's temporary credentials in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`, and the region in `AWS_REGION`
//! (<https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime>).
//! Those are what the AWS SDKs' environment provider reads first, and all this module reads: no
//! profile files, no instance metadata, no credential process, which is what keeps aws-config
//! (and its size, see the crate docs of [`crate::credentials`]) out of the binary.
//!
//! Signing itself is aws-sigv4's, never hand-written:
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html>.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::Secret;

/// Temporary (or long-term) AWS credentials. `Debug` shows the access key id, which AWS treats
/// as an identifier, and never the secret key or the session token.
#[derive(Clone)]
pub struct AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `AWS_SESSION_TOKEN`, present with a role's temporary credentials (always on Lambda).
    pub session_token: Option<Secret>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// Who signs and for which region.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: String,
    /// The role's credentials.
    pub credentials: AwsCredentials,
}

impl AwsSettings {
    fn identity(&self) -> Identity {
        let c = &self.credentials;
        aws_credential_types::Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.expose().to_owned(),
            c.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "warmpool-environment",
        )
        .into()
    }

    /// Presigns `GET url` for `service`: the signature and everything it covers go into the
    /// query string, valid for `expires_in` from `time`. Returns the signed URL.
    pub(crate) fn presign(
        &self,
        service: &str,
        url: &str,
        expires_in: Duration,
        time: SystemTime,
    ) -> Result<String, String> {
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        let mut request = http::Request::get(url)
            .body(())
            .map_err(|e| format!("cannot build the request to sign: {e}"))?;
        let identity = self.identity();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let signable =
            SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))
                .map_err(|e| format!("cannot sign {service} request: {e}"))?;
        let (instructions, _signature) = quietly(|| sign(signable, &params))
            .map_err(|e| format!("cannot sign {service} request: {e}"))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.uri().to_string())
    }

    /// Signs `request` for `service` in the `Authorization` header (with `X-Amz-Date` and
    /// `X-Amz-Security-Token`), covering every header it already carries and its body.
    pub(crate) fn sign_request(
        &self,
        service: &str,
        request: &mut http::Request<bytes::Bytes>,
        time: SystemTime,
    ) -> Result<(), String> {
        let identity = self.identity();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let uri = request.uri().to_string();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            request.method().as_str(),
            uri,
            headers.into_iter(),
            SignableBody::Bytes(request.body()),
        )
        .map_err(|e| format!("cannot sign {service} request: {e}"))?;
        let (instructions, _signature) = quietly(|| sign(signable, &params))
            .map_err(|e| format!("cannot sign {service} request: {e}"))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// Runs `f` with tracing switched off on this thread. aws-sigv4 logs the canonical request at
/// trace level, and for a presigned request that includes `X-Amz-Security-Token`, the role's
/// session token: with `WARMPOOL_LOG=trace` it would reach the log. Signing is synchronous, so
/// a thread-local no-op dispatcher covers exactly the signing call.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    tracing::dispatcher::with_default(&tracing::Dispatch::none(), f)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example credentials from AWS's documentation, and a session token in the shape of a
    /// real one (with characters that need escaping in a query string).
    pub(crate) fn example() -> AwsSettings {
        AwsSettings {
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                session_token: Some(Secret::new("FwoGZXIvYXdzEXAMPLE//session+token=")),
            },
        }
    }

    /// 2024-01-02T03:04:05Z.
    pub(crate) fn fixed_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", example());
        assert!(shown.contains("AKIAIOSFODNN7EXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdz"), "{shown}");
    }

    /// The Secrets Manager request signed here carries the same signature botocore (an
    /// independent SigV4 implementation) computes for the same request, credentials and time:
    /// `SigV4Auth(Credentials(...), "secretsmanager", "eu-west-1").add_auth(AWSRequest(...))`
    /// with botocore's clock fixed at 2024-01-02T03:04:05Z.
    #[test]
    fn header_signature_matches_botocore() {
        let mut request = http::Request::post("https://secretsmanager.eu-west-1.amazonaws.com/")
            .header("host", "secretsmanager.eu-west-1.amazonaws.com")
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "secretsmanager.GetSecretValue")
            .body(bytes::Bytes::from_static(br#"{"SecretId":"prod/app/db"}"#))
            .unwrap();
        example()
            .sign_request("secretsmanager", &mut request, fixed_time())
            .unwrap();
        let h = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(h("x-amz-date"), "20240102T030405Z");
        assert_eq!(
            h("x-amz-security-token"),
            "FwoGZXIvYXdzEXAMPLE//session+token="
        );
        assert_eq!(
            h("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240102/eu-west-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=23a7ac9e6e08ce1a0aa5effb163a6715b405ca94a469d7459b7fec8ec809f491"
        );
    }
}
