//! Just enough HTTPS to call one AWS JSON API: one request per connection, HTTP/1.1 through
//! hyper, TLS through rustls with the ring provider the database connections already use. Both
//! are in the binary anyway (lambda-extension and tokio-postgres-rustls), which is why this is
//! cheaper than the SDK's own stack (see [`crate::credentials`]).
//!
//! Fetches are rare (a cache miss), so connections are not kept: no pool, no keep-alive.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest response read. A secret value is at most 64 KiB
/// (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_limits.html>); the
/// JSON around it is small.
const MAX_RESPONSE: usize = 1024 * 1024;

/// An endpoint URL: `https://host[:port]`, or `http://` on loopback for local stand-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `url`. Plain `http` is only accepted for a loopback host: the response carries the
    /// secret, and a signed request must not cross a network in the clear.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "{url:?}: the scheme must be https (or http on loopback)"
                ))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{url:?}: an endpoint has no path or query"));
        }
        if !tls && !is_loopback(&host) {
            return Err(format!(
                "{url:?}: plain http is only allowed to a loopback address"
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint { tls, host, port })
    }

    /// The value of the `Host` header: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// `https://authority/`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.authority())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sends single requests. TLS is set up on first use, not at start: reading the system's
/// certificate store costs Init time that a function whose secret is cached never needs.
#[derive(Default)]
pub(crate) struct HttpClient {
    tls: OnceLock<TlsConnector>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls_ready", &self.tls.get().is_some())
            .finish()
    }
}

impl HttpClient {
    /// Sends `request` to `endpoint` and reads the whole response (up to 1 MiB). Errors are
    /// transport failures, as text; HTTP error statuses come back as responses.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, String> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        // On a direct connection the request target is the origin form (`/path?query`); the
        // absolute form is for proxies. The host travels in the (signed) Host header.
        let mut request = request.map(Full::new);
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e| format!("request target: {e}"))?;
        *request.uri_mut() = target;
        if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone())
                .map_err(|e| format!("{}: {e}", endpoint.host))?;
            let tls = self
                .tls
                .get_or_init(|| TlsConnector::from(Arc::new(tls_config())))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
    }
}

async fn exchange<IO>(
    io: IO,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Bytes>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection future drives the socket; it ends when the response has been read and the
    // sender is dropped.
    let driver = crate::tasks::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

/// Web PKI roots: the system's store (Lambda's runtimes carry one), with Mozilla's roots built
/// in as the fallback when it is empty or unreadable.
fn tls_config() -> ClientConfig {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://secretsmanager.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(e.authority(), "secretsmanager.eu-west-1.amazonaws.com");
        assert_eq!(e.url(), "https://secretsmanager.eu-west-1.amazonaws.com/");
        let e = Endpoint::parse("http://127.0.0.1:4566/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:4566");
        let e = Endpoint::parse("http://[::1]:4566").unwrap();
        assert_eq!(e.authority(), "[::1]:4566");
        assert!(Endpoint::parse("http://localhost:1").is_ok());
        assert!(Endpoint::parse("http://secretsmanager.example.com").is_err());
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("https://x/path").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
