//! Password authentication of a client of the TCP listener, after its StartupMessage: the SASL
//! exchange of PostgreSQL's protocol (AuthenticationSASL, SASLInitialResponse,
//! AuthenticationSASLContinue, SASLResponse, AuthenticationSASLFinal) carrying SCRAM-SHA-256
//! (see `scram.rs`). Any user name is accepted; the password is what is checked.
//! <https://www.postgresql.org/docs/current/sasl-authentication.html>

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warmpool::protocol::sqlstate;

use super::messages;
use super::scram::{self, ScramError, Verifier};
use super::session::refuse;

/// PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`: the longest SASL message it reads.
const MAX_AUTH_MESSAGE: usize = 65_535;

/// Runs the exchange; `Some` once the client has proved the password and been sent
/// AuthenticationSASLFinal (AuthenticationOk follows with the rest of the start-up). `None`
/// when the client was refused (and told why) or left; a client may hang up after the first
/// message to ask its user for the password, as psql does.
pub async fn scram<S>(stream: &mut S, verifier: &Verifier, user: &str) -> Option<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(256);
    messages::authentication_sasl(&mut buf, &[scram::MECHANISM]);
    stream.write_all(&buf).await.ok()?;

    let initial = read_response(stream).await?;
    let Some((mechanism, first)) = messages::sasl_initial_response(&initial) else {
        return fail(stream, Failure::Protocol("malformed SASLInitialResponse")).await;
    };
    if mechanism != scram::MECHANISM {
        let failure = Failure::Protocol("client selected an invalid SASL authentication mechanism");
        return fail(stream, failure).await;
    }
    let Some(first) = first else {
        return fail(
            stream,
            Failure::Protocol("no client-first-message in SASLInitialResponse"),
        )
        .await;
    };
    let (started, server_first) = match scram::start(verifier, first) {
        Ok(s) => s,
        Err(e) => return fail(stream, Failure::Scram(e, user)).await,
    };
    buf.clear();
    messages::authentication_sasl_continue(&mut buf, server_first.as_bytes());
    stream.write_all(&buf).await.ok()?;

    let last = read_response(stream).await?;
    let server_final = match started.finish(verifier, &last) {
        Ok(f) => f,
        Err(e) => return fail(stream, Failure::Scram(e, user)).await,
    };
    buf.clear();
    messages::authentication_sasl_final(&mut buf, server_final.as_bytes());
    stream.write_all(&buf).await.ok()?;
    Some(())
}

/// Why an exchange was refused.
enum Failure<'a> {
    /// Not a SASL message where one was due (08P01).
    Protocol(&'static str),
    /// The SCRAM exchange failed; for the user of the StartupMessage.
    Scram(ScramError, &'a str),
}

async fn fail<S: AsyncWrite + Unpin>(stream: &mut S, failure: Failure<'_>) -> Option<()> {
    let (code, text) = match failure {
        Failure::Protocol(text) => (sqlstate::PROTOCOL_VIOLATION, text.to_owned()),
        Failure::Scram(ScramError::WrongPassword, user) => (
            ScramError::WrongPassword.code(),
            // PostgreSQL's words, which drivers and people recognise.
            format!("password authentication failed for user \"{user}\""),
        ),
        Failure::Scram(e, _) => (e.code(), e.to_string()),
    };
    tracing::info!(code, reason = %text, "refused a PostgreSQL client on TCP");
    let _ = refuse(stream, code, &text).await;
    None
}

/// The body of the client's next message, which must be a SASL response (`p`). `None` if the
/// client left, or sent something else (and was told). Not cancel safe: the handshake timeout
/// around it ends the whole connection.
async fn read_response<S>(stream: &mut S) -> Option<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; messages::HEADER];
    stream.read_exact(&mut header).await.ok()?;
    if header[0] != b'p' {
        let _ = refuse(
            stream,
            sqlstate::PROTOCOL_VIOLATION,
            &format!(
                "expected SASL response, got message type {:?}",
                header[0] as char
            ),
        )
        .await;
        return None;
    }
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .filter(|&l| l <= MAX_AUTH_MESSAGE);
    let Some(body) = body else {
        let _ = refuse(
            stream,
            sqlstate::PROTOCOL_VIOLATION,
            &format!("invalid SASL response length {len}"),
        )
        .await;
        return None;
    };
    let mut out = vec![0u8; body];
    stream.read_exact(&mut out).await.ok()?;
    Some(out)
}
