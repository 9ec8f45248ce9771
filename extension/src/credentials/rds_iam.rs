//! RDS IAM database authentication: the password is a token, a SigV4-presigned
//! `GET https://{host}:{port}/?Action=connect&DBUser={user}` for the service `rds-db`, with the
//! `https://` taken off. It is valid for 15 minutes and checked only when a connection
//! authenticates; a connection that is open stays open after its token expires.
//! <https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.Connecting.html>
//!
//! RDS reads the token as a cleartext password, so TLS is required in this mode (the
//! configuration refuses `sslmode` disable and prefer).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::aws::AwsSettings;
use super::clock::fresh;
use super::Secret;

/// How long a token is valid: `X-Amz-Expires=900`, the lifetime RDS gives IAM tokens.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// How long a token is reused for new connections. Five minutes short of its lifetime, so a
/// token handed to a connection attempt always has minutes left, whatever the connect timeout
/// and a modest clock skew. Signing is cheap (a few HMACs), so this is about not re-signing for
/// every connection of a burst, not about cost.
pub const TOKEN_REUSE: Duration = Duration::from_secs(600);

/// Where tokens are for: one user at one endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// The database endpoint, as the connection uses it.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The database user the token logs in as.
    pub user: String,
}

/// The token for `target`, signed with `aws` at `time`.
pub fn auth_token(aws: &AwsSettings, target: &Target, time: SystemTime) -> Result<Secret, String> {
    let url = format!(
        "https://{}:{}/?Action=connect&DBUser={}",
        target.host,
        target.port,
        query_escape(&target.user)
    );
    let signed = aws.presign("rds-db", &url, TOKEN_LIFETIME, time)?;
    match signed.strip_prefix("https://") {
        Some(token) => Ok(Secret::new(token)),
        None => Err("the signed URL lost its scheme".into()),
    }
}

/// Issues tokens and reuses each for [`TOKEN_REUSE`], judged by the wall clock when a token is
/// asked for. After a freeze longer than that, the first connection signs a new one: a cached
/// token is never handed out once it is that old, let alone expired.
#[derive(Debug)]
pub(crate) struct TokenCache {
    aws: AwsSettings,
    target: Target,
    cached: Mutex<Option<(SystemTime, Secret)>>,
}

impl TokenCache {
    pub(crate) fn new(aws: AwsSettings, target: Target) -> TokenCache {
        TokenCache {
            aws,
            target,
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// A token with at least `TOKEN_LIFETIME - TOKEN_REUSE` left at `now`.
    pub(crate) fn token(&self, now: SystemTime) -> Result<Secret, String> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((issued, token)) = cached.as_ref() {
            if fresh(*issued, now, TOKEN_REUSE) {
                return Ok(token.clone());
            }
        }
        let token = auth_token(&self.aws, &self.target, now)?;
        *cached = Some((now, token.clone()));
        Ok(token)
    }

    /// A newly signed token, whatever is cached: the cached one was just refused.
    pub(crate) fn fresh_token(&self, now: SystemTime) -> Result<Secret, String> {
        let token = auth_token(&self.aws, &self.target, now)?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, token.clone()));
        Ok(token)
    }
}

