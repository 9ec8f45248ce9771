//! Opening a backend connection: the socket, TLS as `sslmode` asks, the startup message, and
//! authentication (cleartext, MD5, SCRAM-SHA-256 and SCRAM-SHA-256-PLUS).
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>

use std::path::PathBuf;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::cancel::CancelToken;
use super::stream::Stream;
use super::{Backend, Error};
use crate::settings::SslMode;
use crate::tls::Connector;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name or address, and a port. `hostaddr` (libpq's) is the address connected to
    /// when given; the host name is still the one TLS verifies.
    Tcp {
        /// The host name or address.
        host: String,
        /// The address to connect to instead of resolving `host`.
        hostaddr: Option<std::net::IpAddr>,
        /// The port.
        port: u16,
    },
    /// A Unix socket directory and the port that names the socket in it.
    Unix(PathBuf, u16),
}

impl Target {
    pub(super) async fn open(&self) -> std::io::Result<Stream> {
        match self {
            Target::Tcp {
                host,
                hostaddr,
                port,
            } => {
                let tcp = match hostaddr {
                    Some(addr) => TcpStream::connect((*addr, *port)).await?,
                    None => TcpStream::connect((host.as_str(), *port)).await?,
                };
                // Requests are small and written whole: Nagle would only add a delay.
                tcp.set_nodelay(true)?;
                Ok(Stream::Tcp(tcp))
            }
            Target::Unix(dir, port) => Ok(Stream::Unix(
                UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
            )),
        }
    }
}

/// Whether SCRAM binds the authentication to the TLS channel (libpq's `channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the server offers SCRAM-SHA-256-PLUS over TLS.
    Prefer,
    /// Always; a connection that cannot is refused.
    Require,
}

/// What a connection is opened with. `Debug` leaves the password out.
pub struct Params<'a> {
    /// Where the server listens.
    pub target: Target,
    /// The role to log in as.
    pub user: &'a str,
    /// The password, a token or nothing.
    pub password: Option<&'a [u8]>,
    /// The database; the server defaults to the user's name.
    pub database: Option<&'a str>,
    /// Command-line options for the server session (`-c name=value`).
    pub options: Option<&'a str>,
    /// `application_name`, as `pg_stat_activity` shows it.
    pub application_name: Option<&'a str>,
    /// TLS as configured by `PGSSLMODE`.
    pub tls: &'a Connector,
    /// Channel binding.
    pub channel_binding: ChannelBinding,
    /// `WARMPOOL_LOG_STATEMENTS`: statements and notices are logged with their text.
    pub log_statements: bool,
}

impl std::fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

/// Opens a connection and authenticates; the caller bounds it in time.
pub async fn connect(params: &Params<'_>) -> Result<Backend, Error> {
    let mut stream = params.target.open().await?;
    let mut tls_used = false;
    if let (Stream::Tcp(_), true) = (&stream, params.tls.mode() != SslMode::Disable) {
        let Stream::Tcp(mut tcp) = stream else {
            unreachable!("matched above")
        };
        // <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL>
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await?;
        let answer = tcp.read_u8().await?;
        stream = match answer {
            b'S' => {
                let Target::Tcp { host, .. } = &params.target else {
                    unreachable!("TLS is only negotiated over TCP")
                };
                tls_used = true;
                let tls = params.tls.handshake(host, tcp).await.map_err(Error::Tls)?;
                Stream::Tls(Box::new(tls))
            }
            b'N' if params.tls.mode() == SslMode::Prefer => Stream::Tcp(tcp),
            b'N' => {
                return Err(Error::Setup(format!(
                    "the server does not accept TLS, which PGSSLMODE={} requires",
                    params.tls.mode().name()
                )))
            }
            // An ErrorResponse here is a server too old for SSLRequest; anything else is not
            // PostgreSQL.
            other => {
                return Err(Error::protocol(format!(
                    "unexpected answer {other:#04x} to SSLRequest"
                )))
            }
        };
    }
    let binding = match &stream {
        Stream::Tls(tls) => server_end_point(tls),
        _ => None,
    };
    let cancel = CancelToken::new(params.target.clone(), tls_used.then(|| params.tls.clone()));
    let mut backend = Backend::new(
        stream,
        BytesMut::with_capacity(8 * 1024),
        cancel,
        params.log_statements,
    );

    let mut startup: Vec<(&str, &str)> = vec![("client_encoding", "UTF8"), ("user", params.user)];
    if let Some(db) = params.database {
        startup.push(("database", db));
    }
    if let Some(options) = params.options {
        startup.push(("options", options));
    }
    if let Some(name) = params.application_name {
        startup.push(("application_name", name));
    }
    frontend::startup_message(startup.iter().copied(), backend.buf())?;
    backend.flush().await?;
    authenticate(&mut backend, params, binding).await?;
    // After AuthenticationOk: ParameterStatus (taken by recv), BackendKeyData, then
    // ReadyForQuery. An ErrorResponse here (too many connections, a database that does not
    // exist) ends the attempt.
    backend.expect_ready();
    loop {
        match backend.recv().await? {
            Message::BackendKeyData(key) => {
                backend.cancel.set_key(key.process_id(), key.secret_key());
            }
            Message::ReadyForQuery(_) => return Ok(backend),
            _ => return Err(Error::protocol("unexpected message during start-up")),
        }
    }
}

