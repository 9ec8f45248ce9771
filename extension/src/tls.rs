//! TLS to PostgreSQL through rustls (ring provider), following libpq's `sslmode` semantics:
//! <https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-SSLMODE-STATEMENTS>.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::settings::{RootCerts, SslMode};

/// Why TLS could not be set up.
#[derive(Debug)]
pub struct TlsSetupError(String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// The connector for `sslmode` (`PGSSLMODE`) with the trusted roots `root_certs`
/// (`PGSSLROOTCERT`).
pub fn connector(ssl_mode: SslMode, root_certs: &RootCerts) -> Result<Connector, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?;

    // libpq: with a root certificate configured, `require` verifies the chain like `verify-ca`.
    let mode = match (ssl_mode, root_certs) {
        (SslMode::Require, RootCerts::File(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let tls = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root_certs)?), provider)
                    .build()
                    .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(root_certs)?)
            .with_no_client_auth(),
    };
    let verified = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => Some(Arc::new(Verified::new(mode, root_certs))),
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
    };
    Ok(Connector {
        inner: TlsConnector::from(Arc::new(tls)),
        mode,
        verified,
    })
}

/// rustls, with a refused server certificate explained by the settings it was checked under:
/// rustls says `UnknownIssuer`, an operator needs to hear which file of trusted CAs that was.
#[derive(Clone)]
pub struct Connector {
    inner: TlsConnector,
    /// The mode in force: `require` with a root certificate configured is `verify-ca`.
    mode: SslMode,
    /// `None` when the certificate is not verified (`prefer`, `require`).
    verified: Option<Arc<Verified>>,
}

/// What a server certificate is verified under, named by the settings that choose it.
#[derive(Debug)]
struct Verified {
    /// `PGSSLMODE=verify-ca` or `verify-full`.
    mode: &'static str,
    /// The trusted CAs, and the setting that names them.
    roots: String,
}

impl Verified {
    fn new(mode: SslMode, roots: &RootCerts) -> Verified {
        Verified {
            mode: if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            },
            roots: match roots {
                RootCerts::File(path) => {
                    format!("the CA certificates in PGSSLROOTCERT ({})", path.display())
                }
                RootCerts::System => "the system's trusted root certificates, since PGSSLROOTCERT \
                     is not set (set it to the file of the CA that signed the server's \
                     certificate)"
                    .to_owned(),
            },
        }
    }

    /// The handshake's error, with the settings named if it is a refused certificate.
    fn explain(&self, e: io::Error) -> io::Error {
        let refused = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|r| match r {
                rustls::Error::InvalidCertificate(c) => Some(c.clone()),
                _ => None,
            });
        let Some(refused) = refused else {
            return e;
        };
        let why = match refused {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "under PGSSLMODE={} the certificate must name the host given in PGHOST or \
                     DATABASE_URL (verify-ca checks the chain only)",
                    self.mode
                )
            }
            _ => format!(
                "under PGSSLMODE={} the server's certificate was checked against {}",
                self.mode, self.roots
            ),
        };
        let kind = e.kind();
        let cause = e.into_inner().expect("get_ref found an inner error");
        io::Error::new(kind, CertificateRefused { cause, why })
    }
}

/// A server certificate that TLS refused, and what it was checked against.
#[derive(Debug)]
struct CertificateRefused {
    cause: Box<dyn std::error::Error + Send + Sync>,
    why: String,
}

impl fmt::Display for CertificateRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.cause, self.why)
    }
}

impl std::error::Error for CertificateRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

impl Connector {
    /// The `sslmode` in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The TLS handshake on `tcp`, for the server named `host`.
    pub async fn handshake(&self, host: &str, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.inner
            .connect(name, tcp)
            .await
            .map_err(|e| match &self.verified {
                Some(v) => v.explain(e),
                None => e,
            })
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn roots(source: &RootCerts) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match source {
        RootCerts::File(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                TlsSetupError(format!(
                    "PGSSLROOTCERT: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    TlsSetupError(format!("PGSSLROOTCERT: {}: {e}", path.display()))
                })?;
                store.add(cert).map_err(|e| {
                    TlsSetupError(format!("PGSSLROOTCERT: {}: {e}", path.display()))
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(TlsSetupError(format!(
                    "PGSSLROOTCERT: {} holds no PEM certificate",
                    path.display()
                )));
            }
        }
        RootCerts::System => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to a trusted root, but the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encryption without authentication of the server, as libpq does.
/// Handshake signatures are still checked, so the session key belongs to the presented key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