/// Percent-encodes a query value the way SigV4 canonicalises it: everything but the unreserved
/// characters `A-Z a-z 0-9 - _ . ~`. The signer expects an already encoded URL.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::aws::tests::{example, fixed_time};
    use crate::credentials::aws::AwsCredentials;

    fn target() -> Target {
        Target {
            host: "mydb.abc123.eu-west-1.rds.amazonaws.com".into(),
            port: 5432,
            user: "app_user".into(),
        }
    }

    /// The token equals the presigned URL aws-sigv4 produces for fixed credentials and a fixed
    /// time, and, as a check independent of aws-sigv4, the token botocore's
    /// `generate_db_auth_token("mydb.abc123.eu-west-1.rds.amazonaws.com", 5432, "app_user")`
    /// returns for the same credentials, region and time (botocore's clock fixed at
    /// 2024-01-02T03:04:05Z).
    #[test]
    fn token_matches_aws_sigv4_and_botocore() {
        let token = auth_token(&example(), &target(), fixed_time()).unwrap();

        // Straight from aws-sigv4, as AWS's own Rust example (lambda-rds-iam-auth) does it.
        let url =
            "https://mydb.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user";
        let direct = example()
            .presign("rds-db", url, Duration::from_secs(900), fixed_time())
            .unwrap();
        assert_eq!(format!("https://{}", token.expose()), direct);

        let botocore =
            "mydb.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user\
            &X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240102%2Feu-west-1%2Frds-db%2Faws4_request\
            &X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
            &X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE%2F%2Fsession%2Btoken%3D\
            &X-Amz-Signature=5cca8243f67f06128bbf5ba03174a626b79a51a8a2bcac94840628566af42bdb";
        assert_eq!(sorted_query(token.expose()), sorted_query(botocore));
    }

    /// Without a session token (long-term keys), as botocore signs it.
    #[test]
    fn token_without_session_token_matches_botocore() {
        let mut aws = example();
        aws.credentials = AwsCredentials {
            session_token: None,
            ..aws.credentials
        };
        let token = auth_token(&aws, &target(), fixed_time()).unwrap();
        let botocore =
            "mydb.abc123.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user\
            &X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240102%2Feu-west-1%2Frds-db%2Faws4_request\
            &X-Amz-Date=20240102T030405Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
            &X-Amz-Signature=bc5383fed0dae6325547d59758bef83f8c39e33a401e6704df2a4bef42108ef7";
        assert_eq!(sorted_query(token.expose()), sorted_query(botocore));
    }

    /// The same URL whatever order the signer puts the parameters in.
    fn sorted_query(token: &str) -> (String, Vec<String>) {
        let (base, query) = token.split_once('?').unwrap();
        let mut params: Vec<String> = query.split('&').map(str::to_owned).collect();
        params.sort();
        (base.to_owned(), params)
    }

    #[test]
    fn user_names_are_escaped() {
        assert_eq!(query_escape("app_user-1.x~"), "app_user-1.x~");
        assert_eq!(query_escape("a b@c/d"), "a%20b%40c%2Fd");
        let t = Target {
            user: "iam user".into(),
            ..target()
        };
        let token = auth_token(&example(), &t, fixed_time()).unwrap();
        assert!(
            token.expose().contains("DBUser=iam%20user&"),
            "{:?}",
            token.expose()
        );
    }

    /// Reused within ten minutes; after that, and after any freeze longer than the lifetime,
    /// the wall clock at use time makes a new one.
    #[test]
    fn cached_for_less_than_the_lifetime() {
        let cache = TokenCache::new(example(), target());
        let t0 = fixed_time();
        let first = cache.token(t0).unwrap();
        assert_eq!(cache.token(t0 + Duration::from_secs(599)).unwrap(), first);
        let second = cache.token(t0 + TOKEN_REUSE).unwrap();
        assert_ne!(second, first);
        assert!(second.expose().contains("X-Amz-Date=20240102T031405Z"));

        // A freeze of two hours: the token in the cache is long expired and is not used.
        let thawed = t0 + TOKEN_REUSE + Duration::from_secs(7200);
        let third = cache.token(thawed).unwrap();
        assert!(
            third.expose().contains("X-Amz-Date=20240102T051405Z"),
            "{:?}",
            third.expose()
        );

        // A clock stepped backwards cannot tell the token's age: a new one is signed.
        let fourth = cache.token(thawed - Duration::from_secs(60)).unwrap();
        assert_ne!(fourth, third);

        // After a refusal, always a new one.
        let now = thawed - Duration::from_secs(30);
        let fifth = cache.fresh_token(now).unwrap();
        assert_ne!(fifth, fourth);
        assert_eq!(cache.token(now).unwrap(), fifth);
    }
}
