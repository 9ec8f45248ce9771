//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL's `auth-scram.c` does
//! it, for clients of the endpoint's TCP listener. No I/O: the session passes the client's SASL
//! messages in and sends what comes back.
//!
//! Written here rather than taken from a crate: postgres-protocol (which the backend side uses)
//! has the client side only; pgwire's server side lives inside its own connection handlers and
//! message types (its `server-api`), and rsasl is a framework of callbacks for many mechanisms.
//! What the endpoint needs is one mechanism against one password, a few dozen lines over ring,
//! which the extension already has for TLS and randomness.
//!
//! As in PostgreSQL: the password is SASLprep'd (or used as given if that fails), the salt is
//! random (here, once per process), 4096 iterations, an 18-byte server nonce, channel binding
//! `n` or `y` (the listener has no TLS, so no `-PLUS`), the user name in the exchange ignored
//! (the StartupMessage's counts), and the proof compared in constant time.
//! <https://www.postgresql.org/docs/current/sasl-authentication.html>
//! <https://github.com/postgres/postgres/blob/master/src/backend/libpq/auth-scram.c>

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;
use warmpool::protocol::sqlstate;

/// The mechanism's name in AuthenticationSASL and SASLInitialResponse.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

/// PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
const SALT_LEN: usize = 16;

/// PostgreSQL's `SCRAM_RAW_NONCE_LEN`.
const NONCE_LEN: usize = 18;

const KEY_LEN: usize = 32;

/// What the server keeps of the password: the salt, the iteration count, and the two keys
/// derived from them. `Debug` shows none of it, since the keys allow a dictionary attack.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    /// The verifier of `password` with a fresh random salt and PostgreSQL's iteration count.
    pub fn new(password: &str) -> Verifier {
        let mut salt = [0u8; SALT_LEN];
        fill_random(&mut salt);
        Verifier::with_salt(password, &salt, ITERATIONS)
    }

    /// The verifier of `password` with a given salt and iteration count.
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        // PostgreSQL falls back to the password as given when it is not valid for SASLprep,
        // and so do the clients (libpq, pgJDBC, postgres-protocol).
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_owned());
        let mut salted = [0u8; KEY_LEN];
        let iterations = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = sha256(&client_key);
        let server_key = hmac_sha256(&salted, b"Server Key");
        Verifier {
            salt: salt.to_vec(),
            iterations: iterations.get(),
            stored_key,
            server_key,
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not what SCRAM says (08P01).
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for what this server does not offer (08P01).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The proof does not match the password (28P01).
    #[error("the client's proof does not match the password")]
    WrongPassword,
}

impl ScramError {
    /// The SQLSTATE PostgreSQL sends for it.
    pub fn code(&self) -> &'static str {
        match self {
            ScramError::WrongPassword => sqlstate::INVALID_PASSWORD,
            ScramError::Malformed(_) | ScramError::Unsupported(_) => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// An exchange after the server-first-message, waiting for the client-final-message.
#[derive(Debug)]
pub struct Started {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Reads the client-first-message and answers it with the server-first-message, under a fresh
/// random server nonce.
pub fn start(verifier: &Verifier, client_first: &[u8]) -> Result<(Started, String), ScramError> {
    let mut raw = [0u8; NONCE_LEN];
    fill_random(&mut raw);
    start_with_nonce(verifier, client_first, &BASE64.encode(raw))
}

/// [`start`] with a given server nonce.
fn start_with_nonce(
    verifier: &Verifier,
    client_first: &[u8],
    server_nonce: &str,
) -> Result<(Started, String), ScramError> {
    let msg = std::str::from_utf8(client_first)
        .map_err(|_| ScramError::Malformed("the client-first-message is not UTF-8"))?;
    // gs2-header: cbind-flag "," [authzid] ","
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        // `y`: the client could bind but thinks the server cannot; true here (no TLS).
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(ScramError::Unsupported(
                "the client selected SCRAM-SHA-256-PLUS, but the server offered SCRAM-SHA-256 \
                 only (no TLS on this listener, so no channel binding)",
            ))
        }
        _ => return Err(ScramError::Malformed("unexpected channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no end to the GS2 header"))?;
    if !authzid.is_empty() {
        return Err(ScramError::Unsupported(
            "client uses authorization identity, but it is not supported",
        ));
    }
    let gs2_header = msg[..msg.len() - bare.len()].to_owned();
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(ScramError::Unsupported(
            "client requires an unsupported SCRAM extension",
        ));
    }
    // The user name here is ignored, as PostgreSQL ignores it: the StartupMessage's counts.
    if !user.starts_with("n=") {
        return Err(ScramError::Malformed("no user name attribute"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed("no nonce attribute"))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(printable) {
        return Err(ScramError::Malformed("the nonce is not printable"));
    }
    // Extensions after the nonce are ignored, as PostgreSQL ignores them.
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    let started = Started {
        gs2_header,
        client_first_bare: bare.to_owned(),
        server_first: server_first.clone(),
        nonce,
    };
    Ok((started, server_first))
}

impl Started {
    /// Reads the client-final-message; with a proof that matches, answers it with the
    /// server-final-message (the server's signature, which the client checks in turn).
    pub fn finish(self, verifier: &Verifier, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Malformed("the client-final-message is not UTF-8"))?;
        // The proof is the last attribute; base64 holds no comma, so the last ",p=" starts it.
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof attribute"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel-binding attribute"))?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("the channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::Unsupported(
                "SCRAM channel binding check failed",
            ));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce attribute"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("the nonce does not match"));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("the proof is not base64"))?;
        if proof.len() != KEY_LEN {
            return Err(ScramError::Malformed("the proof is not 32 bytes"));
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; KEY_LEN];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature)) {
            *k = p ^ s;
        }
        // Compared in constant time, so a client cannot learn the stored key byte by byte.
        if !bool::from(sha256(&client_key).ct_eq(&verifier.stored_key)) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

