//! Throw-away X.509 material for the test PostgreSQL server.
//!
//! The server certificate is a *leaf* signed by a separate CA rather than a self-signed
//! certificate: rustls (webpki) refuses a CA certificate presented as an end-entity
//! certificate, so a self-signed server cert would make every TLS test fail for the wrong
//! reason. A second CA that signed nothing lets tests prove that verification really checks
//! the chain ("wrong CA" must be rejected).
//!
//! Everything is generated in memory on each call (ECDSA P-256 through rcgen's default `ring`
//! backend, a few milliseconds), so no key material is ever committed or shared between runs.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};

/// PEM-encoded certificates and key for one test server.
pub struct TestCerts {
    /// CA that signed `server_cert_pem`: what clients should trust.
    pub ca_pem: String,
    /// A CA unrelated to the server certificate, for "wrong CA must fail" tests.
    pub other_ca_pem: String,
    /// Leaf certificate for `localhost` / `127.0.0.1`, signed by `ca_pem`.
    pub server_cert_pem: String,
    /// PKCS#8 private key of the leaf (PostgreSQL/OpenSSL reads PKCS#8 PEM directly).
    pub server_key_pem: String,
}

impl TestCerts {
    /// Generates a fresh CA, a server leaf signed by it, and an unrelated second CA.
    ///
    /// Panics on failure: this only runs inside tests, where a panic is the clearest report.
    pub fn generate() -> TestCerts {
        let ca = new_ca("warmpool test CA");
        let other_ca = new_ca("warmpool unrelated test CA");

        let mut leaf = CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        // Clients connect by name ("localhost", verify-full) and some by address, so both
        // must verify; modern verifiers ignore the CN and look only at SANs.
        leaf.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("valid DNS name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        // Explicit CA:FALSE rather than omitting basicConstraints, so the leaf can never be
        // mistaken for (or accepted as) an issuer.
        leaf.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys only sign; keyEncipherment would be wrong for them.
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // AKI lets OpenSSL-based clients (psql, libpq) pick the right issuer unambiguously.
        leaf.use_authority_key_identifier_extension = true;

        let leaf_key = KeyPair::generate().expect("generate server key");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca)
            .expect("sign server certificate with test CA");

        TestCerts {
            ca_pem: ca.pem(),
            other_ca_pem: other_ca.pem(),
            server_cert_pem: leaf_cert.pem(),
            server_key_pem: leaf_key.serialize_pem(),
        }
    }
}

/// Same as [`TestCerts::generate`], for callers that prefer a free function.
pub fn generate() -> TestCerts {
    TestCerts::generate()
}

/// A self-signed CA (CA:TRUE) that is allowed to sign certificates.
fn new_ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign test CA")
}