async fn authenticate(
    backend: &mut Backend,
    params: &Params<'_>,
    binding: Option<Vec<u8>>,
) -> Result<(), Error> {
    let password = || {
        params.password.ok_or_else(|| {
            Error::Setup("the server asks for a password and none is configured".to_owned())
        })
    };
    let mut bound = false;
    loop {
        match backend.recv().await? {
            Message::AuthenticationOk => break,
            Message::AuthenticationCleartextPassword => {
                refuse_unbound(params)?;
                frontend::password_message(password()?, backend.buf())?;
                backend.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                refuse_unbound(params)?;
                let hash = md5_hash(params.user.as_bytes(), password()?, body.salt());
                frontend::password_message(hash.as_bytes(), backend.buf())?;
                backend.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut plus = false;
                let mut plain = false;
                let mut mechanisms = body.mechanisms();
                while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms)? {
                    match m {
                        sasl::SCRAM_SHA_256_PLUS => plus = true,
                        sasl::SCRAM_SHA_256 => plain = true,
                        _ => {}
                    }
                }
                let (mechanism, channel) = choose(params.channel_binding, plus, plain, &binding)?;
                bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                let mut scram = sasl::ScramSha256::new(password()?, channel);
                frontend::sasl_initial_response(mechanism, scram.message(), backend.buf())?;
                backend.flush().await?;
                match backend.recv().await? {
                    Message::AuthenticationSaslContinue(body) => scram.update(body.data())?,
                    _ => return Err(Error::protocol("expected AuthenticationSASLContinue")),
                }
                frontend::sasl_response(scram.message(), backend.buf())?;
                backend.flush().await?;
                match backend.recv().await? {
                    Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
                    _ => return Err(Error::protocol("expected AuthenticationSASLFinal")),
                }
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationSspi => {
                return Err(Error::Setup(
                    "the server asks for an authentication method warmpool does not support \
                     (it supports password, md5 and scram-sha-256)"
                        .to_owned(),
                ))
            }
            _ => return Err(Error::protocol("unexpected message during authentication")),
        }
    }
    if params.channel_binding == ChannelBinding::Require && !bound {
        return Err(Error::Setup(
            "PGCHANNELBINDING=require, but the server authenticated without channel binding"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Channel binding can only be had with SCRAM.
fn refuse_unbound(params: &Params<'_>) -> Result<(), Error> {
    if params.channel_binding == ChannelBinding::Require {
        return Err(Error::Setup(
            "PGCHANNELBINDING=require, but the server asks for a password without SCRAM, which \
             cannot bind to the TLS channel"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The SASL mechanism and the channel-binding flag to send, as libpq chooses them.
/// <https://www.postgresql.org/docs/current/sasl-authentication.html#SASL-SCRAM-SHA-256>
fn choose(
    setting: ChannelBinding,
    plus_offered: bool,
    plain_offered: bool,
    binding: &Option<Vec<u8>>,
) -> Result<(&'static str, sasl::ChannelBinding), Error> {
    match (setting, binding) {
        (ChannelBinding::Require, Some(data)) | (ChannelBinding::Prefer, Some(data))
            if plus_offered =>
        {
            Ok((
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(data.clone()),
            ))
        }
        (ChannelBinding::Require, _) => Err(Error::Setup(
            if binding.is_none() {
                "PGCHANNELBINDING=require needs TLS and a server certificate whose signature \
                 names a hash"
            } else {
                "PGCHANNELBINDING=require, but the server does not offer SCRAM-SHA-256-PLUS"
            }
            .to_owned(),
        )),
        _ if !plain_offered => Err(Error::Setup(
            "the server offers no SASL mechanism warmpool supports (SCRAM-SHA-256)".to_owned(),
        )),
        // 'y': the client could bind but the server did not offer it, which SCRAM's downgrade
        // protection checks. 'n': the client cannot bind.
        (ChannelBinding::Prefer, Some(_)) => {
            Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()))
        }
        _ => Ok((sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())),
    }
}

/// `tls-server-end-point` channel-binding data: the hash of the server's certificate, with the
/// hash of its signature algorithm (SHA-1 and MD5 upgraded to SHA-256).
/// <https://datatracker.ietf.org/doc/html/rfc5929#section-4.1>
fn server_end_point(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256,
        ID_SHA_384, ID_SHA_512, MD_5_WITH_RSA_ENCRYPTION, SHA_1_WITH_RSA_ENCRYPTION,
        SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates()?.first()?;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let algorithm = match parsed.signature_algorithm.oid {
        ID_SHA_1
        | ID_SHA_256
        | MD_5_WITH_RSA_ENCRYPTION
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => &ring::digest::SHA256,
        ID_SHA_384 | SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => &ring::digest::SHA384,
        ID_SHA_512 | SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => &ring::digest::SHA512,
        // Ed25519 and other algorithms without a separate hash have no binding defined.
        _ => return None,
    };
    Some(
        ring::digest::digest(algorithm, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_follows_libpq() {
        let data = Some(vec![1, 2, 3]);
        let (m, _) = choose(ChannelBinding::Prefer, true, true, &data).unwrap();
        assert_eq!(m, sasl::SCRAM_SHA_256_PLUS);
        let (m, _) = choose(ChannelBinding::Prefer, false, true, &data).unwrap();
        assert_eq!(m, sasl::SCRAM_SHA_256);
        let (m, _) = choose(ChannelBinding::Disable, true, true, &data).unwrap();
        assert_eq!(m, sasl::SCRAM_SHA_256);
        let (m, _) = choose(ChannelBinding::Prefer, true, true, &None).unwrap();
        assert_eq!(m, sasl::SCRAM_SHA_256);
        assert!(choose(ChannelBinding::Require, false, true, &data).is_err());
        assert!(choose(ChannelBinding::Require, true, true, &None).is_err());
        assert!(choose(ChannelBinding::Prefer, false, false, &None).is_err());
    }
}