/// RFC 5802's printable: `%x21-2B / %x2D-7E`, every visible character but the comma.
fn printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

fn fill_random(buf: &mut [u8]) {
    // A salt or nonce that is not random weakens the exchange; there is no safe fallback, and
    // the system's generator failing means the process cannot do TLS either.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
        .expect("the system's random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user `user`, password `pencil`.
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn verifier(password: &str) -> Verifier {
        Verifier::with_salt(password, &BASE64.decode(SALT).unwrap(), 4096)
    }

    fn started(v: &Verifier) -> Started {
        let (s, first) = start_with_nonce(v, CLIENT_FIRST.as_bytes(), SERVER_NONCE).unwrap();
        assert_eq!(first, SERVER_FIRST);
        s
    }

    #[test]
    fn rfc_7677_test_vector() {
        let v = verifier("pencil");
        let server_final = started(&v).finish(&v, CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(server_final, SERVER_FINAL);
    }

    #[test]
    fn another_password_is_refused() {
        let v = verifier("pencil2");
        assert_eq!(
            started(&v).finish(&v, CLIENT_FINAL.as_bytes()),
            Err(ScramError::WrongPassword)
        );
        assert_eq!(ScramError::WrongPassword.code(), "28P01");
    }

    #[test]
    fn a_tampered_final_message_is_refused() {
        let v = verifier("pencil");
        // Another nonce, another binding, a proof cut short, one bit of the proof flipped.
        let bad = [
            CLIENT_FINAL.replace("$k0,", "$k1,"),
            CLIENT_FINAL.replace("c=biws", "c=eSws"),
            CLIENT_FINAL.replace("AndVQ=", "And"),
            CLIENT_FINAL.replace("p=dHzb", "p=dHzc"),
            CLIENT_FINAL.replace(",p=", ",q="),
        ];
        for m in bad {
            assert!(started(&v).finish(&v, m.as_bytes()).is_err(), "{m}");
        }
        assert_eq!(
            started(&v).finish(&v, CLIENT_FINAL.replace("p=dHzb", "p=dHzc").as_bytes()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn first_messages_outside_what_is_offered_are_refused() {
        let v = verifier("pencil");
        for (m, code) in [
            ("p=tls-server-end-point,,n=user,r=abc", "08P01"),
            ("n,a=admin,n=user,r=abc", "08P01"),
            ("n,,m=ext,n=user,r=abc", "08P01"),
            ("n,,n=user", "08P01"),
            ("n,,n=user,r=", "08P01"),
            ("x,,n=user,r=abc", "08P01"),
            ("n,,r=abc", "08P01"),
        ] {
            let err = start_with_nonce(&v, m.as_bytes(), SERVER_NONCE).unwrap_err();
            assert_eq!(err.code(), code, "{m}: {err}");
        }
        // A client that could bind but saw no -PLUS offered: served, and its final message
        // must carry its own `y` header.
        let (s, _) = start_with_nonce(&v, b"y,,n=,r=abc", "xyz").unwrap();
        let final_n = "c=biws,r=abcxyz,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert!(matches!(
            s.finish(&v, final_n.as_bytes()),
            Err(ScramError::Unsupported(_))
        ));
    }

    #[test]
    fn fresh_verifiers_differ_in_salt_and_debug_shows_nothing() {
        let (a, b) = (Verifier::new("pencil"), Verifier::new("pencil"));
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.iterations, ITERATIONS);
        assert_eq!(format!("{a:?}"), "Verifier(<redacted>)");
    }
}
